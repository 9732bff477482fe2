"""Build a verified deploy commit and make it the running system, or go back.

Activation is a small transaction, as nixos-rebuild-ng's ``_activate_system`` and comin's
deployer do it: note where we came from → set the system profile → run the system's
``switch-to-configuration`` → check health → keep the new system, or go back to where we
came from and remember the commit as bad.

The deployer owns what it writes to the agent's state while it works (build records, bad
commits, the applied commit) and hands the new state back to the cycle.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path

import pygit2

from gitops.agent import health
from gitops.agent.config import Action, AgentConfig
from gitops.agent.mirror import APPLIED_REF, INCOMING_REF, Mirror
from gitops.agent.state import AgentState, BuildRecord, StateStore, now_text
from gitops.agent.verify import AcceptedDeploy
from gitops.errors import GitopsError
from gitops.protocol import Result
from gitops.system import nix, transport

log = logging.getLogger(__name__)

RETRY_HINT = "publish a new commit, or run 'gitops agent once --retry'"
MAX_BAD_COMMITS = 50


@dataclass
class Outcome:
    """What one cycle did: the result and reason its report carries."""

    result: Result
    reason: str
    seen: pygit2.Oid | None = None
    log_tail: str = ""
    durations: dict[str, float] = field(default_factory=dict)
    changes: tuple[str, ...] = ()  # what the switch changed (nix store diff-closures)


@dataclass(frozen=True)
class Origin:
    """Where an activation came from: what going back returns to."""

    generation: nix.Generation | None  # the system profile's generation before
    running: Path | None  # /run/current-system before (``test`` makes no generation)
    failed_units: set[str] | None  # units failed before: not the new system's fault


class Deployer:
    """Builds and activates one verified deploy commit per cycle."""

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
        self.credentials = credentials
        self.retry = retry
        self.sleep = sleep
        self.clock = clock
        self.durations = durations
        self.state = AgentState(host=config.host)
        self._mirror: Mirror | None = None

    @property
    def mirror(self) -> Mirror:
        if self._mirror is None:
            raise RuntimeError("the mirror is set by deploy()")
        return self._mirror

    def deploy(
        self, mirror: Mirror, state: AgentState, head: pygit2.Oid, accepted: AcceptedDeploy
    ) -> tuple[Outcome, AgentState]:
        """Build ``head`` and make it the running system; the outcome and the new state."""
        self._mirror, self.state = mirror, state
        outcome = self._build_and_activate(head, accepted)
        return outcome, self.state

    # -- state -----------------------------------------------------------------------

    def _save(self, state: AgentState) -> None:
        self.state = state
        self.store.save(state)

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
        system = self._build(head)
        if isinstance(system, Outcome):
            return system
        return self._activate(head, accepted, system)

    def _build(self, head: pygit2.Oid) -> Path | Outcome:
        flake = f"git+file://{self.mirror.path}?ref={INCOMING_REF}&rev={head}"
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
        config = self.config
        return Origin(
            generation=nix.current_generation(config.system_profile),
            running=_readlink(config.root / "run" / "current-system"),
            failed_units=health.failed_units(config.root) if config.health.failed_units else None,
        )

    def _activate(self, head: pygit2.Oid, accepted: AcceptedDeploy, system: Path) -> Outcome:
        config = self.config
        short = str(head)[:8]
        origin = self._origin()
        new_generation = origin.generation
        try:
            with self._timed("activate"):
                if config.action in (Action.SWITCH, Action.BOOT) and (
                    origin.generation is None or origin.generation.path != system
                ):
                    new_generation = nix.set_profile(config.system_profile, system)
                nix.switch_to_configuration(
                    system, str(config.action), timeout=config.activation_timeout
                )
        except nix.ActivationError as err:
            back = self._go_back(origin, new_generation)
            self._mark_bad(head)
            return Outcome(
                Result.SWITCH_FAILED, f"deploy {short}: {err}; {back}", head, err.log_tail
            )
        problems = self._check_health(origin)
        if problems:
            back = self._go_back(origin, new_generation)
            self._mark_bad(head)
            return Outcome(
                Result.ROLLED_BACK,
                f"deploy {short} was unhealthy: {'; '.join(problems)}; {back}",
                head,
            )
        return self._keep(head, accepted, system, origin)

    def _check_health(self, origin: Origin) -> tuple[str, ...]:
        """What is wrong with the new system; nothing for ``boot``, which is not running."""
        config = self.config
        if config.action not in (Action.SWITCH, Action.TEST):
            return ()
        with self._timed("health"):
            verdict = health.check(
                config.health,
                root=config.root,
                remote=config.remote,
                host=config.host,
                credentials=self.credentials,
                failed_before=origin.failed_units,
                sleep=self.sleep,
            )
        return verdict.problems

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
        self.mirror.set_ref(APPLIED_REF, head, "applied")
        self.mirror.delete_ref(INCOMING_REF)
        self.mirror.prune_trees({str(head)})
        self._prune_generations()
        verb = {Action.SWITCH: "switched to", Action.BOOT: "will boot", Action.TEST: "testing"}[
            config.action
        ]
        source = f" (main {accepted.source_commit[:8]})" if accepted.source_commit else ""
        first = "; trusted on first use" if accepted.first_use else ""
        return Outcome(
            Result.APPLIED,
            f"{verb} deploy {str(head)[:8]}{source}, signed by {accepted.principal}{first}",
            head,
            changes=changes,
        )

    def _prune_generations(self) -> None:
        config = self.config
        if not config.keep_generations or config.action == Action.TEST:
            return
        try:
            nix.keep_last_generations(config.system_profile, config.keep_generations)
        except GitopsError as err:  # retention must never fail a good switch
            log.warning("could not prune old generations: %s", err)

    # -- going back ------------------------------------------------------------------

    def _go_back(self, origin: Origin, new_generation: nix.Generation | None) -> str:
        """Return to the system that ran before; a sentence saying what happened."""
        config = self.config
        try:
            if config.action == Action.TEST:
                if origin.running is None:
                    return "no previous system to go back to"
                nix.switch_to_configuration(
                    origin.running, "test", timeout=config.activation_timeout
                )
                return f"went back to {origin.running.name}"
            previous = origin.generation
            if previous is None:
                return "no previous generation to go back to"
            if new_generation is not None and new_generation.number != previous.number:
                nix.switch_generation(config.system_profile, previous.number)
                nix.delete_generations(config.system_profile, [new_generation.number])
            nix.switch_to_configuration(
                previous.path, str(config.action), timeout=config.activation_timeout
            )
            return f"went back to generation {previous.number}"
        except GitopsError as err:
            log.error("going back to the previous system failed: %s", err)
            return f"going back to the previous system FAILED too: {err}"

    def _mark_bad(self, head: pygit2.Oid) -> None:
        """Activated and went back: not retried until a new commit or --retry."""
        bad = (*[c for c in self.state.bad_commits if c != str(head)], str(head))
        self._save(replace(self.state, bad_commits=bad[-MAX_BAD_COMMITS:]))


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
