"""The protocol (contract) in one place: ref names, commit trailers, the one time format,
and the status report (``status.json``) schema.

Every other module imports these names; nothing else spells a ref, a trailer or the time
format. docs/protocol.md documents the same, and tests/test_protocol.py checks that the two
agree. Change anything here only on purpose, in one commit that updates every side.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from enum import StrEnum
from types import NoneType
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

# -- deploy tree files -----------------------------------------------------------------
# Encrypted secrets (gitops/agent/secrets.py, docs/secrets.md). A deploy tree of a host
# that some secret names carries ``secrets/<name>.age`` (the age file from main, encrypted
# to the host's SSH key and the admins) for each such secret, and ``secrets/secrets.json``
# saying where each goes; a host without secrets has no ``secrets/`` directory.
SECRETS_DIR: Final = "secrets"
SECRETS_MANIFEST: Final = "secrets/secrets.json"
SECRET_SUFFIX: Final = ".age"
SECRETS_SCHEMA: Final = 1
SECRET_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
_UNIX_NAME: Final = re.compile(r"^([a-z_][a-z0-9_-]{0,31}|[0-9]{1,10})$")


def is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.match(name)) and not name.endswith(SECRET_SUFFIX)


@dataclass(frozen=True)
class SecretFile:
    """One entry of ``secrets/secrets.json``: where the agent puts a decrypted secret."""

    name: str
    owner: str = "root"
    group: str = "root"
    mode: int = 0o400
    path: str | None = None  # a symlink the agent makes to the decrypted file, if any

    @property
    def file(self) -> str:
        """The age file in the deploy tree."""
        return f"{SECRETS_DIR}/{self.name}{SECRET_SUFFIX}"

    def to_dict(self) -> dict[str, Any]:
        return {
            "owner": self.owner,
            "group": self.group,
            "mode": f"{self.mode:04o}",
            "path": self.path,
        }


def secrets_manifest(files: list[SecretFile]) -> str:
    """The text of ``secrets/secrets.json``."""
    body = {f.name: f.to_dict() for f in sorted(files, key=lambda f: f.name)}
    return json.dumps({"schema": SECRETS_SCHEMA, "secrets": body}, indent=2) + "\n"


def check_secret_file(file: SecretFile) -> str | None:
    """Why ``file`` is not acceptable, or None."""
    if not is_secret_name(file.name):
        return f"{file.name[:80]!r} is not a secret name (letters, digits, . _ -; no .age)"
    for what, value in (("owner", file.owner), ("group", file.group)):
        if not _UNIX_NAME.match(value):
            return f"{file.name}: {what} {value[:40]!r} is not a user or group name or number"
    if not 0 <= file.mode <= 0o777:
        return f"{file.name}: mode {file.mode:o} is not a permission mode (e.g. 0400)"
    if file.path is not None and (
        not file.path.startswith("/")
        or any(part in ("", ".", "..") for part in file.path[1:].split("/"))
        or file.path.startswith("/nix/")
    ):
        return f"{file.name}: path {file.path[:80]!r} must be an absolute path outside /nix"
    return None


def parse_secrets_manifest(text: bytes | str) -> tuple[SecretFile, ...]:
    """Read ``secrets/secrets.json``; ValueError says what is wrong."""
    data = _load_object(text)
    if data.get("schema") != SECRETS_SCHEMA or type(data.get("secrets")) is not dict:
        raise ValueError(f"not a schema {SECRETS_SCHEMA} secrets manifest")
    files = []
    for name, entry in data["secrets"].items():
        if type(entry) is not dict:
            raise ValueError(f"{name[:80]!r}: not an object")
        spec = _typed(entry, _SECRET_FIELDS, f"{name[:80]}.")
        try:
            mode = int(spec["mode"], 8)
        except ValueError as err:
            raise ValueError(f"{name[:80]}: mode {spec['mode'][:20]!r} is not octal") from err
        file = SecretFile(name, spec["owner"], spec["group"], mode, spec["path"])
        problem = check_secret_file(file)
        if problem:
            raise ValueError(problem)
        files.append(file)
    return tuple(files)


# -- enrolment and escrow ---------------------------------------------------------------
# A new machine proposes itself on ``enroll/<host>`` (docs/enroll-host.md): one commit on
# top of main, signed by the new host's key, adding only ``hosts/<host>/``.
ENROLL_PREFIX: Final = "refs/heads/enroll/"


def enroll_ref(host: str) -> str:
    return f"{ENROLL_PREFIX}{host}"


# -- staged rollouts ---------------------------------------------------------------------
# With ``rollout:`` in fleet.yaml, ``gitops publish`` records each step of a rollout (a new
# source, a wave reached, a halt, an admin's resume or abort) as a commit signed by a
# publisher key on ``rollout``, whose tree holds ``rollout.json`` (docs/rollout.md).
# Agents never read it.
ROLLOUT_REF: Final = "refs/heads/rollout"
ROLLOUT_FILE: Final = "rollout.json"
ROLLOUT_SCHEMA: Final = 1


# A report commit may carry ``escrow/<name>.age``: recovery material (a LUKS recovery key,
# a copy of the host key) encrypted to the admins' recipients in fleet.yaml. Readers that
# do not know the directory ignore it.
ESCROW_DIR: Final = "escrow"

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
# The host's software bill of materials (CycloneDX JSON), beside status.json in a report
# commit whose running system differs from the one the last SBOM described.
SBOM_FILE: Final = "sbom.cdx.json"
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
    # The applied deploy commit (or a new head that is otherwise valid) is past its Expires
    # or older than max_age: the publisher stopped renewing it, or the server is frozen.
    STALE_PUBLISHER = "stale-publisher"
    DEPLOY_MISSING = "deploy-missing"  # deploy/<host> is gone although this host applied from it
    MISCONFIGURED = "misconfigured"  # the agent's own configuration (e.g. its trust file) is broken


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

    def to_dict(self) -> dict[str, Any]:
        """The ``system`` object of status.json (every value is a JSON scalar)."""
        return dict(vars(self))


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
        data["system"] = self.system.to_dict()
        data["changes"] = list(self.changes)
        return data

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, sort_keys=False) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str) -> Report:
        """Parse a status.json, checking every field's type and bounding its size and
        nesting (it comes from a host: the site must survive anything in it); ValueError
        says what is wrong."""
        data = _load_object(text)
        schema = data.get("schema")
        if type(schema) is not int or schema != SCHEMA:
            raise ValueError(f"unknown report schema {schema!r} (this version reads {SCHEMA})")
        top = _typed(data, _TOP_FIELDS, "")
        host = top["host"]
        if not _is_host_name_cached(host):
            raise ValueError(f"host: {host[:80]!r} is not a host name")
        for key in ("deploy_seen", "deploy_applied", "source_commit"):
            if top[key] is not None and not _is_commit_id(top[key]):
                raise ValueError(f"{key}: {top[key][:80]!r} is not a commit id")
        facts, durations, changes = top["facts"] or {}, top["durations"] or {}, top["changes"]
        if _too_deep(facts, MAX_DEPTH - 1):
            raise ValueError(f"facts: nested deeper than {MAX_DEPTH} levels")
        for name, value in durations.items():
            if type(value) not in _NUMBER:
                raise ValueError(f"durations.{name}: {_type_name(value)}, not a number")
        for index, line in enumerate(changes or ()):
            if type(line) is not str:
                raise ValueError(f"changes[{index}]: {_type_name(line)}, not a string")
        return cls(
            host=host,
            time=_report_time(top["time"]),
            agent_version=top["agent_version"],
            result=_result(top["result"]),
            reason=top["reason"],
            report_id=top["report_id"],
            deploy_seen=top["deploy_seen"],
            deploy_applied=top["deploy_applied"],
            source_commit=top["source_commit"],
            action=top["action"],
            system=SystemInfo(**_typed(top["system"] or {}, _SYSTEM_FIELDS, "system.")),
            facts=facts,
            durations={name: float(value) for name, value in durations.items()},
            log_tail=top["log_tail"],
            changes=tuple(changes[:MAX_CHANGES]) if changes else (),
        )


# -- reading status.json: strict types, bounded size and depth ---------------------------

MAX_REPORT_BYTES: Final = 1 << 20  # a larger status.json is refused unread
MAX_DEPTH: Final = 32  # objects and arrays nested deeper are refused

# A host's reports all carry its name: check each name once.
_is_host_name_cached: Final = functools.lru_cache(maxsize=4096)(is_host_name)


_COMMIT_ID: Final = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")  # SHA-1 or SHA-256


def _is_commit_id(text: str) -> bool:
    return _COMMIT_ID.match(text) is not None


_REQUIRED: Final = object()
_NUMBER: Final = frozenset({int, float})
_STR: Final[frozenset[type]] = frozenset({str})
_OPTIONAL_STR: Final[frozenset[type]] = frozenset({str, NoneType})


# Field -> the JSON types it may have (exactly: true is not a number) and its default.
_Spec = dict[str, tuple[frozenset[type], object]]
_TOP_FIELDS: Final[_Spec] = {
    "host": (_STR, _REQUIRED),
    "time": (_STR, _REQUIRED),
    "agent_version": (_STR, ""),
    "result": (_STR, _REQUIRED),
    "reason": (_STR, ""),
    "report_id": (_STR, _REQUIRED),
    "deploy_seen": (_OPTIONAL_STR, None),
    "deploy_applied": (_OPTIONAL_STR, None),
    "source_commit": (_OPTIONAL_STR, None),
    "action": (_STR, "switch"),
    "system": (frozenset({dict, NoneType}), None),
    "facts": (frozenset({dict, NoneType}), None),
    "durations": (frozenset({dict, NoneType}), None),
    "log_tail": (_STR, ""),
    "changes": (frozenset({list, NoneType}), None),
}
_SECRET_FIELDS: Final[_Spec] = {
    "owner": (_STR, "root"),
    "group": (_STR, "root"),
    "mode": (_STR, "0400"),
    "path": (_OPTIONAL_STR, None),
}
_SYSTEM_FIELDS: Final[_Spec] = {
    **{f.name: (_OPTIONAL_STR, None) for f in fields(SystemInfo)},
    "generation": (frozenset({int, NoneType}), None),
    "reboot_required": (frozenset({bool, NoneType}), None),
}


def _typed(data: dict[str, Any], spec: _Spec, prefix: str) -> dict[str, Any]:
    """The fields of ``spec`` from ``data``, each of one of its types; keys not in
    ``spec`` are ignored."""
    found = {}
    for name, (types, default) in spec.items():
        value = data.get(name, default)
        if type(value) not in types:
            if value is _REQUIRED:
                raise ValueError(f"{prefix}{name}: missing")
            wanted = " or ".join(sorted(_TYPE_NAMES[t] for t in types))
            raise ValueError(f"{prefix}{name}: {_type_name(value)}, not {wanted}")
        found[name] = value
    return found


def _report_time(text: str) -> datetime:
    try:
        return parse_time(text)
    except ValueError as err:
        raise ValueError(
            f"time: {text[:40]!r} is not a real UTC time YYYY-MM-DDTHH:MM:SSZ"
        ) from err


def _result(text: str) -> Result:
    try:
        return Result(text)
    except ValueError as err:
        raise ValueError(f"result: {text[:80]!r} is not a result") from err


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} is not a JSON number")


# One decoder, made once (json.loads with any option makes a new one per call).
_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)


def _load_object(text: bytes | str) -> dict[str, Any]:
    if len(text) > MAX_REPORT_BYTES:
        raise ValueError(f"larger than {MAX_REPORT_BYTES} bytes")
    try:
        data = _DECODER.decode(text.decode() if isinstance(text, bytes) else text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at line {err.lineno})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte {err.start})") from err
    except RecursionError as err:
        raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from err
    except ValueError as err:  # a number too long to read, NaN or Infinity
        raise ValueError(f"not JSON ({err})") from err
    if not isinstance(data, dict):
        raise ValueError("not a JSON object")
    return data


def _too_deep(value: dict[str, Any], levels: int) -> bool:
    """Whether objects and arrays nest more than ``levels`` deep below ``value``."""
    level: list[Any] = [value]
    for _ in range(levels + 1):
        below = []
        for node in level:
            for child in node.values() if type(node) is dict else node:
                if type(child) is dict or type(child) is list:
                    below.append(child)
        if not below:
            return False
        level = below
    return True


_TYPE_NAMES: Final[dict[type, str]] = {
    dict: "an object",
    list: "an array",
    str: "a string",
    bool: "true/false",
    int: "an integer",
    float: "a number",
    NoneType: "null",
}


def _type_name(value: object) -> str:
    return _TYPE_NAMES.get(type(value), type(value).__name__)


# The top-level fields of status.json, in order: what policies may name (plus ``report``,
# which the site adds) and what docs/protocol.md must list.
REPORT_FIELDS: Final = ("schema", *(f.name for f in fields(Report) if f.name != "schema"))
