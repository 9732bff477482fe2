"""What the agent must remember across crashes and power loss, written atomically.

``state.json`` holds the last applied deploy commit (the anti-rollback floor), the
builds already tried (nothing is built twice for one commit), and when the last report
was written. A corrupt file, or a missing one when the local mirror shows that state
existed, is refused: losing the floor must fail closed, not re-trust a rolled-back head.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gitops.errors import GitopsError
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
    time: str | None = None  # when it was built or failed (ISO 8601, UTC)


@dataclass(frozen=True)
class AgentState:
    host: str
    applied: str | None = None  # deploy commit of the running system: the rollback floor
    applied_source: str | None = None  # its Source-Commit on main
    applied_store_path: str | None = None
    bootstrapped: str = ""  # how the first commit was trusted: "first-use" or "pinned"
    builds: tuple[BuildRecord, ...] = ()  # newest last
    bad_commits: tuple[str, ...] = ()  # activated and rolled back: not retried
    last_report_time: str | None = None
    last_report_key: str = ""  # what the last report said, to report changes once
    version: int = STATE_VERSION
    extra: dict[str, Any] = field(default_factory=dict)

    def build(self, commit: str) -> BuildRecord | None:
        return next((b for b in reversed(self.builds) if b.commit == commit), None)

    def with_build(self, record: BuildRecord) -> AgentState:
        builds = [b for b in self.builds if b.commit != record.commit] + [record]
        return replace(self, builds=tuple(builds[-MAX_REMEMBERED_BUILDS:]))

    def last_report_at(self) -> datetime | None:
        if self.last_report_time is None:
            return None
        return datetime.fromisoformat(self.last_report_time)

    def to_json(self) -> str:
        data = asdict(self)
        data["builds"] = [asdict(b) for b in self.builds]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, where: str) -> AgentState:
        try:
            data = json.loads(text)
            if data.get("version") != STATE_VERSION:
                raise ValueError(f"unknown state version {data.get('version')!r}")
            data["builds"] = tuple(BuildRecord(**b) for b in data.get("builds", []))
            data["bad_commits"] = tuple(data.get("bad_commits", []))
            return cls(**data)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise GitopsError(
                f"{where}: agent state is corrupt ({err}); refusing to run, because the "
                "anti-rollback floor would be lost. Inspect it, then restore it or remove the "
                "state directory to re-enroll this host (see docs/operations.md)"
            ) from err


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
    return moment.astimezone(UTC).isoformat()
