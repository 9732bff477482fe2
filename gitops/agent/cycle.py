"""One agent cycle (DESIGN.md "The agent's cycle"):

fetch ``deploy/<host>`` → verify → put the tree in place → ``nix build`` → set the profile
and ``switch-to-configuration`` → check health, going back if unhealthy → save state →
commit a signed report → push it.

Order matters for crash safety: state is saved only after activation succeeded, the
report is committed locally before any push, and every write is atomic. A cycle killed
at any point is redone correctly by the next one (a build already done is reused, a
profile already pointing at the system gets no new generation).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from gitops import __version__
from gitops.agent import facts, health, sbom
from gitops.agent.config import Action, AgentConfig
from gitops.agent.mirror import APPLIED_REF, INCOMING_REF, Mirror
from gitops.agent.reporter import PushOutcome, Reporter
from gitops.agent.state import AgentState, BuildRecord, StateStore, now_text
from gitops.agent.verify import AcceptedDeploy, RejectedError, check_deploy_head
from gitops.errors import GitopsError
from gitops.protocol import Report, Result
from gitops.system import nix, transport
from gitops.trust import keys

log = logging.getLogger(__name__)

RETRY_HINT = "publish a new commit, or run 'gitops agent once --retry'"


@dataclass(frozen=True)
class CycleResult:
    result: Result
    reason: str
    deploy_seen: str | None
    report: Report | None  # the report written this cycle, if any
    push: PushOutcome | None


@dataclass
class _Outcome:
    result: Result
    reason: str
    seen: pygit2.Oid | None = None
    log_tail: str = ""
    durations: dict[str, float] = field(default_factory=dict)


class Cycle:
    def __init__(
        self,
        config: AgentConfig,
        *,
        force_report: bool = False,
        retry: bool = False,
        health_sleep: bool = True,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.force_report = force_report
        self.retry = retry
        self.health_sleep = health_sleep
        self.clock = clock
        self.store = StateStore(config.state_dir)
        self.env = transport.Credentials(
            ssh_key=config.ssh_key,
            known_hosts=config.known_hosts,
            http_token_file=config.http_token_file,
            http_username=config.http_username,
        ).env()
        self.durations: dict[str, float] = {}
        self.changes: tuple[str, ...] = ()  # what the switch changed, for the report

    # -- the cycle -------------------------------------------------------------------

    def run(self) -> CycleResult:
        with self.store.locked():
            started = time.monotonic()
            key = keys.load_signing_key(self.config.signing_key)
            self.mirror = Mirror(self.config.state_dir, self.config.host)
            self.state = self._load_state()
            outcome = self._apply()
            self.durations["total"] = round(time.monotonic() - started, 3)
            outcome.durations = dict(self.durations)
            return self._finish(outcome, Reporter(self.mirror, key, self.config.remote, self.env))

    def _load_state(self) -> AgentState:
        state = self.store.load(self.config.host)
        if state is not None:
            return state
        if self.mirror.target(APPLIED_REF) is not None:
            raise GitopsError(
                f"{self.store.path} is missing but this host has applied deploy commits before "
                f"({APPLIED_REF} in {self.mirror.path}); refusing to run, because the "
                "anti-rollback floor is lost. Restore the state file, or pin min_commit and "
                "remove the state directory to re-enroll (see docs/operations.md)"
            )
        return AgentState(host=self.config.host)

    def _timed(self, name: str, started: float) -> None:
        self.durations[name] = round(self.durations.get(name, 0) + time.monotonic() - started, 3)

    def _apply(self) -> _Outcome:
        config = self.config
        started = time.monotonic()
        try:
            head = self.mirror.fetch_deploy(config.remote, self.env)
        except GitopsError as err:
            return _Outcome(Result.FETCH_FAILED, f"cannot fetch deploy/{config.host}: {err}")
        finally:
            self._timed("fetch", started)
        if head is None:
            return _Outcome(
                Result.UNCHANGED,
                f"nothing is published for {config.host} yet (no deploy/{config.host})",
            )
        if str(head) == self.state.applied:
            return _Outcome(Result.UNCHANGED, f"up to date with deploy {str(head)[:8]}", head)
        started = time.monotonic()
        try:
            accepted = check_deploy_head(
                self.mirror.repo,
                head,
                host=config.host,
                trust=config.publisher_trust(),
                applied=self.state.applied,
                now=self.clock(),
                min_commit=config.min_commit,
                max_age=config.max_age,
                trust_on_first_use=config.trust_on_first_use,
            )
        except RejectedError as err:
            self.mirror.delete_ref(INCOMING_REF)
            return _Outcome(Result.REJECTED, str(err), head)
        finally:
            self._timed("verify", started)
        if str(head) in self.state.bad_commits and not self.retry:
            return _Outcome(
                Result.ROLLED_BACK,
                f"deploy {str(head)[:8]} was rolled back before and is not retried; {RETRY_HINT}",
                head,
            )
        return self._build_and_activate(head, accepted)

    def _build_and_activate(self, head: pygit2.Oid, accepted: AcceptedDeploy) -> _Outcome:
        config = self.config
        short = str(head)[:8]
        record = self.state.build(str(head))
        if record is not None and not record.ok and not self.retry and not self._retry_due(record):
            return _Outcome(
                Result.BUILD_FAILED,
                f"{record.reason} (not retried yet; {RETRY_HINT})",
                head,
                record.log_tail,
            )
        self.mirror.put_tree_in_place(head)
        if (
            record is not None
            and record.ok
            and record.store_path
            and Path(record.store_path).exists()
        ):
            system = Path(record.store_path)  # built before: nothing is built twice
        else:
            started = time.monotonic()
            try:
                system = nix.build_flake(
                    f"git+file://{self.mirror.path}?ref={INCOMING_REF}&rev={head}",
                    nix.toplevel_attr(config.host),
                    extra_args=config.build_args,
                )
            except nix.BuildError as err:
                self.state = self.state.with_build(
                    BuildRecord(
                        str(head),
                        False,
                        reason=str(err),
                        log_tail=err.log_tail,
                        time=now_text(self.clock()),
                    )
                )
                self.store.save(self.state)
                return _Outcome(Result.BUILD_FAILED, f"deploy {short}: {err}", head, err.log_tail)
            finally:
                self._timed("build", started)
            self.state = self.state.with_build(
                BuildRecord(str(head), True, store_path=str(system), time=now_text(self.clock()))
            )
            self.store.save(self.state)
        return self._activate(head, accepted, system)

    def _retry_due(self, record: BuildRecord) -> bool:
        """A failed build is tried again after build_retry_interval (0: never)."""
        interval = self.config.build_retry_interval
        if not interval or record.time is None:
            return False
        return (self.clock() - datetime.fromisoformat(record.time)).total_seconds() >= interval

    def _activate(self, head: pygit2.Oid, accepted: AcceptedDeploy, system: Path) -> _Outcome:
        config = self.config
        short = str(head)[:8]
        failed_before = health.failed_units(config.root) if config.health.failed_units else None
        previous = nix.current_generation(config.system_profile)
        previous_running = _readlink(config.root / "run" / "current-system")
        new_generation = previous
        started = time.monotonic()
        try:
            if config.action in (Action.SWITCH, Action.BOOT) and (
                previous is None or previous.path != system
            ):
                new_generation = nix.set_profile(config.system_profile, system)
            nix.switch_to_configuration(system, str(config.action))
        except nix.ActivationError as err:
            back = self._go_back(previous, new_generation, previous_running)
            self._mark_bad(head)
            return _Outcome(
                Result.SWITCH_FAILED, f"deploy {short}: {err}; {back}", head, err.log_tail
            )
        finally:
            self._timed("activate", started)
        if config.action in (Action.SWITCH, Action.TEST):
            started = time.monotonic()
            verdict = health.check(
                config.health,
                root=config.root,
                remote=config.remote,
                host=config.host,
                env=self.env,
                failed_before=failed_before,
                sleep=self.health_sleep,
            )
            self._timed("health", started)
            if not verdict.healthy:
                back = self._go_back(previous, new_generation, previous_running)
                self._mark_bad(head)
                return _Outcome(
                    Result.ROLLED_BACK,
                    f"deploy {short} was unhealthy: {'; '.join(verdict.problems)}; {back}",
                    head,
                )
        before = (
            previous_running
            if config.action == Action.TEST
            else previous.path
            if previous
            else None
        )
        self.changes = (
            tuple(nix.diff_closures(before, system)) if before and before != system else ()
        )
        self.state = replace(
            self.state,
            applied=str(head),
            applied_source=accepted.source_commit,
            applied_store_path=str(system),
            bootstrapped=self.state.bootstrapped
            or ("first-use" if accepted.first_use else "pinned" if config.min_commit else ""),
        )
        self.store.save(self.state)
        self.mirror.set_ref(APPLIED_REF, head, "applied")
        self.mirror.delete_ref(INCOMING_REF)
        self.mirror.prune_trees({str(head)})
        if config.keep_generations and config.action != Action.TEST:
            try:
                nix.keep_last_generations(config.system_profile, config.keep_generations)
            except GitopsError as err:  # retention must never fail a good switch
                log.warning("could not prune old generations: %s", err)
        verb = {Action.SWITCH: "switched to", Action.BOOT: "will boot", Action.TEST: "testing"}[
            config.action
        ]
        source = f" (main {accepted.source_commit[:8]})" if accepted.source_commit else ""
        first = "; trusted on first use" if accepted.first_use else ""
        return _Outcome(
            Result.APPLIED,
            f"{verb} deploy {short}{source}, signed by {accepted.principal}{first}",
            head,
        )

    def _go_back(
        self,
        previous: nix.Generation | None,
        new_generation: nix.Generation | None,
        previous_running: Path | None,
    ) -> str:
        """Return to the system that ran before; a sentence saying what happened."""
        config = self.config
        try:
            if config.action == Action.TEST:
                if previous_running is None:
                    return "no previous system to go back to"
                nix.switch_to_configuration(previous_running, "test")
                return f"went back to {previous_running.name}"
            if previous is None:
                return "no previous generation to go back to"
            if new_generation is not None and new_generation.number != previous.number:
                nix.switch_generation(config.system_profile, previous.number)
                nix.delete_generations(config.system_profile, [new_generation.number])
            nix.switch_to_configuration(previous.path, str(config.action))
            return f"went back to generation {previous.number}"
        except GitopsError as err:
            log.error("going back to the previous system failed: %s", err)
            return f"going back to the previous system FAILED too: {err}"

    def _mark_bad(self, head: pygit2.Oid) -> None:
        bad = (*[c for c in self.state.bad_commits if c != str(head)], str(head))[-50:]
        self.state = replace(self.state, bad_commits=bad)
        self.store.save(self.state)

    # -- reporting -------------------------------------------------------------------

    def _finish(self, outcome: _Outcome, reporter: Reporter) -> CycleResult:
        now = self.clock()
        seen = str(outcome.seen) if outcome.seen is not None else None
        # Applied then unchanged is one state: report changes of state once, then heartbeats.
        condition = "ok" if outcome.result in (Result.APPLIED, Result.UNCHANGED) else outcome.result
        key = f"{condition}|{seen}|{self.state.applied}"
        last = self.state.last_report_at()
        due = (
            self.force_report
            or key != self.state.last_report_key
            or last is None
            or (now - last).total_seconds() >= self.config.report_interval
        )
        report = None
        if due:
            report = self._report(outcome, now)
            written = sbom.sbom_if_changed(report, self.state)
            reporter.add(report, written.document if written else None)
            self.state = replace(
                sbom.remember(self.state, written),
                last_report_time=now_text(now),
                last_report_key=key,
            )
            self.store.save(self.state)
        push = reporter.push() if reporter.pending() else None
        level = (
            logging.INFO
            if outcome.result in (Result.APPLIED, Result.UNCHANGED)
            else logging.WARNING
        )
        log.log(level, "%s: %s", outcome.result, outcome.reason)
        return CycleResult(outcome.result, outcome.reason, seen, report, push)

    def _report(self, outcome: _Outcome, now: datetime) -> Report:
        config = self.config
        system = facts.collect_system(config.root, config.system_profile)
        # The profile is a path in this process's file system (nix-env wrote it), which
        # may differ from the facts root's view; read its generation here.
        generation = nix.current_generation(config.system_profile)
        system = replace(
            system,
            store_path=self.state.applied_store_path,
            generation=generation.number if generation is not None else None,
        )
        return Report(
            host=config.host,
            time=now,
            agent_version=__version__,
            result=outcome.result,
            reason=outcome.reason,
            report_id=str(uuid.uuid4()),
            deploy_seen=str(outcome.seen) if outcome.seen is not None else None,
            deploy_applied=self.state.applied,
            source_commit=self.state.applied_source,
            action=str(config.action),
            system=system,
            facts=facts.collect_facts(
                config.root, flake_lock=self.mirror.applied_file("flake.lock")
            ),
            durations=outcome.durations,
            log_tail=outcome.log_tail,
            changes=self.changes if outcome.result == Result.APPLIED else (),
        )


def _readlink(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True) if path.is_symlink() else None
    except OSError:
        return None
