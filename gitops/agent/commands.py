"""Signed commands on the host: each executed at most once, acknowledged in the next report.

Commands arrive in the verified deploy tree (``gitops-control/commands/<id>.json`` and its
``.sig``, copied there by ``gitops publish``). Each is checked against *this machine's*
commanders file (``trusted_commanders``, never the branch), must name this host, must not
be expired, and must not have been handled before. What became of each command is kept in
``commands.json`` in the state directory (atomically, before a command runs, so a crash
never runs one twice), and the acknowledgements wait there until a report carries them.

The set of commands is fixed (:class:`gitops.protocol.CommandName`); ``run-check`` runs a
check named in the host's settings (fleet.yaml ``checks``), never text from the command.
``reboot`` and ``poweroff`` happen after the report that acknowledges them is pushed.
See docs/commands.md.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2

from gitops.agent.config import AgentConfig
from gitops.errors import GitopsError
from gitops.fleet.commands import BadCommand, SignedCommand, read_signed
from gitops.protocol import (
    COMMAND_ID,
    COMMAND_SUFFIX,
    CONTROL_COMMANDS_DIR,
    CONTROL_SETTINGS_FILE,
    MAX_ACK_DETAIL,
    MAX_COMMAND_LIFETIME,
    MAX_COMMANDS,
    CommandAck,
    CommandName,
    CommandOutcome,
    HostControl,
    format_time,
    parse_json,
    parse_time,
)
from gitops.system import atomic, process
from gitops.system.host import Host

log = logging.getLogger(__name__)

STATE_FILE = "commands.json"
STATE_VERSION = 1
MAX_REMEMBERED = 512  # handled commands kept (until a day after they expire)
MAX_PENDING_ACKS = 256
FORGET_AFTER = timedelta(days=1)  # past its expiry a command is refused anyway
CLOCK_SKEW = timedelta(minutes=5)  # a command issued further ahead waits
CHECK_OUTPUT_BYTES = 4096
RUNNING = "running"  # handled entry of a command that started and has no outcome yet


@dataclass(frozen=True)
class Handled:
    """A command this host handled: never executed again."""

    outcome: str  # a CommandOutcome, or RUNNING
    at: datetime
    expires: datetime
    digest: str  # sha256 of the command file
    name: str = ""
    present: bool = True  # still in the deploy tree at the last look


@dataclass(frozen=True)
class PowerAction:
    name: CommandName  # reboot or poweroff
    command_id: str


@dataclass(frozen=True)
class CommandState:
    handled: dict[str, Handled] = field(default_factory=dict)
    acks: tuple[CommandAck, ...] = ()  # not yet in a committed report
    power: PowerAction | None = None  # to do once the acknowledging report is pushed


class CommandStore:
    """``commands.json``: read checked, written atomically. A corrupt file fails closed
    (no command runs until an admin fixes or removes it)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATE_FILE

    def load(self) -> CommandState:
        try:
            text = self.path.read_bytes()
        except FileNotFoundError:
            return CommandState()
        except OSError as err:
            raise GitopsError(
                f"{self.path}: cannot read the command state ({err.strerror}); no command "
                "runs until it is readable (it must be a file the agent's user can read)"
            ) from err
        try:
            return _state_from_json(parse_json(text))
        except (ValueError, KeyError, TypeError, AttributeError) as err:
            raise GitopsError(
                f"{self.path}: corrupt command state ({err}); no command runs until it is "
                "fixed or removed (removing it forgets which commands ran: unexpired ones "
                "would run again)"
            ) from err

    def save(self, state: CommandState) -> None:
        atomic.write_text(self.path, json.dumps(_state_to_json(state), indent=2) + "\n")


def _state_to_json(state: CommandState) -> dict[str, Any]:
    return {
        "version": STATE_VERSION,
        "handled": {
            key: {
                "outcome": h.outcome,
                "at": format_time(h.at),
                "expires": format_time(h.expires),
                "digest": h.digest,
                "name": h.name,
                "present": h.present,
            }
            for key, h in sorted(state.handled.items())
        },
        "acks": [ack.to_dict() for ack in state.acks],
        "power": (
            None
            if state.power is None
            else {"name": str(state.power.name), "id": state.power.command_id}
        ),
    }


def _state_from_json(data: dict[str, Any]) -> CommandState:
    if data.get("version") != STATE_VERSION:
        raise ValueError(f"version {data.get('version')!r}")
    handled = {
        str(key): Handled(
            outcome=str(item["outcome"]),
            at=parse_time(item["at"]),
            expires=parse_time(item["expires"]),
            digest=str(item["digest"]),
            name=str(item.get("name", "")),
            present=bool(item.get("present", True)),
        )
        for key, item in data["handled"].items()
    }
    acks = tuple(
        CommandAck(
            id=str(a["id"]),
            name=str(a["name"]),
            outcome=CommandOutcome(a["outcome"]),
            at=parse_time(a["at"]),
            detail=str(a.get("detail", "")),
            output=str(a.get("output", "")),
        )
        for a in data["acks"]
    )
    power = data.get("power")
    return CommandState(
        handled,
        acks,
        None if power is None else PowerAction(CommandName(power["name"]), str(power["id"])),
    )


@dataclass(frozen=True)
class Result:
    outcome: CommandOutcome
    detail: str
    output: str = ""


def read_control(tree: pygit2.Tree | None) -> HostControl | None:
    """The host's settings from a verified deploy tree; None when absent or unreadable."""
    data = _blob(tree, CONTROL_SETTINGS_FILE)
    if data is None:
        return None
    try:
        return HostControl.from_json(data)
    except ValueError as err:
        log.warning("%s in the deploy tree is unusable: %s", CONTROL_SETTINGS_FILE, err)
        return None


def _blob(tree: pygit2.Tree | None, path: str) -> bytes | None:
    if tree is None:
        return None
    try:
        entry = tree[path]
    except KeyError:
        return None
    return bytes(entry.data) if isinstance(entry, pygit2.Blob) else None


def _command_files(tree: pygit2.Tree | None) -> list[tuple[str, bytes | None, bytes | None]]:
    if tree is None:
        return []
    try:
        directory = tree[CONTROL_COMMANDS_DIR]
    except KeyError:
        return []
    if not isinstance(directory, pygit2.Tree):
        return []
    names = sorted(e.name for e in directory if e.name and e.name.endswith(COMMAND_SUFFIX))
    return [
        (name, _blob(directory, name), _blob(directory, f"{name}.sig"))
        for name in names[:MAX_COMMANDS]
    ]


class Commands:
    """This cycle's commands: run the new ones, remember them, hand out acknowledgements."""

    def __init__(self, config: AgentConfig, host: Host, now: datetime) -> None:
        self.config = config
        self.host = host
        self.now = now
        self.store = CommandStore(config.state_dir)
        self.state = CommandState()
        self.broken = False

    def run(self, tree: pygit2.Tree | None, control: HostControl | None) -> None:
        """Handle every command in ``tree`` (a verified deploy tree; ``control`` is its
        :func:`read_control`); never raises for a command: each one's failure is its own
        acknowledgement."""
        try:
            self.state = self.store.load()
        except GitopsError as err:
            log.error("%s", err)
            self.broken = True
            return
        self._recover_interrupted()
        seen: set[str] = set()
        files = _command_files(tree)
        for name, payload, signature in files:
            key = name.removesuffix(COMMAND_SUFFIX)
            if not COMMAND_ID.match(key):
                log.warning("command file %s: not a command id; ignored", name)
                continue
            seen.add(key)
            self._handle(key, read_signed(name, payload, signature), payload or b"", control)
        self._forget(seen)
        self.store.save(self.state)

    # -- what the cycle asks -------------------------------------------------------------

    def acks(self) -> tuple[CommandAck, ...]:
        return self.state.acks[:MAX_COMMANDS]

    def reported(self, acks: tuple[CommandAck, ...]) -> None:
        """``acks`` are in a committed report: drop them."""
        if not acks or self.broken:
            return
        rest = self.state.acks[len(acks) :]
        self.state = replace(self.state, acks=rest)
        self.store.save(self.state)

    def take_power(self) -> PowerAction | None:
        """The reboot or power-off to do now (cleared first: at most once)."""
        power = self.state.power
        if power is not None:
            self.state = replace(self.state, power=None)
            self.store.save(self.state)
        return power

    @property
    def power_pending(self) -> bool:
        return self.state.power is not None

    # -- handling --------------------------------------------------------------------

    def _handle(
        self,
        key: str,
        signed: SignedCommand | BadCommand,
        payload: bytes,
        control: HostControl | None,
    ) -> None:
        digest = hashlib.sha256(payload).hexdigest()
        old = self.state.handled.get(key)
        name = signed.command.name if isinstance(signed, SignedCommand) else ""
        if old is not None:
            if old.digest != digest and digest not in old.digest.split(","):
                self._remember(key, replace(old, digest=f"{old.digest},{digest}"))
                self._ack(
                    key,
                    str(name),
                    CommandOutcome.REFUSED,
                    "replay: a different command with this id was handled before",
                )
            elif not old.present:
                self._remember(key, replace(old, present=True))
                self._ack(
                    key,
                    old.name,
                    CommandOutcome.REFUSED,
                    f"replay: already handled ({old.outcome}) and then withdrawn",
                )
            return
        if isinstance(signed, BadCommand):
            self._refuse(key, "", digest, self.now + FORGET_AFTER, signed.reason)
            return
        command = signed.command
        if command.issued > self.now + CLOCK_SKEW:
            log.info("command %s is issued in the future (%s); waiting", key, command.issued)
            return
        problem = self._problem(signed)
        if problem is not None:
            self._refuse(key, str(command.name), digest, command.expires, problem)
            return
        live = sum(1 for h in self.state.handled.values() if h.expires > self.now)
        if live >= MAX_REMEMBERED:
            self._refuse(
                key,
                str(command.name),
                digest,
                command.expires,
                f"more than {MAX_REMEMBERED} unexpired commands",
            )
            return
        # Remembered before it runs: a crash while it runs never runs it again.
        self._remember(key, Handled(RUNNING, self.now, command.expires, digest, str(command.name)))
        self.store.save(self.state)
        log.info("running command %s (%s, signed by %s)", key, command.name, command.issuer)
        result = self._execute(signed, control)
        self._remember(key, replace(self.state.handled[key], outcome=str(result.outcome)))
        self._ack(key, str(command.name), result.outcome, result.detail, result.output)

    def _problem(self, signed: SignedCommand) -> str | None:
        command = signed.command
        if self.config.host not in command.hosts:
            return f"not addressed to {self.config.host}"
        if command.expires - command.issued > timedelta(seconds=MAX_COMMAND_LIFETIME):
            return f"valid for longer than {MAX_COMMAND_LIFETIME // 86400} days"
        if command.expires <= self.now:
            return f"expired at {format_time(command.expires)}"
        try:
            trust = self.config.commander_trust()
        except (GitopsError, ValueError) as err:
            return f"trusted commanders unusable: {err}"
        if trust is None or not trust.entries:
            return "this host trusts no commander key (trusted_commanders is not set)"
        try:
            verified = signed.verify(trust, self.now)
        except GitopsError as err:
            return f"signature refused: {err}"
        if command.issuer and verified.principal != command.issuer:
            return f"signed by {verified.principal}, but says it was issued by {command.issuer}"
        return None

    def _execute(self, signed: SignedCommand, control: HostControl | None) -> Result:
        command = signed.command
        try:
            match command.name:
                case CommandName.REBOOT | CommandName.POWEROFF:
                    self.state = replace(self.state, power=PowerAction(command.name, command.id))
                    return Result(CommandOutcome.DONE, f"{command.name} after this report")
                case CommandName.GC:
                    out = self.host.collect_garbage()
                    return Result(CommandOutcome.DONE, "garbage collected", out)
                case CommandName.UPDATE_NOW:
                    self.config.trigger_file.touch()
                    return Result(CommandOutcome.DONE, "another cycle requested")
                case CommandName.COLLECT_LOGS:
                    text = self.host.journal(command.units, command.since, command.max_bytes)
                    units = ", ".join(command.units) or "all units"
                    lines = text.count("\n")
                    return Result(
                        CommandOutcome.DONE,
                        f"{lines} lines of {units} from the last {command.since}s",
                        text,
                    )
                case CommandName.RUN_CHECK:
                    return self._run_check(command.check, control)
        except GitopsError as err:
            return Result(CommandOutcome.FAILED, str(err)[:MAX_ACK_DETAIL])

    def _run_check(self, name: str, control: HostControl | None) -> Result:
        spec = None if control is None else control.checks.get(name)
        if spec is None:
            return Result(CommandOutcome.FAILED, f"no check {name!r} in this host's settings")
        ran = process.run(list(spec.command), check=False, timeout=spec.timeout)
        output = (ran.stdout + ran.stderr)[-CHECK_OUTPUT_BYTES:]
        if ran.returncode == 0:
            return Result(CommandOutcome.DONE, f"check {name} passed", output)
        return Result(CommandOutcome.FAILED, f"check {name} failed (exit {ran.returncode})", output)

    # -- bookkeeping -----------------------------------------------------------------

    def _recover_interrupted(self) -> None:
        for key, handled in list(self.state.handled.items()):
            if handled.outcome == RUNNING:
                self._remember(key, replace(handled, outcome=str(CommandOutcome.FAILED)))
                self._ack(
                    key,
                    handled.name,
                    CommandOutcome.FAILED,
                    "interrupted: the agent stopped while it ran; not run again",
                )

    def _refuse(self, key: str, name: str, digest: str, expires: datetime, why: str) -> None:
        log.warning("command %s refused: %s", key, why)
        self._remember(key, Handled(str(CommandOutcome.REFUSED), self.now, expires, digest, name))
        self._ack(key, name, CommandOutcome.REFUSED, why)

    def _remember(self, key: str, handled: Handled) -> None:
        self.state = replace(self.state, handled={**self.state.handled, key: handled})

    def _ack(
        self, key: str, name: str, outcome: CommandOutcome, detail: str, output: str = ""
    ) -> None:
        ack = CommandAck(key, name, outcome, self.now, detail[:MAX_ACK_DETAIL], output)
        self.state = replace(self.state, acks=(*self.state.acks, ack)[-MAX_PENDING_ACKS:])

    def _forget(self, seen: set[str]) -> None:
        """Mark what left the tree; forget what expired more than a day ago."""
        kept = {}
        for key, handled in self.state.handled.items():
            if handled.expires + FORGET_AFTER < self.now and key not in seen:
                continue
            kept[key] = replace(handled, present=key in seen)
        self.state = replace(self.state, handled=kept)
