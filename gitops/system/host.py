"""What signed commands and reboot policies do to the machine: reboot, power off, read the
journal, collect garbage, list systemd inhibitors, warn logged-in users.

:class:`RealHost` runs the real programs (``systemctl``, ``journalctl``, ``nix-store``,
``systemd-inhibit``, ``wall``) through :mod:`gitops.system.process`. When the agent's
facts root is not ``/`` (the demo's and the tests' stand-in machines) :class:`StandInHost`
*records* each action in ``<root>/var/log/gitops-actions.log`` (one JSON line each) and
performs nothing: a recorded reboot only re-points the stand-in's ``run/booted-system`` at
its ``run/current-system``, as booting would.
"""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from gitops.errors import GitopsError
from gitops.system import atomic, process

ACTIONS_LOG = "var/log/gitops-actions.log"
STANDIN_JOURNAL = "var/log/journal.txt"  # what the stand-in's journalctl prints
STANDIN_INHIBITORS = "run/inhibitors"  # one "who: why" line per inhibitor
JOURNAL_TIMEOUT = 60.0


class Host(Protocol):
    def reboot(self) -> None: ...
    def poweroff(self) -> None: ...
    def collect_garbage(self) -> str: ...
    def journal(self, units: tuple[str, ...], since: int, max_bytes: int) -> str: ...
    def inhibitors(self) -> list[str]: ...
    def wall(self, message: str) -> None: ...


def for_root(root: Path) -> Host:
    return RealHost() if root == Path("/") else StandInHost(root)


def _tail_bytes(text: str, max_bytes: int) -> str:
    """The last ``max_bytes`` of ``text`` (UTF-8), starting at a line boundary if one is near."""
    data = text.encode()
    if len(data) <= max_bytes:
        return text
    cut = data[-max_bytes:]
    newline = cut.find(b"\n")
    if 0 <= newline < len(cut) - 1:
        cut = cut[newline + 1 :]
    return cut.decode(errors="ignore")


def journal_argv(units: tuple[str, ...], since: int) -> list[str]:
    argv = ["journalctl", "--no-pager", "--quiet", "-o", "short-iso", f"--since=-{since}s"]
    for unit in units:
        argv += ["-u", unit]
    return argv


class RealHost:
    def reboot(self) -> None:
        process.run(["systemctl", "reboot"], check=True)

    def poweroff(self) -> None:
        process.run(["systemctl", "poweroff"], check=True)

    def collect_garbage(self) -> str:
        result = process.run(["nix-store", "--gc"], check=True, timeout=3600)
        return process.tail(result.stderr + result.stdout, 5)

    def journal(self, units: tuple[str, ...], since: int, max_bytes: int) -> str:
        result = process.run(journal_argv(units, since), check=True, timeout=JOURNAL_TIMEOUT)
        return _tail_bytes(result.stdout, max_bytes)

    def inhibitors(self) -> list[str]:
        """Active shutdown/sleep *block* inhibitors (``systemd-inhibit --list``), as
        ``who: why`` lines; [] when systemd-inhibit is not there."""
        try:
            result = process.run(
                ["systemd-inhibit", "--list", "--no-pager", "--no-legend"], check=False
            )
        except GitopsError:
            return []
        return parse_inhibitors(result.stdout)

    def wall(self, message: str) -> None:
        with contextlib.suppress(GitopsError):  # no wall (a minimal system): reboot anyway
            process.run(["wall", message], check=False, timeout=10)


def parse_inhibitors(text: str) -> list[str]:
    """``systemd-inhibit --list --no-legend`` rows: WHO UID USER PID COMM WHAT WHY MODE,
    separated by runs of spaces; only ``block`` inhibitors of ``shutdown`` count."""
    found = []
    for line in text.splitlines():
        columns = line.split()
        if len(columns) < 8 or columns[-1] != "block":
            continue
        what = next((c for c in columns if "shutdown" in c.split(":")), None)
        if what is None:
            continue
        found.append(f"{columns[0]} ({columns[4]}): {' '.join(columns[6:-1])}")
    return found


class StandInHost:
    """Records; performs nothing (see the module's doc)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _record(self, action: str, **detail: object) -> None:
        log_file = self.root / ACTIONS_LOG
        log_file.parent.mkdir(parents=True, exist_ok=True)
        line = {"action": action, "time": datetime.now(UTC).isoformat(), **detail}
        with log_file.open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(line) + "\n")
            handle.flush()
            os.fsync(handle.fileno())

    def reboot(self) -> None:
        self._record("reboot")
        current = self.root / "run" / "current-system"
        if current.is_symlink():
            atomic.replace_symlink(self.root / "run" / "booted-system", current.readlink())

    def poweroff(self) -> None:
        self._record("poweroff")

    def collect_garbage(self) -> str:
        self._record("gc", argv=["nix-store", "--gc"])
        return "recorded, not run (stand-in)"

    def journal(self, units: tuple[str, ...], since: int, max_bytes: int) -> str:
        self._record("journal", argv=journal_argv(units, since), max_bytes=max_bytes)
        try:
            text = (self.root / STANDIN_JOURNAL).read_text(encoding="utf-8")
        except FileNotFoundError:
            text = ""
        if units:
            text = "".join(
                line for line in text.splitlines(keepends=True) if any(u in line for u in units)
            )
        return _tail_bytes(text, max_bytes)

    def inhibitors(self) -> list[str]:
        try:
            text = (self.root / STANDIN_INHIBITORS).read_text(encoding="utf-8")
        except FileNotFoundError:
            return []
        return [line.strip() for line in text.splitlines() if line.strip()]

    def wall(self, message: str) -> None:
        self._record("wall", message=message)


def recorded_actions(root: Path) -> list[dict[str, object]]:
    """The stand-in's recorded actions, oldest first (tests and the demo read them)."""
    try:
        text = (root / ACTIONS_LOG).read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    return [json.loads(line) for line in text.splitlines() if line.strip()]
