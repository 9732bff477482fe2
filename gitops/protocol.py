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
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

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


# -- archive marks (written by the gitops server only; docs/server.md#retention) ---------
# ``refs/archive/reports/<host>/<YYYY-MM>`` points at the last report commit of that month
# on ``reports/<host>``: a cheap, never-moved mark in history that is never rewritten.
ARCHIVE_ROOT: Final = "refs/archive/"
ARCHIVE_PREFIX: Final = f"{ARCHIVE_ROOT}reports/"
ARCHIVE_MONTH: Final = re.compile(r"^[0-9]{4}-(0[1-9]|1[0-2])$")


def archive_ref(host: str, month: str) -> str:
    return f"{ARCHIVE_PREFIX}{host}/{month}"


def parse_archive_ref(ref: str) -> tuple[str, str] | None:
    """``refs/archive/reports/web-1/2026-01`` → ``("web-1", "2026-01")``; None otherwise."""
    host, sep, month = ref.removeprefix(ARCHIVE_PREFIX).partition("/")
    if not ref.startswith(ARCHIVE_PREFIX) or not sep:
        return None
    return (host, month) if is_host_name(host) and ARCHIVE_MONTH.match(month) else None


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
# The system (the host's NixOS toplevel, ``/nix/store/<hash>-nixos-system-...``) built
# centrally from exactly this commit's tree (``gitops build``): an agent in substitute
# mode realises this one path from its binary caches and evaluates nothing. Under the
# publisher's signature, so a cache can serve only what the publisher pinned. Optional.
TRAILER_SYSTEM_PATH: Final = "System-Path"
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
MAX_UNIX_ID: Final = 2**32 - 2  # (uid_t)-1 means "leave unchanged"
MAX_SECRET_PATH: Final = 1024


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
        if not _UNIX_NAME.match(value) or (value.isdigit() and int(value) > MAX_UNIX_ID):
            return f"{file.name}: {what} {value[:40]!r} is not a user or group name or number"
    if not 0 <= file.mode <= 0o777:
        return f"{file.name}: mode {file.mode:o} is not a permission mode (e.g. 0400)"
    if file.mode & 0o022:
        return (
            f"{file.name}: mode {file.mode:04o} lets others than its owner change the secret "
            "(a service would read what they wrote); use e.g. 0400 or 0440"
        )
    if file.path is not None and (
        not file.path.startswith("/")
        or any(part in ("", ".", "..") or len(part) > 255 for part in file.path[1:].split("/"))
        or file.path.startswith("/nix/")
        or len(file.path) > MAX_SECRET_PATH
        or not file.path.isprintable()
    ):
        return (
            f"{file.name}: path {file.path[:80]!r} must be an absolute path outside /nix, "
            f"printable, at most {MAX_SECRET_PATH} characters"
        )
    return None


def parse_secrets_manifest(text: bytes | str) -> tuple[SecretFile, ...]:
    """Read ``secrets/secrets.json``; ValueError says what is wrong."""
    data = _load_object(text, strict=True)
    if type(data.get("schema")) is not int or data["schema"] != SECRETS_SCHEMA:
        raise ValueError(f"not a schema {SECRETS_SCHEMA} secrets manifest")
    if type(data.get("secrets")) is not dict:
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
    # The deploy commit's pinned System-Path could not be fetched from the configured caches
    # (signed by no trusted key, not what the signed narinfo says, not there) and the agent
    # may not build locally; the running system is untouched.
    SUBSTITUTE_FAILED = "substitute-failed"


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
    # Signed commands handled since the last report (docs/commands.md): each at most once.
    commands: tuple[CommandAck, ...] = ()
    # Since when the host needs a reboot (booted kernel/initrd differ, or an action-boot
    # system waits); None: no reboot needed (or an agent that does not say).
    reboot_needed_since: datetime | None = None
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
        data["commands"] = [ack.to_dict() for ack in self.commands]
        since = self.reboot_needed_since
        data["reboot_needed_since"] = format_time(since) if since is not None else None
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
            commands=_command_acks(top["commands"]),
            reboot_needed_since=(
                _report_time(top["reboot_needed_since"])
                if top["reboot_needed_since"] is not None
                else None
            ),
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
    "commands": (frozenset({list, NoneType}), None),
    "reboot_needed_since": (_OPTIONAL_STR, None),
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


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    data: dict[str, Any] = {}
    for key, value in pairs:
        if key in data:
            raise ValueError(f"the key {key[:80]!r} is given twice")
        data[key] = value
    return data


# One decoder, made once (json.loads with any option makes a new one per call).
_DECODER: Final = json.JSONDecoder(parse_constant=_no_constant)
# For the files that tell a host what to do as root (commands, settings, secrets): a key
# given twice is refused, so that no reader can see another value than the agent does.
_STRICT_DECODER: Final = json.JSONDecoder(
    parse_constant=_no_constant, object_pairs_hook=_unique_keys
)


def parse_json(text: bytes | str, *, strict: bool = False, limit: int | None = None) -> Any:
    """Any JSON value from a file another program or a host may have written. ValueError
    (never RecursionError, UnicodeDecodeError, an endless number) says what is wrong, so
    each reader handles one exception; ``limit`` bounds the size read."""
    if limit is not None and len(text) > limit:
        raise ValueError(f"larger than {limit} bytes")
    decoder = _STRICT_DECODER if strict else _DECODER
    try:
        return decoder.decode(text.decode() if isinstance(text, bytes) else text)
    except json.JSONDecodeError as err:
        raise ValueError(f"not JSON ({err.msg} at line {err.lineno})") from err
    except UnicodeDecodeError as err:
        raise ValueError(f"not UTF-8 (byte {err.start})") from err
    except RecursionError as err:
        raise ValueError("not JSON gitops reads (nested too deep)") from err
    except ValueError as err:  # a number too long to read, NaN or Infinity
        raise ValueError(f"not JSON ({err})") from err


def _load_object(text: bytes | str, *, strict: bool = False) -> dict[str, Any]:
    try:
        data = parse_json(text, strict=strict, limit=MAX_REPORT_BYTES)
    except ValueError as err:
        if "nested too deep" in str(err):
            raise ValueError(f"nested deeper than {MAX_DEPTH} levels") from err
        raise
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


# -- signed commands and host control files (docs/commands.md) -------------------------
# In main, ``commands/<id>.json`` and its SSHSIG signature ``commands/<id>.json.sig``
# (namespace ``gitops-command``, by a key in fleet.yaml ``commanders``). ``gitops publish``
# copies each command, unexpired, into the deploy tree of every host it names, under
# ``gitops-control/commands/``, beside ``gitops-control/settings.json`` (the host's reboot
# policy and named checks). A deploy commit that changes only ``gitops-control/`` builds
# nothing on the host.

COMMANDS_DIR: Final = "commands"  # in main
CONTROL_DIR: Final = "gitops-control"  # in a deploy tree
CONTROL_COMMANDS_DIR: Final = f"{CONTROL_DIR}/commands"
CONTROL_SETTINGS_FILE: Final = f"{CONTROL_DIR}/settings.json"
COMMAND_NAMESPACE: Final = "gitops-command"  # the SSHSIG namespace of command signatures
COMMAND_SUFFIX: Final = ".json"
SIGNATURE_SUFFIX: Final = ".sig"
COMMAND_SCHEMA: Final = 1
CONTROL_SCHEMA: Final = 1
MAX_COMMAND_LIFETIME: Final = 30 * 86400  # an agent refuses a command valid for longer
MAX_COMMANDS: Final = 64  # per deploy tree, and acknowledgements per report
MAX_COMMAND_BYTES: Final = 16 * 1024
DEFAULT_LOG_BYTES: Final = 64 * 1024
MAX_LOG_BYTES: Final = 256 * 1024  # collect-logs' excerpt, at most
MAX_ACK_DETAIL: Final = 1024
MAX_LOG_SINCE: Final = 30 * 86400
COMMAND_ID: Final = re.compile(r"^[0-9a-z][0-9a-z-]{7,79}$")
UNIT_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9@._:\\-]{0,127}$")
CHECK_NAME: Final = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,63}$")


class CommandName(StrEnum):
    """The fixed set of commands (no arbitrary shell; run-check names a configured check)."""

    REBOOT = "reboot"
    POWEROFF = "poweroff"
    COLLECT_LOGS = "collect-logs"
    GC = "gc"
    UPDATE_NOW = "update-now"
    RUN_CHECK = "run-check"


class CommandOutcome(StrEnum):
    DONE = "done"  # executed and succeeded (reboot/poweroff: about to happen)
    FAILED = "failed"  # executed and failed
    REFUSED = "refused"  # never executed: expired, a foreign or bad signature, a replay...


@dataclass(frozen=True)
class Command:
    """One signed command, ``commands/<id>.json``."""

    id: str
    name: CommandName
    hosts: tuple[str, ...]
    issued: datetime
    expires: datetime
    issuer: str = ""
    units: tuple[str, ...] = ()  # collect-logs: journal units (none: the whole journal)
    since: int = 3600  # collect-logs: seconds back from execution
    max_bytes: int = DEFAULT_LOG_BYTES  # collect-logs: the excerpt's limit
    check: str = ""  # run-check: a check named in fleet.yaml ``checks``
    schema: int = COMMAND_SCHEMA

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "schema": self.schema,
            "id": self.id,
            "name": str(self.name),
            "hosts": list(self.hosts),
            "issued": format_time(self.issued),
            "expires": format_time(self.expires),
            "issuer": self.issuer,
        }
        if self.name is CommandName.COLLECT_LOGS:
            data.update(units=list(self.units), since=self.since, max_bytes=self.max_bytes)
        if self.name is CommandName.RUN_CHECK:
            data["check"] = self.check
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str) -> Command:
        """Parse and check a command file; ValueError says what is wrong."""
        if len(text) > MAX_COMMAND_BYTES:
            raise ValueError(f"larger than {MAX_COMMAND_BYTES} bytes")
        data = _load_object(text, strict=True)
        if data.get("schema") != COMMAND_SCHEMA or type(data.get("schema")) is not int:
            raise ValueError(f"unknown command schema {data.get('schema')!r}")
        top = _typed(data, _COMMAND_FIELDS, "")
        if not COMMAND_ID.match(top["id"]):
            raise ValueError(f"id: {top['id'][:80]!r} is not a command id")
        try:
            name = CommandName(top["name"])
        except ValueError as err:
            known = ", ".join(str(n) for n in CommandName)
            raise ValueError(f"name: {top['name'][:40]!r} is not one of {known}") from err
        hosts = _strings(top["hosts"], "hosts")
        if not hosts or not all(is_host_name(h) for h in hosts):
            raise ValueError("hosts: must list host names")
        units = _strings(top["units"], "units")
        if not all(UNIT_NAME.match(u) for u in units):
            raise ValueError("units: each must be a systemd unit name")
        for key, upper in (("since", MAX_LOG_SINCE), ("max_bytes", MAX_LOG_BYTES)):
            if not 0 < top[key] <= upper:
                raise ValueError(f"{key}: must be between 1 and {upper}")
        if name is CommandName.RUN_CHECK and not CHECK_NAME.match(top["check"]):
            raise ValueError(f"check: {top['check'][:40]!r} is not a check name")
        issued, expires = _report_time(top["issued"]), _report_time(top["expires"])
        if expires <= issued:
            raise ValueError("expires: must be after issued")
        return cls(
            id=top["id"],
            name=name,
            hosts=hosts,
            issued=issued,
            expires=expires,
            issuer=top["issuer"],
            units=units,
            since=top["since"],
            max_bytes=top["max_bytes"],
            check=top["check"],
        )


_INT: Final[frozenset[type]] = frozenset({int})
_COMMAND_FIELDS: Final[_Spec] = {
    "id": (_STR, _REQUIRED),
    "name": (_STR, _REQUIRED),
    "hosts": (frozenset({list}), _REQUIRED),
    "issued": (_STR, _REQUIRED),
    "expires": (_STR, _REQUIRED),
    "issuer": (_STR, ""),
    "units": (frozenset({list}), []),
    "since": (_INT, 3600),
    "max_bytes": (_INT, DEFAULT_LOG_BYTES),
    "check": (_STR, ""),
}


def _strings(items: list[Any], name: str) -> tuple[str, ...]:
    if len(items) > 1000 or not all(type(item) is str for item in items):
        raise ValueError(f"{name}: must be a list of strings")
    return tuple(items)


@dataclass(frozen=True)
class CommandAck:
    """A report's word on one command: what became of it, when, and (collect-logs, run-check)
    its bounded output."""

    id: str
    name: str
    outcome: CommandOutcome
    at: datetime
    detail: str = ""  # a human reason (why refused or failed, what was done)
    output: str = ""  # collect-logs' journal excerpt, run-check's output tail

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "id": self.id,
            "name": self.name,
            "outcome": str(self.outcome),
            "at": format_time(self.at),
            "detail": self.detail,
        }
        if self.output:
            data["output"] = self.output
        return data


_ACK_FIELDS: Final[_Spec] = {
    "id": (_STR, _REQUIRED),
    "name": (_STR, _REQUIRED),
    "outcome": (_STR, _REQUIRED),
    "at": (_STR, _REQUIRED),
    "detail": (_STR, ""),
    "output": (_STR, ""),
}


def _command_acks(items: list[Any] | None) -> tuple[CommandAck, ...]:
    if not items:
        return ()
    if len(items) > MAX_COMMANDS:
        raise ValueError(f"commands: more than {MAX_COMMANDS}")
    acks = []
    for index, item in enumerate(items):
        if type(item) is not dict:
            raise ValueError(f"commands[{index}]: {_type_name(item)}, not an object")
        top = _typed(item, _ACK_FIELDS, f"commands[{index}].")
        if not COMMAND_ID.match(top["id"]):
            raise ValueError(f"commands[{index}].id: {top['id'][:80]!r} is not a command id")
        try:
            outcome = CommandOutcome(top["outcome"])
        except ValueError as err:
            raise ValueError(f"commands[{index}].outcome: {top['outcome'][:40]!r}") from err
        acks.append(
            CommandAck(
                id=top["id"],
                name=top["name"][:64],
                outcome=outcome,
                at=_report_time(top["at"]),
                detail=top["detail"][:MAX_ACK_DETAIL],
                output=top["output"][:MAX_LOG_BYTES],
            )
        )
    return tuple(acks)


# -- reboot windows ----------------------------------------------------------------------

_DAYS: Final = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_CLOCK: Final = re.compile(r"^(\d\d):(\d\d)-(\d\d):(\d\d)$")


@dataclass(frozen=True)
class RebootWindow:
    """``Mon-Fri 02:00-05:00``: days (0 is Monday) and minutes of the local day; a range
    whose end is not after its start runs past midnight into the next day."""

    days: frozenset[int]
    start: int
    end: int
    text: str

    def contains(self, local: datetime) -> bool:
        minute = local.hour * 60 + local.minute
        day = local.weekday()
        if self.start < self.end:
            return day in self.days and self.start <= minute < self.end
        return (day in self.days and minute >= self.start) or (
            (day - 1) % 7 in self.days and minute < self.end
        )


def parse_window(text: str) -> RebootWindow:
    """``[DAYS ]HH:MM-HH:MM``; DAYS like ``Mon-Fri``, ``Sat,Sun``, ``Mon-Wed,Fri`` or
    ``daily``. ValueError says what is wrong."""
    parts = text.split()
    if len(parts) not in (1, 2):
        raise ValueError(f"{text[:60]!r} is not like 'Mon-Fri 02:00-05:00'")
    days = _window_days(parts[0] if len(parts) == 2 else "daily", text)
    match = _CLOCK.match(parts[-1])
    if match is None:
        raise ValueError(f"{text[:60]!r}: the hours must be like 02:00-05:00")
    h1, m1, h2, m2 = (int(g) for g in match.groups())
    if h1 > 23 or m1 > 59 or h2 > 24 or m2 > 59 or (h2 == 24 and m2):
        raise ValueError(f"{text[:60]!r}: {parts[-1]} is not a time of day")
    start, end = h1 * 60 + m1, h2 * 60 + m2
    if start == end:
        raise ValueError(f"{text[:60]!r}: the window is empty (start equals end)")
    return RebootWindow(frozenset(days), start, end, text)


def _window_days(spec: str, text: str) -> set[int]:
    if spec.lower() in ("daily", "*"):
        return set(range(7))
    days: set[int] = set()
    for item in spec.lower().split(","):
        first, _, last = item.partition("-")
        if first not in _DAYS or (last and last not in _DAYS):
            raise ValueError(
                f"{text[:60]!r}: {item!r} is not a day or range of days (Mon..Sun, e.g. Mon-Fri)"
            )
        a, b = _DAYS.index(first), _DAYS.index(last or first)
        days.update((a + i) % 7 for i in range(((b - a) % 7) + 1))
    return days


def parse_timezone(name: str) -> ZoneInfo:
    """An IANA time zone (``Europe/Berlin``, ``UTC``); ValueError when unknown."""
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError) as err:
        raise ValueError(
            f"{name[:60]!r} is not a known time zone (e.g. Europe/Berlin, UTC)"
        ) from err


@dataclass(frozen=True)
class RebootPolicy:
    """When the agent may reboot by itself into a new kernel/initrd or boot-mode system."""

    allow: bool = False
    window: str | None = None  # None: any time
    timezone: str = "UTC"

    def allows(self, moment: datetime) -> bool:
        if not self.allow:
            return False
        if self.window is None:
            return True
        local = moment.astimezone(parse_timezone(self.timezone))
        return parse_window(self.window).contains(local)

    def to_dict(self) -> dict[str, Any]:
        return {"allow": self.allow, "window": self.window, "timezone": self.timezone}


@dataclass(frozen=True)
class CheckSpec:
    """A named check run by ``run-check``: an argument list from the fleet's configuration."""

    command: tuple[str, ...]
    timeout: int = 60

    def to_dict(self) -> dict[str, Any]:
        return {"command": list(self.command), "timeout": self.timeout}


@dataclass(frozen=True)
class HostControl:
    """``gitops-control/settings.json`` in a deploy tree (written by publish, signed with
    the deploy commit): the host's reboot policy and the checks run-check may run."""

    reboot: RebootPolicy = field(default_factory=RebootPolicy)
    checks: dict[str, CheckSpec] = field(default_factory=dict)
    schema: int = CONTROL_SCHEMA

    def to_json(self) -> str:
        data = {
            "schema": self.schema,
            "reboot": self.reboot.to_dict(),
            "checks": {name: spec.to_dict() for name, spec in sorted(self.checks.items())},
        }
        return json.dumps(data, indent=2) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str) -> HostControl:
        data = _load_object(text, strict=True)
        if data.get("schema") != CONTROL_SCHEMA:
            raise ValueError(f"unknown settings schema {data.get('schema')!r}")
        reboot = data.get("reboot") or {}
        checks = data.get("checks") or {}
        if type(reboot) is not dict or type(checks) is not dict:
            raise ValueError("reboot and checks must be objects")
        spec = _typed(reboot, _REBOOT_FIELDS, "reboot.")
        if spec["window"] is not None:
            parse_window(spec["window"])
        parse_timezone(spec["timezone"])
        found = {}
        for name, item in checks.items():
            if not CHECK_NAME.match(name) or type(item) is not dict:
                raise ValueError(f"checks: {name[:40]!r} is not a check")
            command = _strings(item.get("command") or [], f"checks.{name}.command")
            timeout = item.get("timeout", 60)
            if not command or type(timeout) is not int or timeout <= 0:
                raise ValueError(f"checks.{name}: needs a command and a positive timeout")
            found[name] = CheckSpec(command, timeout)
        return cls(RebootPolicy(**spec), found)


_REBOOT_FIELDS: Final[_Spec] = {
    "allow": (frozenset({bool}), False),
    "window": (_OPTIONAL_STR, None),
    "timezone": (_STR, "UTC"),
}


# The top-level fields of status.json, in order: what policies may name (plus ``report``,
# which the site adds) and what docs/protocol.md must list.
REPORT_FIELDS: Final = ("schema", *(f.name for f in fields(Report) if f.name != "schema"))
