"""What the agent must remember across crashes and power loss, written atomically.

``state.json`` holds the last applied deploy commit (the anti-rollback floor), the
builds already tried (nothing is built twice for one commit), and when the last report
was written. Every field is checked when the file is read (times parsed there, once): a
corrupt file or a wrong field is refused with one line naming it, because losing the
floor must fail closed. A missing file is not a fresh start: the cycle recovers the floor
from the mirror or the running system (cycle.py, ``_floors``).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gitops.errors import GitopsError
from gitops.protocol import format_time, parse_time
from gitops.system import atomic

STATE_FILE = "state.json"
LOCK_FILE = "lock"
STATE_VERSION = 1
MAX_REMEMBERED_BUILDS = 50


@dataclass(frozen=True)
class BuildRecord:
    commit: str
    ok: bool
    store_path: str | None = None
    reason: str = ""
    log_tail: str = ""
    time: str | None = None  # when it was built or failed (protocol.format_time; checked at load)


@dataclass(frozen=True)
class AgentState:
    host: str
    applied: str | None = None  # deploy commit of the running system: the rollback floor
    applied_source: str | None = None  # its Source-Commit on main
    applied_store_path: str | None = None
    bootstrapped: str = ""  # how the first commit was trusted: "first-use" or "pinned"
    builds: tuple[BuildRecord, ...] = ()  # newest last
    bad_commits: tuple[str, ...] = ()  # activated and rolled back: not retried
    last_report_time: datetime | None = None
    last_report_key: str = ""  # what the last report said, to report changes once
    version: int = STATE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self, commit: str) -> BuildRecord | None:
        return next((b for b in reversed(self.builds) if b.commit == commit), None)

    def with_build(self, record: BuildRecord) -> AgentState:
        builds = [b for b in self.builds if b.commit != record.commit] + [record]
        return replace(self, builds=tuple(builds[-MAX_REMEMBERED_BUILDS:]))

    def last_report_at(self) -> datetime | None:
        return self.last_report_time

    def to_json(self) -> str:
        data = asdict(self)
        data["builds"] = [asdict(b) for b in self.builds]
        if self.last_report_time is not None:
            data["last_report_time"] = format_time(self.last_report_time)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> AgentState:
        """Parse and check every field; GitopsError names the file and the field."""
        try:
            data = json.loads(text)
        except (ValueError, RecursionError) as err:
            raise GitopsError(
                f"{where}: agent state is corrupt (not JSON: {err}); refusing to run, because "
                "the anti-rollback floor would be lost. Restore it from a backup, or re-enroll "
                "this host (docs/operations.md, 'Lost or corrupt agent state')"
            ) from err
        return _Fields(data, where).state()


_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")
_FIX = "fix or remove that value, or restore state.json (docs/operations.md, 'Lost or corrupt agent state')"


class _Fields:
    """The checked reading of state.json: one clear line per wrong field, never a TypeError."""

    def __init__(self, data: object, where: str) -> None:
        self.where = where
        if not isinstance(data, dict):
            raise GitopsError(f"{where}: agent state is not a JSON object; {_FIX}")
        self.data: dict[str, Any] = data

    def fail(self, name: str, value: object, expected: str) -> GitopsError:
        shown = repr(value)
        shown = shown if len(shown) <= 60 else shown[:57] + "..."
        return GitopsError(
            f"{self.where}: agent state field {name!r} is {shown}, expected {expected}; {_FIX}"
        )

    def state(self) -> AgentState:
        data = self.data
        unknown = sorted(set(data) - {f.name for f in fields(AgentState)})
        if unknown:
            raise self.fail(unknown[0], data[unknown[0]], "no such field (unknown to this agent)")
        version = data.get("version")
        if version != STATE_VERSION or isinstance(version, bool):
            raise self.fail("version", version, f"{STATE_VERSION} (this agent's state format)")
        host = self.text("host", data.get("host"))
        extra = data.get("extra", {})
        if not isinstance(extra, dict):
            raise self.fail("extra", extra, "an object")
        return AgentState(
            host=host,
            applied=self.commit("applied", data.get("applied"), optional=True),
            applied_source=self.commit("applied_source", data.get("applied_source"), optional=True),
            applied_store_path=self.text(
                "applied_store_path", data.get("applied_store_path"), optional=True
            ),
            bootstrapped=self.text("bootstrapped", data.get("bootstrapped", "")),
            builds=tuple(self.build(f"builds[{i}]", b) for i, b in enumerate(self.items("builds"))),
            bad_commits=tuple(
                self.commit(f"bad_commits[{i}]", c) for i, c in enumerate(self.items("bad_commits"))
            ),
            last_report_time=self.time("last_report_time", data.get("last_report_time")),
            last_report_key=self.text("last_report_key", data.get("last_report_key", "")),
            extra=extra,
        )

    def items(self, name: str) -> list[Any]:
        value = self.data.get(name, [])
        if not isinstance(value, list):
            raise self.fail(name, value, "a list")
        return value

    def text(self, name: str, value: object, *, optional: bool = False) -> Any:
        if (value is None and optional) or isinstance(value, str):
            return value
        raise self.fail(name, value, "a string" + (" or null" if optional else ""))

    def commit(self, name: str, value: object, *, optional: bool = False) -> Any:
        if (value is None and optional) or (isinstance(value, str) and _COMMIT_ID.match(value)):
            return value
        expected = "a commit id (40 lowercase hexadecimal digits)"
        raise self.fail(name, value, expected + (" or null" if optional else ""))

    def time(self, name: str, value: object) -> datetime | None:
        if value is None:
            return None
        moment = _parse_time(value)
        if moment is None:
            raise self.fail(name, value, "a UTC time such as 2026-11-23T10:00:00Z, or null")
        return moment

    def build(self, name: str, value: object) -> BuildRecord:
        if not isinstance(value, dict):
            raise self.fail(name, value, "an object")
        unknown = sorted(set(value) - {f.name for f in fields(BuildRecord)})
        if unknown:
            raise self.fail(f"{name}.{unknown[0]}", value[unknown[0]], "no such field")
        ok = value.get("ok")
        if not isinstance(ok, bool):
            raise self.fail(f"{name}.ok", ok, "true or false")
        when = value.get("time")
        self.time(f"{name}.time", when)
        return BuildRecord(
            commit=self.commit(f"{name}.commit", value.get("commit")),
            ok=ok,
            store_path=self.text(f"{name}.store_path", value.get("store_path"), optional=True),
            reason=self.text(f"{name}.reason", value.get("reason", "")),
            log_tail=self.text(f"{name}.log_tail", value.get("log_tail", "")),
            time=when,
        )


def _parse_time(value: object) -> datetime | None:
    """protocol.parse_time, or the ISO 8601 with an offset that agents wrote before."""
    try:
        return parse_time(value)
    except ValueError:
        pass
    if not isinstance(value, str):
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment.astimezone(UTC) if moment.tzinfo is not None else None


class StateStore:
    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.path = directory / STATE_FILE

    def exists(self) -> bool:
        return self.path.exists()

    def load(self, host: str) -> AgentState | None:
        """The saved state, or None on a first run."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise GitopsError(f"{self.path}: cannot read agent state ({err.strerror})") from err
        except UnicodeDecodeError as err:
            raise GitopsError(
                f"{self.path}: agent state is not UTF-8 text (byte {err.start}); restore it "
                "(docs/operations.md, 'Lost or corrupt agent state')"
            ) from err
        state = AgentState.from_json(text, str(self.path))
        if state.host != host:
            raise GitopsError(
                f"{self.path}: state belongs to host {state.host!r}, not {host!r}; "
                "fix 'host' in the agent configuration or use another state_dir"
            )
        return state

    def save(self, state: AgentState) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.path, state.to_json(), mode=0o600)

    @contextlib.contextmanager
    def locked(self) -> Iterator[None]:
        """One cycle at a time (the timer and a manual trigger may race)."""
        self.directory.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.directory / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError as err:
                raise GitopsError(
                    f"another agent cycle is running (lock {self.directory / LOCK_FILE}); "
                    "wait for it to finish"
                ) from err
            yield
        finally:
            os.close(fd)


def now_text(moment: datetime) -> str:
    return format_time(moment)
