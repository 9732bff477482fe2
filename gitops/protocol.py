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
        """The report as status.json holds it (JSON types only, ``schema`` first). Shallow:
        ``facts`` and ``durations`` are this report's own dicts, not copies."""
        data: dict[str, Any] = {"schema": self.schema}
        data.update((name, getattr(self, name)) for name in REPORT_FIELDS[1:])
        data["time"] = format_time(self.time)
        data["result"] = str(self.result)
        data["system"] = asdict(self.system)
        data["changes"] = list(self.changes)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str) -> Report:
        """Parse a status.json, checking every field's type and bounding its size and
        nesting (it comes from a host: the site must survive anything in it); ValueError
        says what is wrong."""
        fields = _Fields(_load_object(text))
        schema = fields.data.get("schema")
        if type(schema) is not int or schema != SCHEMA:
            raise ValueError(f"unknown report schema {schema!r} (this version reads {SCHEMA})")
        host = fields.string("host")
        if not is_host_name(host):
            raise ValueError(f"host: {host[:80]!r} is not a host name")
        return cls(
            host=host,
            time=fields.time("time"),
            agent_version=fields.string("agent_version", ""),
            result=fields.result("result"),
            reason=fields.string("reason", ""),
            report_id=fields.string("report_id"),
            deploy_seen=fields.commit("deploy_seen"),
            deploy_applied=fields.commit("deploy_applied"),
            source_commit=fields.commit("source_commit"),
            action=fields.string("action", "switch"),
            system=_system(fields.mapping("system")),
            facts=fields.mapping("facts"),
            durations=fields.numbers("durations"),
            log_tail=fields.string("log_tail", ""),
            changes=fields.strings("changes")[:MAX_CHANGES],
        )


# -- reading status.json: strict types, bounded size and depth ---------------------------

MAX_REPORT_BYTES: Final = 1 << 20  # a larger status.json is refused unread
MAX_DEPTH: Final = 32  # objects and arrays nested deeper are refused
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")  # SHA-1 or SHA-256
_REQUIRED = object()


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


def _load_object(text: bytes | str) -> dict[str, Any]:
    if len(text) > MAX_REPORT_BYTES:
        raise ValueError(f"larger than {MAX_REPORT_BYTES} bytes")
    try:
        data = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at line {err.lineno})") from err
    except RecursionError as err:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from err
    except ValueError as err:  # not UTF-8, a number too long to read, NaN or Infinity
        raise ValueError(f"not JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    if _too_deep(data, MAX_DEPTH):
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels")
    return data


def _too_deep(value: object, levels: int) -> bool:
    if isinstance(value, dict):
        return levels <= 0 or any(_too_deep(v, levels - 1) for v in value.values())
    if isinstance(value, list):
        return levels <= 0 or any(_too_deep(v, levels - 1) for v in value)
    return False


def _type_name(value: object) -> str:
    return {dict: "an object", list: "an array", str: "a string", bool: "true/false"}.get(
        type(value), "null" if value is None else "a number"
    )


class _Fields:
    """Typed access to one JSON object's fields; ValueError names the field."""

    def __init__(self, data: dict[str, Any], prefix: str = "") -> None:
        self.data = data
        self.prefix = prefix

    def _get(self, key: str, default: object) -> object:
        value = self.data.get(key, default)
        if value is _REQUIRED:
            raise ValueError(f"{self.prefix}{key}: missing")
        return value

    def _wrong(self, key: str, value: object, wanted: str) -> ValueError:
        return ValueError(f"{self.prefix}{key}: {_type_name(value)}, not {wanted}")

    def string(self, key: str, default: object = _REQUIRED) -> str:
        value = self._get(key, default)
        if not isinstance(value, str):
            raise self._wrong(key, value, "a string")
        return value

    def time(self, key: str) -> datetime:
        value = self.string(key)
        try:
            return parse_time(value)
        except ValueError as err:
            raise ValueError(
                f"{self.prefix}{key}: {value[:40]!r} is not a real UTC time YYYY-MM-DDTHH:MM:SSZ"
            ) from err

    def optional_string(self, key: str) -> str | None:
        value = self._get(key, None)
        if value is not None and not isinstance(value, str):
            raise self._wrong(key, value, "a string or null")
        return value

    def commit(self, key: str) -> str | None:
        value = self.optional_string(key)
        if value is not None and not _COMMIT_ID.match(value):
            raise ValueError(f"{self.prefix}{key}: {value[:80]!r} is not a commit id")
        return value

    def integer(self, key: str) -> int | None:
        value = self._get(key, None)
        if value is not None and (type(value) is not int):
            raise self._wrong(key, value, "an integer or null")
        return value

    def boolean(self, key: str) -> bool | None:
        value = self._get(key, None)
        if value is not None and not isinstance(value, bool):
            raise self._wrong(key, value, "true, false or null")
        return value

    def result(self, key: str) -> Result:
        value = self.string(key)
        try:
            return Result(value)
        except ValueError as err:
            raise ValueError(f"{self.prefix}{key}: {value[:80]!r} is not a result") from err

    def mapping(self, key: str) -> dict[str, Any]:
        value = self._get(key, None)
        if value is None:
            return {}
        if not isinstance(value, dict):
            raise self._wrong(key, value, "an object")
        return value

    def numbers(self, key: str) -> dict[str, float]:
        found = {}
        for name, value in self.mapping(key).items():
            if type(value) not in (int, float):
                raise self._wrong(f"{key}.{name}", value, "a number")
            found[name] = float(value)
        return found

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._get(key, None)
        if value is None:
            return ()
        if not isinstance(value, list):
            raise self._wrong(key, value, "an array of strings")
        for item in value:
            if not isinstance(item, str):
                raise self._wrong(f"{key}[{value.index(item)}]", item, "a string")
        return tuple(value)


def _system(data: dict[str, Any]) -> SystemInfo:
    """``system``; keys this version does not know are ignored, as at the top level."""
    system = _Fields(data, "system.")
    return SystemInfo(
        store_path=system.optional_string("store_path"),
        generation=system.integer("generation"),
        current_system=system.optional_string("current_system"),
        booted_system=system.optional_string("booted_system"),
        nixos_version=system.optional_string("nixos_version"),
        configuration_revision=system.optional_string("configuration_revision"),
        current_kernel=system.optional_string("current_kernel"),
        booted_kernel=system.optional_string("booted_kernel"),
        reboot_required=system.boolean("reboot_required"),
    )


# The top-level fields of status.json, in order: what policies may name (plus ``report``,
# which the site adds) and what docs/protocol.md must list.
REPORT_FIELDS: Final = ("schema", *(f.name for f in fields(Report) if f.name != "schema"))
