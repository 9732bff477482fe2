"""A summary of the last cycle that any user on the host may read.

The agent's state (``state.json``) is root's alone (mode 0600): it is the anti-rollback
floor. After each cycle the agent also writes ``<state_dir>/status.json`` (mode 0644),
which ``gitops agent status`` reads, so a user needs no sudo to see what the machine runs.
The NixOS module makes the state directory 0711: others may open a file in it by name,
not list it. Times use the protocol's format (``2026-11-23T10:00:00Z``) and results are
the report's (gitops.protocol.Result). docs/reference/agent.md documents the fields.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from gitops.agent.state import AgentState
from gitops.errors import GitopsError
from gitops.protocol import Result, format_time, parse_json, parse_time
from gitops.system import atomic

log = logging.getLogger(__name__)

STATUS_FILE = "status.json"
STATUS_SCHEMA = 1


@dataclass(frozen=True)
class Status:
    host: str
    time: datetime | None  # when the last cycle ended; None: no cycle has run yet
    result: Result | None  # what the last cycle did (the report's result values)
    reason: str
    reboot_pending: bool  # applied with action boot, not booted into yet
    deploy_seen: str | None
    applied: str | None  # the deploy commit the system was built from
    applied_source: str | None
    applied_store_path: str | None
    last_report_time: datetime | None
    pending_reports: int  # reports committed locally, not on the server yet
    bad_commits: tuple[str, ...]  # rolled back, not retried until a new commit or --retry

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n"

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data.update(
            schema=STATUS_SCHEMA,
            time=None if self.time is None else format_time(self.time),
            result=None if self.result is None else str(self.result),
            last_report_time=None
            if self.last_report_time is None
            else format_time(self.last_report_time),
            bad_commits=list(self.bad_commits),
        )
        return data

    @classmethod
    def from_json(cls, text: str) -> Status:
        data = parse_json(text)
        if not isinstance(data, dict) or data.get("schema") != STATUS_SCHEMA:
            raise ValueError(f"unknown status schema {data.get('schema')!r}")
        return cls(
            host=str(data["host"]),
            time=None if data["time"] is None else parse_time(data["time"]),
            result=None if data["result"] is None else Result(data["result"]),
            reason=str(data["reason"]),
            reboot_pending=bool(data["reboot_pending"]),
            deploy_seen=_text(data["deploy_seen"]),
            applied=_text(data["applied"]),
            applied_source=_text(data["applied_source"]),
            applied_store_path=_text(data["applied_store_path"]),
            last_report_time=None
            if data["last_report_time"] is None
            else parse_time(data["last_report_time"]),
            pending_reports=int(data["pending_reports"]),
            bad_commits=tuple(map(str, data["bad_commits"])),
        )

    @classmethod
    def of_state(cls, state: AgentState | None, host: str, pending_reports: int) -> Status:
        """What the state alone says (no cycle result): for root, before any summary."""
        return cls(
            host=host,
            time=None,
            result=None,
            reason="",
            reboot_pending=False,
            deploy_seen=None,
            applied=state.applied if state else None,
            applied_source=state.applied_source if state else None,
            applied_store_path=state.applied_store_path if state else None,
            last_report_time=report_time(state),
            pending_reports=pending_reports,
            bad_commits=state.bad_commits if state else (),
        )


def _text(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string, not {value!r}")
    return value


def report_time(state: AgentState | None) -> datetime | None:
    try:
        return state.last_report_at() if state else None
    except (TypeError, ValueError):
        return None  # the state's own loader judges its fields; the summary only shows them


def write(path: Path, status: Status) -> None:
    """Best effort: a summary that cannot be written (a full disk) must not fail a cycle
    whose real work is done; the next cycle writes it again."""
    try:
        atomic.write_text(path, status.to_json(), mode=0o644)
    except OSError as err:
        log.warning("could not write %s (%s)", path, err.strerror)


def read(path: Path) -> Status | None:
    """The last summary, or None if no cycle wrote one yet."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GitopsError(f"{path}: cannot read the agent's status ({err.strerror})") from err
    try:
        return Status.from_json(text)
    except (ValueError, TypeError, KeyError, AttributeError) as err:
        raise GitopsError(
            f"{path}: the agent's status summary is unreadable ({err}); the next cycle "
            "writes it again (sudo gitops agent once)"
        ) from err
