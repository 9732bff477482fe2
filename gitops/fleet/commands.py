"""Signed commands in the fleet repository: ``commands/<id>.json`` and its signature.

``gitops command`` writes both files (signed by a key in fleet.yaml ``commanders``);
``gitops publish`` copies each unexpired command into the deploy tree of every host it
names (``gitops-control/commands/``); the agent checks the signature against its own
pinned commanders file and executes it at most once (gitops.agent.commands). The site
lists them (docs/commands.md).
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from gitops.errors import GitopsError
from gitops.fleet.model import Fleet, listed_principal
from gitops.fleet.schema import Problems
from gitops.fleet.source import Source
from gitops.protocol import (
    COMMAND_NAMESPACE,
    COMMAND_SUFFIX,
    COMMANDS_DIR,
    DEFAULT_LOG_BYTES,
    MAX_COMMAND_BYTES,
    MAX_COMMAND_LIFETIME,
    SIGNATURE_SUFFIX,
    Command,
    CommandName,
)
from gitops.system import atomic
from gitops.trust.allowed_signers import AllowedSigners, Verified
from gitops.trust.sshsig import SigningKey, public_key_of, sign

log = logging.getLogger(__name__)

MAX_SIGNATURE_BYTES = 16 * 1024


@dataclass(frozen=True)
class SignedCommand:
    """A command file, its exact bytes, and the armored signature over them."""

    command: Command
    payload: bytes
    signature: bytes

    @property
    def file_name(self) -> str:
        return f"{self.command.id}{COMMAND_SUFFIX}"

    def verify(self, trust: AllowedSigners, now: datetime) -> Verified:
        """Who signed it, if ``trust`` allows that key for commands at ``now`` and when it
        was issued; SignatureError otherwise."""
        return trust.verify(
            self.payload,
            self.signature,
            at=(self.command.issued, now),
            namespace=COMMAND_NAMESPACE,
        )


@dataclass(frozen=True)
class BadCommand:
    """A file in commands/ that is not a usable command: shown, never delivered."""

    path: str
    reason: str


def new_id(name: CommandName, issued: datetime) -> str:
    return f"{issued:%Y%m%d-%H%M%S}-{name}-{secrets.token_hex(4)}"


def select_hosts(fleet: Fleet, hosts: Sequence[str], tags: Sequence[str]) -> tuple[str, ...]:
    """The hosts a command goes to: those named, and those carrying one of ``tags``."""
    unknown = sorted(set(hosts) - fleet.hosts.keys())
    if unknown:
        raise GitopsError(
            f"unknown host(s): {', '.join(unknown)}; hosts are the directories in hosts/"
        )
    chosen = set(hosts)
    for tag in tags:
        tagged = {name for name, host in fleet.hosts.items() if tag in host.tags}
        if not tagged:
            raise GitopsError(f"no host has tag {tag!r}; check the tags in hosts/*/host.yaml")
        chosen |= tagged
    if not chosen:
        raise GitopsError("name the hosts: --host NAME (repeatable) or --tag TAG")
    return tuple(sorted(chosen))


def issue(
    fleet: Fleet,
    name: CommandName,
    hosts: tuple[str, ...],
    key: SigningKey,
    *,
    now: datetime,
    expires_in: int,
    units: tuple[str, ...] = (),
    since: int = 3600,
    max_bytes: int = DEFAULT_LOG_BYTES,
    check: str = "",
) -> SignedCommand:
    """A new command, signed; GitopsError when hosts would refuse it."""
    if not 0 < expires_in <= MAX_COMMAND_LIFETIME:
        raise GitopsError(
            f"--expires must be between 1 second and {MAX_COMMAND_LIFETIME // 86400} days"
        )
    if name is CommandName.RUN_CHECK and check not in fleet.settings.checks:
        known = ", ".join(sorted(fleet.settings.checks)) or "none"
        raise GitopsError(
            f"run-check: no check {check!r} in fleet.yaml 'checks' (defined: {known})"
        )
    principal = commander_principal(fleet, key)
    issued = now.replace(microsecond=0)
    command = Command(
        id=new_id(name, issued),
        name=name,
        hosts=hosts,
        issued=issued,
        expires=issued + timedelta(seconds=expires_in),
        issuer=principal,
        units=units if name is CommandName.COLLECT_LOGS else (),
        since=since,
        max_bytes=max_bytes,
        check=check if name is CommandName.RUN_CHECK else "",
    )
    try:  # the same checks an agent makes, before anything is signed
        Command.from_json(command.to_json())
    except ValueError as err:
        raise GitopsError(f"{name}: {err}") from err
    payload = command.to_json().encode()
    signature = sign(payload, key, namespace=COMMAND_NAMESPACE).encode()
    return SignedCommand(command, payload, signature)


def commander_principal(fleet: Fleet, key: SigningKey) -> str:
    public = public_key_of(key)
    principal = listed_principal(fleet.settings.commanders, public)
    if principal is not None:
        return principal
    raise GitopsError(
        f"the key {public.fingerprint} is not in fleet.yaml 'commanders', so hosts would refuse "
        "what it signs; add it by pull request, or use a listed key"
    )


def write(repo_dir: Path, signed: SignedCommand) -> tuple[Path, Path]:
    """Write the command and its signature into ``repo_dir/commands/``."""
    directory = repo_dir / COMMANDS_DIR
    payload = directory / signed.file_name
    signature = directory / f"{signed.file_name}{SIGNATURE_SUFFIX}"
    try:
        directory.mkdir(exist_ok=True)
        atomic.write_bytes(signature, signed.signature)
        atomic.write_bytes(payload, signed.payload)
    except OSError as err:
        raise GitopsError(
            f"{directory}: cannot write the command there ({err.strerror}); {COMMANDS_DIR}/ "
            "must be a directory you can write in the fleet repository"
        ) from err
    return payload, signature


def read_signed(
    name: str, payload: bytes | None, signature: bytes | None
) -> SignedCommand | BadCommand:
    """One command file and its signature, parsed (not yet verified)."""
    if payload is None:
        return BadCommand(name, "cannot be read")
    if signature is None:
        return BadCommand(name, f"has no signature ({name}{SIGNATURE_SUFFIX})")
    if len(signature) > MAX_SIGNATURE_BYTES:
        return BadCommand(name, "its signature is too large")
    try:
        command = Command.from_json(payload)
    except ValueError as err:
        return BadCommand(name, str(err))
    if f"{command.id}{COMMAND_SUFFIX}" != name.rsplit("/", 1)[-1]:
        return BadCommand(name, f"its id {command.id!r} is not its file name")
    return SignedCommand(command, payload, signature)


def load(source: Source, directory: str = COMMANDS_DIR) -> list[SignedCommand | BadCommand]:
    """Every command in ``directory`` of ``source`` (a fleet checkout or commit)."""
    names = source.list_dir(directory) or []
    found: list[SignedCommand | BadCommand] = []
    for name in sorted(names):
        if not name.endswith(COMMAND_SUFFIX):
            continue
        path = f"{directory}/{name}"
        payload = source.read(path)
        if payload is not None and len(payload) > MAX_COMMAND_BYTES:
            found.append(BadCommand(path, f"larger than {MAX_COMMAND_BYTES} bytes"))
            continue
        found.append(read_signed(path, payload, source.read(f"{path}{SIGNATURE_SUFFIX}")))
    return found


def signature_problem(item: SignedCommand, trust: AllowedSigners, now: datetime) -> str | None:
    """Why hosts would refuse ``item``'s signature at ``now`` (a commander in ``trust`` at
    its issue and at ``now``, and the issuer it names), or None."""
    try:
        verified = item.verify(trust, now)
    except GitopsError as err:
        return f"signature refused: {err}"
    if item.command.issuer and verified.principal != item.command.issuer:
        return f"signed by {verified.principal}, but says it was issued by {item.command.issuer}"
    return None


def checked(
    trust: AllowedSigners, found: Iterable[SignedCommand | BadCommand]
) -> list[SignedCommand | BadCommand]:
    """``found``, with each command that was not signed by a commander when it was issued
    (as it says) turned into a BadCommand: what the site lists as a command is one."""
    result: list[SignedCommand | BadCommand] = []
    for item in found:
        if isinstance(item, SignedCommand):
            problem = signature_problem(item, trust, item.command.issued)
            if problem is not None:
                result.append(BadCommand(f"{COMMANDS_DIR}/{item.file_name}", problem))
                continue
        result.append(item)
    return result


def deliverable(
    fleet: Fleet, found: Iterable[SignedCommand | BadCommand], now: datetime
) -> dict[str, list[SignedCommand]]:
    """Host -> the commands publish puts in its deploy tree: signed by a commander in
    fleet.yaml, naming it, not expired at ``now``. Anything else is logged and left out
    (one bad file harms only itself)."""
    trust = fleet.settings.commander_trust()
    by_host: dict[str, list[SignedCommand]] = {}
    for item in found:
        if isinstance(item, BadCommand):
            log.warning("commands: %s: %s; not delivered", item.path, item.reason)
            continue
        command = item.command
        if command.expires <= now:
            continue  # done with: removed from the deploy trees
        problem = signature_problem(item, trust, now)
        if problem is not None:
            log.warning("commands: %s: %s; not delivered", item.file_name, problem)
            continue
        for host in command.hosts:
            if host in fleet.hosts:
                by_host.setdefault(host, []).append(item)
    return by_host


def check_commands(fleet: Fleet, source: Source, problems: Problems) -> None:
    """``gitops check``: each command file parses and was signed by a commander when it was
    issued; publish would leave any other out (with only a warning) and hosts refuse it."""
    for item in checked(fleet.settings.commander_trust(), load(source)):
        if isinstance(item, BadCommand):
            problems.add(
                source.describe(item.path),
                item.reason,
                "issue it again with 'gitops command', or delete it",
            )
