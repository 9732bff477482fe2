"""A host's root file system, live (``/``) or a tree standing in for one.

Every fact is read through :class:`Host`: files under ``root`` with absolute symlinks
resolved inside it (as a chroot would), and commands, which run only on a live host.
A tree stands for a host that is not running, so it has no command output of its own;
tests give it outputs recorded from a real host (``recorded``), keyed by argv.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
from collections.abc import Callable, Mapping
from pathlib import Path, PurePosixPath
from typing import Any, Final, TypeVar

from gitops.errors import GitopsError
from gitops.system import process

log = logging.getLogger("gitops.agent.facts")

COMMAND_TIMEOUT: Final = 20.0
MAX_SYMLINKS: Final = 40
# A service's PATH on NixOS does not include the system's tools; they are here.
SYSTEM_BIN: Final = "/run/current-system/sw/bin"
NIX_STORE: Final = "/nix/store"

T = TypeVar("T")
Recorded = Mapping[tuple[str, ...], "subprocess.CompletedProcess[str]"]


def recorded_output(stdout: str, returncode: int = 0) -> subprocess.CompletedProcess[str]:
    """A command's output as recorded on a real host, for a tree's ``recorded`` table."""
    return subprocess.CompletedProcess([], returncode, stdout, "")


class Host:
    """A root file system, live (``/``) or a tree standing in for one."""

    def __init__(self, root: Path, recorded: Recorded | None = None) -> None:
        self.root = root
        self.live = root == Path("/")
        self.recorded: Recorded = recorded or {}
        self._runs: dict[tuple[str, ...], subprocess.CompletedProcess[str] | None] = {}
        self._memo: dict[str, Any] = {}

    def memo(self, key: str, compute: Callable[[], T]) -> T:
        """``compute()`` once per host (several collectors read the same thing)."""
        if key not in self._memo:
            self._memo[key] = compute()
        value: T = self._memo[key]
        return value

    def under(self, path: str) -> Path:
        """The host path ``path`` in this process's file system, symlinks not followed.

        A tree standing in for a host may share this machine's Nix store (as NixOS
        containers do): a store path missing under ``root`` is read from ``/nix/store``.
        """
        inside = self.root.joinpath(*PurePosixPath(path).parts[1:])
        in_store = path == NIX_STORE or path.startswith(f"{NIX_STORE}/")
        if not self.live and in_store and not inside.exists():
            shared = Path(path)
            if shared.exists() or shared.is_symlink():
                return shared
        return inside

    def resolve(self, path: str) -> str | None:
        """``readlink -f`` on the host: the final host path, or None if it does not exist.

        Absolute link targets are resolved under ``root``, as inside a chroot.
        """
        pending = list(PurePosixPath(path).parts[1:])
        current = PurePosixPath("/")
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                current = current.parent
                continue
            candidate = current / part
            real = self.under(str(candidate))
            try:
                if real.is_symlink():
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        return None
                    target = PurePosixPath(real.readlink())
                    if target.is_absolute():
                        current = PurePosixPath("/")
                        pending = list(target.parts[1:]) + pending
                    else:
                        pending = list(target.parts) + pending
                    continue
                if not real.exists():
                    return None
            except OSError:
                return None
            current = candidate
        return str(current)

    def file(self, path: str) -> Path | None:
        resolved = self.resolve(path)
        return None if resolved is None else self.under(resolved)

    def read(self, path: str) -> str | None:
        target = self.file(path)
        if target is None:
            return None
        try:
            return target.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def read_value(self, path: str) -> str | None:
        """A one-value file (sysfs, procfs): stripped, None when absent, unreadable or empty."""
        text = self.read(path)
        if text is None:
            return None
        return text.strip() or None

    def list_dir(self, path: str) -> list[str] | None:
        target = self.file(path)
        if target is None:
            return None
        try:
            return sorted(entry.name for entry in target.iterdir())
        except OSError:
            return None

    def program(self, name: str) -> str | None:
        """A program to run: on PATH, else the current system's (live hosts only)."""
        if not self.live:
            return None
        found = shutil.which(name)
        if found is not None:
            return found
        candidate = Path(SYSTEM_BIN) / name
        return str(candidate) if os.access(candidate, os.X_OK) else None

    def run(self, *args: str) -> subprocess.CompletedProcess[str] | None:
        """Run a command on a live host (once per argv); None if it could not run.

        A tree answers only what was recorded for it."""
        if not self.live:
            return self.recorded.get(args)
        if args in self._runs:
            return self._runs[args]
        result: subprocess.CompletedProcess[str] | None
        program = self.program(args[0])
        if program is None:
            log.debug("facts: %s is not installed", args[0])
            result = None
        else:
            try:
                result = process.run(
                    [program, *args[1:]],
                    check=False,
                    timeout=COMMAND_TIMEOUT,
                    env={"LC_ALL": "C", "SYSTEMD_COLORS": "0", "TZ": "UTC"},
                )
            except (GitopsError, OSError) as err:
                log.debug("facts: %s", err)
                result = None
        self._runs[args] = result
        return result

    def output(self, *args: str) -> str | None:
        """The standard output of a command that succeeded, else None."""
        result = self.run(*args)
        return result.stdout if result is not None and result.returncode == 0 else None
