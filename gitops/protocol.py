"""The status report (contract): ``status.json`` in each commit on ``reports/<host>``.

Written by the agent, read by the site and by scripts. Versioned by ``schema``; a reader
refuses a schema it does not know rather than guessing. docs/protocol.md documents it.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

SCHEMA = 1
STATUS_FILE = "status.json"
REPORTS_PREFIX = "refs/heads/reports/"
DEPLOY_PREFIX = "refs/heads/deploy/"
UNKNOWN = "unknown"


MAX_CHANGES = 200
_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z$")


def parse_time(text: object) -> datetime:
    """``2026-11-23T10:00:00Z`` (the report's only time format), fast: the site parses
    hundreds of thousands."""
    match = _TIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    return datetime(year, month, day, hour, minute, second, tzinfo=UTC)


def deploy_ref(host: str) -> str:
    return f"{DEPLOY_PREFIX}{host}"


def reports_ref(host: str) -> str:
    return f"{REPORTS_PREFIX}{host}"


class Result(StrEnum):
    APPLIED = "applied"  # a new deploy commit was built and activated
    UNCHANGED = "unchanged"  # nothing new; heartbeat
    REJECTED = "rejected"  # the deploy head failed verification: nothing built
    BUILD_FAILED = "build-failed"  # nix build failed; the running system is untouched
    SWITCH_FAILED = "switch-failed"  # activation failed; rolled back to the previous system
    ROLLED_BACK = "rolled-back"  # activated, then unhealthy: went back to the previous system
    FETCH_FAILED = "fetch-failed"  # the remote could not be reached; nothing changed


@dataclass(frozen=True)
class SystemInfo:
    store_path: str | None = None  # what the system profile points to
    generation: int | None = None
    current_system: str | None = None  # readlink /run/current-system
    booted_system: str | None = None  # readlink /run/booted-system
    nixos_version: str | None = None
    configuration_revision: str | None = None
    current_kernel: str | None = None
    booted_kernel: str | None = None
    reboot_required: bool | None = None


@dataclass(frozen=True)
class Report:
    host: str
    time: datetime
    agent_version: str
    result: Result
    reason: str
    report_id: str
    deploy_seen: str | None = None  # head of deploy/<host> at fetch time
    deploy_applied: str | None = None  # deploy commit the running system was built from
    source_commit: str | None = None  # main commit of deploy_applied (its Source-Commit)
    action: str = "switch"
    system: SystemInfo = field(default_factory=SystemInfo)
    facts: dict[str, Any] = field(default_factory=dict)
    durations: dict[str, float] = field(default_factory=dict)
    log_tail: str = ""
    changes: tuple[str, ...] = ()  # `nix store diff-closures` of the previous and new system
    schema: int = SCHEMA

    def to_json(self) -> str:
        data = asdict(self)
        data["time"] = self.time.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        data["result"] = str(self.result)
        data["changes"] = list(self.changes)
        ordered = {"schema": data.pop("schema"), **data}
        return json.dumps(ordered, indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str) -> Report:
        """Parse a status.json; ValueError says what is wrong."""
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise ValueError(f"not JSON ({err.msg} at line {err.lineno})") from err
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
        schema = data.get("schema")
        if schema != SCHEMA:
            raise ValueError(f"unknown report schema {schema!r} (this version reads {SCHEMA})")
        try:
            system = SystemInfo(**(data.get("system") or {}))
            return cls(
                host=str(data["host"]),
                time=parse_time(data["time"]),
                agent_version=str(data.get("agent_version", "")),
                result=Result(data["result"]),
                reason=str(data.get("reason", "")),
                report_id=str(data["report_id"]),
                deploy_seen=data.get("deploy_seen"),
                deploy_applied=data.get("deploy_applied"),
                source_commit=data.get("source_commit"),
                action=str(data.get("action", "switch")),
                system=system,
                facts=dict(data.get("facts") or {}),
                durations={k: float(v) for k, v in (data.get("durations") or {}).items()},
                log_tail=str(data.get("log_tail", "")),
                changes=tuple(str(line) for line in (data.get("changes") or [])[:MAX_CHANGES]),
            )
        except (KeyError, TypeError, ValueError) as err:
            raise ValueError(f"malformed report: {err}") from err
