"""The protocol (contract) in one place: ref names, commit trailers, the one time format,
and the status report (``status.json``) schema.

Every other module imports these names; nothing else spells a ref, a trailer or the time
format. docs/protocol.md documents the same, and tests/test_protocol.py checks that the two
agree. Change anything here only on purpose, in one commit that updates every side.
"""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Final

# -- refs -------------------------------------------------------------------------------

MAIN_REF: Final = "refs/heads/main"
DEPLOY_PREFIX: Final = "refs/heads/deploy/"
REPORTS_PREFIX: Final = "refs/heads/reports/"
HOST_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")  # RFC 1123 label


def is_host_name(name: str) -> bool:
    return bool(HOST_NAME.match(name))


def deploy_ref(host: str) -> str:
    return f"{DEPLOY_PREFIX}{host}"


def reports_ref(host: str) -> str:
    return f"{REPORTS_PREFIX}{host}"


def branch_name(ref: str) -> str:
    """``refs/heads/deploy/web-1`` → ``deploy/web-1`` (what users type)."""
    return ref.removeprefix("refs/heads/")


# -- trailers ---------------------------------------------------------------------------
# Deploy commits (written by ``gitops publish``, read by the agent and the site).
TRAILER_SOURCE: Final = "Source-Commit"  # the main commit the tree was rendered from
TRAILER_HOST: Final = "Gitops-Host"  # the one host this commit is addressed to
TRAILER_EXPIRES: Final = "Expires"  # after this time the agent refuses the commit
# The source commit's generation number (1 + the largest of its parents'; a root is 1):
# a commit's ancestors all have smaller numbers, so an agent, which never sees main, can
# refuse a deploy rendered from an older main than the one it runs.
TRAILER_SOURCE_GENERATION: Final = "Source-Generation"
# On a recovery commit (``gitops publish --recover``, after a legitimate history rewrite):
# the deploy commit this host applied, which this commit supersedes although it does not
# descend from it. Only a publisher can sign one, and it names one exact commit.
TRAILER_RECOVERS: Final = "Recovers"
# Report commits (written by the agent, read by the agent's retry logic and the site).
TRAILER_REPORT_ID: Final = "Report-Id"  # unique per report: de-duplicates retried pushes
TRAILER_RESULT: Final = "Result"  # the report's result, for `git log` readers
TRAILER_DEPLOY_COMMIT: Final = "Deploy-Commit"  # the deploy head the host saw

# -- time -------------------------------------------------------------------------------
# The only time format in the protocol: UTC, second precision, ``Z`` suffix.
TIME_FORMAT: Final = "%Y-%m-%dT%H:%M:%SZ"
_TIME = re.compile(r"^(\d{4})-(\d\d)-(\d\d)T(\d\d):(\d\d):(\d\d)Z$")


def format_time(moment: datetime) -> str:
    """``2026-11-23T10:00:00Z``. f-string, not strftime: the site formats hundreds of
    thousands of these and strftime is several times slower."""
    m = moment if moment.tzinfo is UTC else moment.astimezone(UTC)
    return f"{m.year:04d}-{m.month:02d}-{m.day:02d}T{m.hour:02d}:{m.minute:02d}:{m.second:02d}Z"


def parse_time(text: object) -> datetime:
    """Parse :data:`TIME_FORMAT`, fast (the site parses hundreds of thousands); ValueError
    says what is wrong."""
    match = _TIME.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(f"time {text!r} is not YYYY-MM-DDTHH:MM:SSZ")
    year, month, day, hour, minute, second = (int(part) for part in match.groups())
    try:
        return datetime(year, month, day, hour, minute, second, tzinfo=UTC)
    except ValueError as err:
        raise ValueError(f"time {text!r} is not a real date ({err})") from err


# -- the status report ------------------------------------------------------------------

SCHEMA: Final = 1
STATUS_FILE: Final = "status.json"
UNKNOWN: Final = "unknown"
MAX_CHANGES: Final = 200


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

    def to_dict(self) -> dict[str, Any]:
        """The report as status.json holds it (JSON types only, ``schema`` first)."""
        data = asdict(self)
        data["time"] = format_time(self.time)
        data["result"] = str(self.result)
        data["changes"] = list(self.changes)
        return {"schema": data.pop("schema"), **data}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

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


# The top-level fields of status.json, in order: what policies may name (plus ``report``,
# which the site adds) and what docs/protocol.md must list.
REPORT_FIELDS: Final = ("schema", *(f.name for f in fields(Report) if f.name != "schema"))
