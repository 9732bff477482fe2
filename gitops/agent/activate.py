"""Build a verified deploy commit and make it the running system, or go back.

Activation is a small transaction, as nixos-rebuild-ng's ``_activate_system`` and comin's
deployer do it: record where we came from → set the system profile → run the system's
``switch-to-configuration`` → check health → keep the new system, or go back to where we
came from and remember the commit as bad.

"Where we came from" (the profile generation, the running system, the units already
failed, the deploy commit applied) is written durably to ``<state_dir>/activation.json``
*before* the profile changes. An agent killed half-way finds it at its next start and
goes back to that recorded generation, not to whatever the profile points at by then
(which may be the new, unhealthy one). A commit interrupted twice is not tried again.

Health has two kinds of answer (see gitops.agent.health). An unhealthy system is rolled
back and its commit remembered as bad. A git remote that stays unreachable after a switch
is ambiguous: the new system may have broken the network, or the network is down. The
agent goes back (never strand a host on a system that may have cut it off) and probes the
remote again: if the old system reaches it, the new one broke it (bad commit); if not,
the network is down, and the commit is not held against anyone and is tried again at the
next cycle.

``boot`` hosts (laptops, kiosks) run a new system only after the next reboot: until then
the record waits (``awaiting-reboot``) and reports say "reboot pending". The first cycle
after the reboot into the new system (booted-system is it) checks its health; if it is
unhealthy, the previous generation becomes the boot default again
(``switch-to-configuration boot``) and the report says so. An unreachable remote alone
does not condemn a boot: a laptop often boots offline; it is checked again next cycle.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, replace
from datetime import datetime
from enum import StrEnum
from pathlib import Path
from typing import Any

import pygit2

from gitops.agent import health, secrets, substitute
from gitops.agent.config import Action, AgentConfig
from gitops.agent.mirror import APPLIED_REF, INCOMING_REF, Mirror
from gitops.agent.state import AgentState, BuildRecord, StateStore, now_text
from gitops.agent.verify import AcceptedDeploy
from gitops.errors import GitopsError
from gitops.protocol import Result, format_time, parse_time
from gitops.system import atomic, nix, transport

log = logging.getLogger(__name__)

RETRY_HINT = "publish a new commit, or run 'gitops agent once --retry'"
MAX_BAD_COMMITS = 50
RECORD_FILE = "activation.json"
# An activation killed this many times (power loss, OOM, a system that kills its agent)
# is not tried again: the next kill may be the new system's doing.
MAX_INTERRUPTED = 2


@dataclass
class Outcome:
    """What one cycle did: the result and reason its report carries."""

    result: Result
    reason: str
    seen: pygit2.Oid | None = None
    log_tail: str = ""
    durations: dict[str, float] = field(default_factory=dict)
    changes: tuple[str, ...] = ()  # what the switch changed (nix store diff-closures)
    reboot_pending: bool = False  # applied with action boot, not booted into yet


@dataclass(frozen=True)
class Origin:
    """Where an activation came from: what going back returns to."""

    generation: nix.Generation | None  # the system profile's generation before
    running: Path | None  # /run/current-system before (``test`` makes no generation)
    failed_units: frozenset[str] | None  # units failed before: not the new system's fault
    applied: str | None  # the deploy commit applied before, and its source and system
    applied_source: str | None
    applied_store_path: str | None

    def to_dict(self) -> dict[str, Any]:
        generation = self.generation
        return {
            "generation": None
            if generation is None
            else {"number": generation.number, "path": str(generation.path)},
            "running": None if self.running is None else str(self.running),
            "failed_units": None if self.failed_units is None else sorted(self.failed_units),
            "applied": self.applied,
            "applied_source": self.applied_source,
            "applied_store_path": self.applied_store_path,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any], profile: Path) -> Origin:
        generation = data["generation"]
        units = data["failed_units"]
        return cls(
            generation=None
            if generation is None
            else nix.Generation(
                int(generation["number"]),
                Path(generation["path"]),
                profile.with_name(f"{profile.name}-{int(generation['number'])}-link"),
            ),
            running=None if data["running"] is None else Path(data["running"]),
            failed_units=None if units is None else frozenset(map(str, units)),
            applied=_optional_str(data["applied"]),
            applied_source=_optional_str(data["applied_source"]),
            applied_store_path=_optional_str(data["applied_store_path"]),
        )


class Phase(StrEnum):
    ACTIVATING = "activating"  # written before the profile changes; found at start: killed
    AWAITING_REBOOT = "awaiting-reboot"  # ``boot``: health is checked after the reboot


@dataclass(frozen=True)
class ActivationRecord:
    """An activation under way, kept in ``<state_dir>/activation.json``."""

    phase: Phase
    commit: str  # the deploy commit being activated
    system: Path  # its store path
    action: Action
    origin: Origin
    started: datetime
    attempt: int = 1  # how many times this commit's activation was started in a row

    def to_json(self) -> str:
        data = asdict(self)
        data.update(
            phase=str(self.phase),
            system=str(self.system),
            action=str(self.action),
            origin=self.origin.to_dict(),
            started=format_time(self.started),
        )
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @classmethod
    def from_json(cls, text: str, profile: Path) -> ActivationRecord:
        data = json.loads(text)
        return cls(
            phase=Phase(data["phase"]),
            commit=str(data["commit"]),
            system=Path(data["system"]),
            action=Action(data["action"]),
            origin=Origin.from_dict(data["origin"], profile),
            started=parse_time(data["started"]),
            attempt=int(data["attempt"]),
        )


def _optional_str(value: object) -> str | None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"expected a string, not {value!r}")
    return value


class Deployer:
    """Builds and activates verified deploy commits, and finishes what a killed or
    rebooted agent left under way."""

    def __init__(
        self,
        config: AgentConfig,
        store: StateStore,
        credentials: transport.Credentials,
        *,
        retry: bool,
        sleep: Callable[[float], None],
        clock: Callable[[], datetime],
        durations: dict[str, float],
    ) -> None:
        self.config = config
        self.store = store
        self.remote = health.Remote(config.remote, config.host, credentials)
        self.retry = retry
        self.sleep = sleep
        self.clock = clock
        self.durations = durations
        self.record_path = config.state_dir / RECORD_FILE
        self.state = AgentState(host=config.host)
        self._mirror: Mirror | None = None
        self._record: ActivationRecord | None = None  # what activation.json says
        self._interrupted: ActivationRecord | None = None  # undone at the start of this cycle
        self._notes: list[str] = []  # what happened before this cycle's own work
        self._booted_healthy: str | None = None  # a boot confirmed healthy this cycle

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            raise RuntimeError("the mirror is set by recover() or deploy()")
        return self._mirror

    # -- the cycle's entry points ---------------------------------------------------------

    def recover(self, mirror: Mirror, state: AgentState) -> tuple[Outcome | None, AgentState]:
        """Finish what a previous cycle left under way: go back from an activation that
        was killed, or check a boot-mode system after its reboot. An outcome ends the
        cycle (it is what the report must say); None lets the cycle go on."""
        self._mirror, self.state = mirror, state
        self._record = self._load_record()
        record = self._record
        if record is None:
            return None, self.state
        if record.phase == Phase.ACTIVATING:
            return self._recover_interrupted(record), self.state
        return self._check_after_reboot(record), self.state

    def deploy(
        self, mirror: Mirror, state: AgentState, head: pygit2.Oid, accepted: AcceptedDeploy
    ) -> tuple[Outcome, AgentState]:
        """Build ``head`` and make it the running system; the outcome and the new state."""
        self._mirror, self.state = mirror, state
        outcome = self._build_and_activate(head, accepted)
        return outcome, self.state

    def explain(self, outcome: Outcome) -> Outcome:
        """The cycle's outcome with what this deployer knows on top: a reboot still
        pending, a boot found healthy, an interrupted activation undone first."""
        record = self._record
        if record is not None and record.phase == Phase.AWAITING_REBOOT:
            outcome = self._pending(outcome, record)
        elif self._booted_healthy and outcome.result == Result.UNCHANGED:
            outcome = replace(outcome, result=Result.APPLIED, reason=self._booted_healthy)
        if self._notes:
            outcome = replace(outcome, reason=f"{outcome.reason} ({'; '.join(self._notes)})")
        return outcome

    def _pending(self, outcome: Outcome, record: ActivationRecord) -> Outcome:
        """Until the reboot a boot deploy is applied, with "reboot pending" for a reason
        (a failure meanwhile, e.g. an offline laptop, says what failed)."""
        if outcome.result != Result.UNCHANGED:
            return replace(outcome, reboot_pending=True)
        since = format_time(record.started)
        return replace(
            outcome,
            result=Result.APPLIED,
            reason=f"deploy {record.commit[:8]} will run after the next reboot "
            f"(reboot pending since {since})",
            reboot_pending=True,
        )

    # -- state -----------------------------------------------------------------------

    def _save(self, state: AgentState) -> None:
        self.state = state
        self.store.save(state)

    def _load_record(self) -> ActivationRecord | None:
        try:
            text = self.record_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as err:
            raise GitopsError(f"{self.record_path}: cannot read ({err.strerror})") from err
        try:
            return ActivationRecord.from_json(text, self.config.system_profile)
        except (ValueError, TypeError, KeyError, AttributeError) as err:
            raise GitopsError(
                f"{self.record_path}: the record of an activation under way is corrupt "
                f"({err}); refusing to run, because going back would not know where to. "
                "Check the system profile (nix-env -p /nix/var/nix/profiles/system "
                "--list-generations), then remove the file"
            ) from err

    def _write_record(self, record: ActivationRecord | None) -> None:
        """Durably, before the step it guards (atomic write, fsync)."""
        self._record = record
        if record is None:
            with contextlib.suppress(FileNotFoundError):
                self.record_path.unlink()
            return
        self.record_path.parent.mkdir(parents=True, exist_ok=True)
        atomic.write_text(self.record_path, record.to_json(), mode=0o600)

    @contextlib.contextmanager
    def _timed(self, name: str) -> Iterator[None]:
        started = time.monotonic()
        try:
            yield
        finally:
            spent = time.monotonic() - started
            self.durations[name] = round(self.durations.get(name, 0) + spent, 3)

    # -- build -----------------------------------------------------------------------

    def _build_and_activate(self, head: pygit2.Oid, accepted: AcceptedDeploy) -> Outcome:
        record = self.state.build(str(head))
        if record is not None and not record.ok and not self.retry and not self._retry_due(record):
            return Outcome(
                Result.BUILD_FAILED,
                f"{record.reason} (not retried yet; {RETRY_HINT})",
                head,
                record.log_tail,
            )
        self.mirror.put_tree_in_place(head)
        built = _built_before(record)
        if built is not None:
            return self._activate(head, accepted, built)  # nothing is built twice
        system = self._substitute(head)  # the pinned system from the caches (substitute.py)
        if system is None:
            system = self._build(head)
        if isinstance(system, Outcome):
            return system
        return self._activate(head, accepted, system)

    def _substitute(self, head: pygit2.Oid) -> Path | Outcome | None:
        """The system the head pins, fetched; an outcome when it may not be built here
        instead; None: build it here."""
        started = time.monotonic()
        got = substitute.fetch(self.config, self.mirror.repo, head)
        if got is not None:  # timed only when it was tried
            self.durations["substitute"] = round(time.monotonic() - started, 3)
        match got:
            case None:
                return None
            case substitute.Fetched(system):
                self._save(
                    self.state.with_build(
                        BuildRecord(str(head), True, store_path=str(system), time=self._now())
                    )
                )
                return system
            case substitute.Refused(reason, _, fallback=True):
                log.warning("%s; building it here instead (mode: auto)", reason)
                self._notes.append(f"{reason}; built here instead")
                return None
            case substitute.Refused(reason, tail):
                return Outcome(Result.SUBSTITUTE_FAILED, reason, head, tail)

    def _build(self, head: pygit2.Oid) -> Path | Outcome:
        flake = f"git+file://{self.mirror.path}?ref={INCOMING_REF}&rev={head}"
        log.info("building deploy %s", str(head)[:8])
        try:
            with self._timed("build"):
                system = nix.build_flake(
                    flake,
                    nix.toplevel_attr(self.config.host),
                    extra_args=self.config.build_args,
                    timeout=self.config.build_timeout,
                )
        except nix.BuildError as err:
            failed = BuildRecord(
                str(head), False, reason=str(err), log_tail=err.log_tail, time=self._now()
            )
            self._save(self.state.with_build(failed))
            return Outcome(
                Result.BUILD_FAILED, f"deploy {str(head)[:8]}: {err}", head, err.log_tail
            )
        built = BuildRecord(str(head), True, store_path=str(system), time=self._now())
        self._save(self.state.with_build(built))
        return system

    def _retry_due(self, record: BuildRecord) -> bool:
        """A failed build is tried again after build_retry_interval (0: never)."""
        interval = self.config.build_retry_interval
        if not interval or record.time is None:
            return False
        return (self.clock() - datetime.fromisoformat(record.time)).total_seconds() >= interval

    def _now(self) -> str:
        return now_text(self.clock())

    # -- activate --------------------------------------------------------------------

    def _origin(self) -> Origin:
        """Where we are now; but while a boot awaits its reboot, where *that* came from:
        the last system known to be good."""
        if self._record is not None:
            return self._record.origin
        config = self.config
        units = health.failed_units(config.root) if config.health.failed_units else None
        return Origin(
            generation=self._known_good_generation(),
            running=_readlink(config.root / "run" / "current-system"),
            failed_units=None if units is None else frozenset(units),
            applied=self.state.applied,
            applied_source=self.state.applied_source,
            applied_store_path=self.state.applied_store_path,
        )

    def _known_good_generation(self) -> nix.Generation | None:
        """The profile's generation; but if it is not the system last applied and kept
        (something moved the profile without finishing: an agent killed before it kept a
        record, a hand-made switch), the newest generation of that system."""
        profile = self.config.system_profile
        current = nix.current_generation(profile)
        applied = self.state.applied_store_path
        if current is None or applied is None or str(current.path) == applied:
            return current
        good = [g for g in nix.generations(profile) if str(g.path) == applied]
        if not good:
            return current
        log.warning(
            "the profile points at generation %d, not at the applied system (generation %d): "
            "going back, if needed, goes to %d",
            current.number,
            good[-1].number,
            good[-1].number,
        )
        return good[-1]

    def _activate(self, head: pygit2.Oid, accepted: AcceptedDeploy, system: Path) -> Outcome:
        config = self.config
        short = str(head)[:8]
        origin = self._origin()
        interrupted = self._interrupted
        attempt = interrupted.attempt + 1 if interrupted and interrupted.commit == str(head) else 1
        record = ActivationRecord(
            Phase.ACTIVATING, str(head), system, config.action, origin, self.clock(), attempt
        )
        try:  # before the switch, so that the new system's services find them
            installed = secrets.install(
                self.mirror.repo, head, config.secrets_dir, config.signing_key
            )
        except secrets.SecretsError as err:
            return Outcome(Result.SWITCH_FAILED, f"deploy {short}: {err}; nothing changed", head)
        self._write_record(record)  # before the profile changes: going back knows where to
        log.info("activating deploy %s (%s)", short, config.action)
        try:
            with self._timed("activate"):
                self._set_profile(system)
                nix.switch_to_configuration(
                    system, str(config.action), timeout=config.activation_timeout
                )
            secrets.settle(installed)  # owners the new system just created
        except nix.ActivationError as err:
            back = self._go_back(origin, system, config.action)
            self._mark_bad(head)
            self._write_record(None)
            return Outcome(
                Result.SWITCH_FAILED, f"deploy {short}: {err}; {back}", head, err.log_tail
            )
        if config.action == Action.BOOT:
            self._write_record(replace(record, phase=Phase.AWAITING_REBOOT))
            return self._keep(head, accepted, system, origin)
        return self._judge(head, accepted, system, origin)

    def _set_profile(self, system: Path) -> None:
        """A new generation for ``switch`` and ``boot``, unless the profile has it already."""
        config = self.config
        if config.action == Action.TEST:
            return
        current = nix.current_generation(config.system_profile)
        if current is None or current.path != system:
            nix.set_profile(config.system_profile, system)

    def _judge(
        self, head: pygit2.Oid, accepted: AcceptedDeploy, system: Path, origin: Origin
    ) -> Outcome:
        """Keep a healthy system; go back from an unhealthy one (and from one after which
        the remote stays unreachable, see the module's docstring)."""
        short = str(head)[:8]
        verdict = self._check_health(origin)
        if verdict.problems:
            back = self._go_back(origin, system, self.config.action)
            self._mark_bad(head)
            self._write_record(None)
            return Outcome(
                Result.ROLLED_BACK,
                f"deploy {short} was unhealthy: {'; '.join(verdict.problems)}; {back}",
                head,
            )
        if verdict.unreachable is not None:
            return self._unreachable(head, system, origin, verdict.unreachable)
        return self._keep(head, accepted, system, origin)

    def _check_health(self, origin: Origin) -> health.HealthResult:
        config = self.config
        log.info("checking health")
        with self._timed("health"):
            return health.check(
                config.health,
                root=config.root,
                remote=self.remote,
                failed_before=set(origin.failed_units) if origin.failed_units is not None else None,
                sleep=self.sleep,
            )

    def _unreachable(self, head: pygit2.Oid, system: Path, origin: Origin, why: str) -> Outcome:
        """The remote stayed unreachable after the switch: go back, then ask whether the
        old system reaches it (the new one broke the network) or not (the network is down)."""
        short = str(head)[:8]
        back = self._go_back(origin, system, self.config.action)
        self._write_record(None)
        grace = self.config.health.remote_grace
        if health.unreachable_for(grace, self.remote, self.sleep) is None:
            self._mark_bad(head)
            return Outcome(
                Result.ROLLED_BACK,
                f"deploy {short} cut this host off the git remote ({why}), and going back "
                f"restored it; {back}",
                head,
            )
        return Outcome(
            Result.ROLLED_BACK,
            f"the git remote stayed unreachable after switching to deploy {short} ({why}) "
            f"and still is after going back: a network problem, not held against the deploy, "
            f"which is tried again at the next cycle; {back}",
            head,
        )

    def _keep(
        self, head: pygit2.Oid, accepted: AcceptedDeploy, system: Path, origin: Origin
    ) -> Outcome:
        """The new system stays: record it as applied, tidy up, say what happened."""
        config = self.config
        before = origin.running if config.action == Action.TEST else _path(origin.generation)
        changes = tuple(nix.diff_closures(before, system)) if before and before != system else ()
        self._save(
            replace(
                self.state,
                applied=str(head),
                applied_source=accepted.source_commit,
                applied_store_path=str(system),
                bootstrapped=self.state.bootstrapped
                or ("first-use" if accepted.first_use else "pinned" if config.min_commit else ""),
            )
        )
        if config.action != Action.BOOT:
            self._write_record(None)  # after the state: a kill in between is not undone
        self.mirror.set_ref(APPLIED_REF, head, "applied")
        self.mirror.delete_ref(INCOMING_REF)
        self.mirror.prune_trees({str(head)})
        self._prune_generations()
        verb = {
            Action.SWITCH: "switched to",
            Action.BOOT: "will boot",
            Action.TEST: "testing",
        }[config.action]
        source = f" (main {accepted.source_commit[:8]})" if accepted.source_commit else ""
        first = "; trusted on first use" if accepted.first_use else ""
        pending = "; reboot pending" if config.action == Action.BOOT else ""
        return Outcome(
            Result.APPLIED,
            f"{verb} deploy {str(head)[:8]}{source}, signed by {accepted.principal}{first}"
            f"{pending}",
            head,
            changes=changes,
        )

    def _prune_generations(self) -> None:
        config = self.config
        if not config.keep_generations or config.action == Action.TEST:
            return
        keep = config.keep_generations
        if self._record is not None and self._record.origin.generation is not None:
            # The generation a pending boot would go back to must survive.
            current = nix.current_generation(config.system_profile)
            if current is not None:
                keep = max(keep, current.number - self._record.origin.generation.number + 1)
        try:
            nix.keep_last_generations(config.system_profile, keep)
        except GitopsError as err:  # retention must never fail a good switch
            log.warning("could not prune old generations: %s", err)

    # -- going back ------------------------------------------------------------------

    def _go_back(self, origin: Origin, system: Path, action: Action) -> str:
        """Return to where we came from, wherever the profile points now; a sentence
        saying what happened. Safe to repeat (a killed agent repeats it)."""
        log.warning("going back to the previous system")
        try:
            with self._timed("go-back"):
                return self._return_to(origin, system, action)
        except GitopsError as err:
            log.error("going back to the previous system failed: %s", err)
            return f"going back to the previous system FAILED too: {err}"

    def _return_to(self, origin: Origin, system: Path, action: Action) -> str:
        config = self.config
        timeout = config.activation_timeout
        if action == Action.TEST:
            if origin.running is None:
                return "no previous system to go back to"
            nix.switch_to_configuration(origin.running, "test", timeout=timeout)
            return f"went back to {origin.running.name}"
        previous = origin.generation
        if previous is None:
            return "no previous generation to go back to"
        generations = nix.generations(config.system_profile)
        if not any(g.number == previous.number for g in generations):
            return f"generation {previous.number} to go back to is gone"
        current = nix.current_generation(config.system_profile)
        if current is None or current.number != previous.number:
            nix.switch_generation(config.system_profile, previous.number)
        nix.delete_generations(
            config.system_profile,
            [g.number for g in generations if g.path == system and g.number > previous.number],
        )
        nix.switch_to_configuration(previous.path, str(action), timeout=timeout)
        if action == Action.BOOT:
            return f"generation {previous.number} is the boot default again"
        return f"went back to generation {previous.number}"

    def _mark_bad(self, head: pygit2.Oid | str) -> None:
        """Activated and went back: not retried until a new commit or --retry."""
        bad = (*[c for c in self.state.bad_commits if c != str(head)], str(head))
        self._save(replace(self.state, bad_commits=bad[-MAX_BAD_COMMITS:]))

    # -- finishing what a previous cycle left ---------------------------------------------

    def _recover_interrupted(self, record: ActivationRecord) -> Outcome | None:
        """The agent was killed while activating: go back to the recorded origin. The
        commit is tried again once; interrupted twice, it is not."""
        short = record.commit[:8]
        if self.state.applied == record.commit:
            self._write_record(None)  # killed after it was kept: nothing to undo
            return None
        log.warning("an activation of deploy %s was interrupted: going back", short)
        back = self._go_back(record.origin, record.system, record.action)
        self._write_record(None)
        started = format_time(record.started)
        if record.attempt >= MAX_INTERRUPTED:
            self._mark_bad(record.commit)
            return Outcome(
                Result.ROLLED_BACK,
                f"the agent was interrupted {record.attempt} times while activating deploy "
                f"{short} (last at {started}); {back}; not retried ({RETRY_HINT})",
                pygit2.Oid(hex=record.commit),
            )
        self._interrupted = record
        self._notes.append(
            f"before that, an activation of deploy {short} interrupted at {started} was "
            f"undone: {back}"
        )
        return None

    def _check_after_reboot(self, record: ActivationRecord) -> Outcome | None:
        """A ``boot`` activation: once the machine runs the new system, check its health."""
        booted = _readlink(self.config.root / "run" / "booted-system")
        if booted != record.system:
            return None  # not rebooted yet: explain() says "reboot pending"
        short = record.commit[:8]
        verdict = self._check_health(record.origin)
        if verdict.problems:
            return self._boot_unhealthy(record, verdict.problems)
        if verdict.unreachable is not None:
            self._notes.append(
                f"the git remote has been unreachable since the reboot into deploy {short} "
                f"({verdict.unreachable}); checked again at the next cycle"
            )
            return None
        self._write_record(None)
        self._booted_healthy = f"booted into deploy {short}: healthy after the reboot"
        return None

    def _boot_unhealthy(self, record: ActivationRecord, problems: tuple[str, ...]) -> Outcome:
        """Make the previous generation the boot default again, and the deploy commit it
        ran the applied one again (the running system is what the next boot brings back)."""
        origin = record.origin
        back = self._go_back(origin, record.system, Action.BOOT)
        self._mark_bad(record.commit)
        if origin.generation is not None:
            self._save(
                replace(
                    self.state,
                    applied=origin.applied,
                    applied_source=origin.applied_source,
                    applied_store_path=origin.applied_store_path,
                )
            )
            if origin.applied is not None:
                self.mirror.set_ref(APPLIED_REF, pygit2.Oid(hex=origin.applied), "went back")
        self._write_record(None)
        return Outcome(
            Result.ROLLED_BACK,
            f"deploy {record.commit[:8]} was unhealthy after the reboot: {'; '.join(problems)}; "
            f"{back}: reboot to return to it",
            pygit2.Oid(hex=record.commit),
        )


def _built_before(record: BuildRecord | None) -> Path | None:
    """The system built for this commit before, if it is still in the store."""
    if record is None or not record.ok or not record.store_path:
        return None
    path = Path(record.store_path)
    return path if path.exists() else None


def _path(generation: nix.Generation | None) -> Path | None:
    return generation.path if generation is not None else None


def _readlink(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True) if path.is_symlink() else None
    except OSError:
        return None
