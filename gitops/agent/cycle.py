"""One agent cycle (DESIGN.md "The agent's cycle"):

fetch ``deploy/<host>`` → verify → put the tree in place → ``nix build`` → set the profile
and ``switch-to-configuration`` → check health, going back if unhealthy → save state →
commit a signed report → push it. This module keeps the order of the steps; building,
activating and going back are :mod:`gitops.agent.activate`'s.

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
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from gitops import __version__
from gitops.agent import facts, sbom, status
from gitops.agent.activate import RETRY_HINT, Deployer
from gitops.agent.activate import Outcome as _Outcome
from gitops.agent.config import AgentConfig
from gitops.agent.mirror import APPLIED_REF, INCOMING_REF, Mirror
from gitops.agent.reporter import PushOutcome, Reporter
from gitops.agent.state import AgentState, StateStore, now_text
from gitops.agent.verify import RejectedError, check_deploy_head
from gitops.errors import GitopsError
from gitops.protocol import Report, Result
from gitops.system import nix
from gitops.trust import keys

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CycleResult:
    result: Result
    reason: str
    deploy_seen: str | None
    report: Report | None  # the report written this cycle, if any
    push: PushOutcome | None
    reboot_pending: bool = False  # applied with action boot, not booted into yet


@dataclass(frozen=True)
class ReportKey:
    """What a report said, to report each change of state once (then heartbeats).

    Kept in the state file as ``condition|seen|applied`` text, the format it always had.
    """

    # "ok" (applied or unchanged: one state), "reboot-pending", or the failing result
    condition: str
    seen: str | None
    applied: str | None

    @classmethod
    def of(cls, outcome: _Outcome, applied: str | None) -> ReportKey:
        ok = outcome.result in (Result.APPLIED, Result.UNCHANGED)
        seen = str(outcome.seen) if outcome.seen is not None else None
        if not ok:
            return cls(str(outcome.result), seen, applied)
        return cls("reboot-pending" if outcome.reboot_pending else "ok", seen, applied)

    def text(self) -> str:
        return f"{self.condition}|{self.seen}|{self.applied}"


class Cycle:
    """The order of one cycle's steps; the work is done by its collaborators."""

    def __init__(
        self,
        config: AgentConfig,
        *,
        force_report: bool = False,
        retry: bool = False,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.config = config
        self.force_report = force_report
        self.retry = retry
        self.clock = clock
        self.store = StateStore(config.state_dir)
        self.credentials = config.credentials()
        self.durations: dict[str, float] = {}
        self.deployer = Deployer(
            config,
            self.store,
            self.credentials,
            retry=retry,
            sleep=sleep,
            clock=clock,
            durations=self.durations,
        )

    # -- the cycle -------------------------------------------------------------------

    def run(self) -> CycleResult:
        with self.store.locked():
            started = time.monotonic()
            key = keys.load_signing_key(self.config.signing_key)
            self.mirror = Mirror(self.config.state_dir, self.config.host)
            self.state = self._load_state()
            outcome, self.state = self.deployer.recover(self.mirror, self.state)
            if outcome is None:
                log.info("fetching deploy/%s", self.config.host)
                outcome = self._apply()
            outcome = self.deployer.explain(outcome)
            self.durations["total"] = round(time.monotonic() - started, 3)
            outcome.durations = dict(self.durations)
            return self._finish(
                outcome, Reporter(self.mirror, key, self.config.remote, self.credentials)
            )

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
            head = self.mirror.fetch_deploy(config.remote, self.credentials.env())
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
        outcome, self.state = self.deployer.deploy(self.mirror, self.state, head, accepted)
        return outcome

    # -- reporting -------------------------------------------------------------------

    def _finish(self, outcome: _Outcome, reporter: Reporter) -> CycleResult:
        now = self.clock()
        seen = str(outcome.seen) if outcome.seen is not None else None
        # Applied then unchanged is one state: report changes of state once, then heartbeats.
        key = ReportKey.of(outcome, self.state.applied).text()
        last = self.state.last_report_at()
        due = (
            self.force_report
            or key != self.state.last_report_key
            or last is None
            or (now - last).total_seconds() >= self.config.report_interval
        )
        report = None
        if due:
            log.info("writing a signed report")
            report = self._report(outcome, now)
            written = sbom.sbom_if_changed(report, self.state)
            reporter.add(report, written.document if written else None)
            self.state = replace(
                sbom.remember(self.state, written),
                last_report_time=now_text(now),
                last_report_key=key,
            )
            self.store.save(self.state)
        if reporter.pending():
            log.info("pushing reports to %s", self.config.remote)
        push = reporter.push() if reporter.pending() else None
        level = (
            logging.INFO
            if outcome.result in (Result.APPLIED, Result.UNCHANGED)
            else logging.WARNING
        )
        log.log(level, "%s: %s", outcome.result, outcome.reason)
        result = CycleResult(
            outcome.result, outcome.reason, seen, report, push, outcome.reboot_pending
        )
        self._write_status(result, now)
        return result

    def _write_status(self, result: CycleResult, now: datetime) -> None:
        """The summary any user may read (gitops agent status without sudo)."""
        state = self.state
        summary = status.Status(
            host=self.config.host,
            time=now,
            result=result.result,
            reason=result.reason,
            reboot_pending=result.reboot_pending,
            deploy_seen=result.deploy_seen,
            applied=state.applied,
            applied_source=state.applied_source,
            applied_store_path=state.applied_store_path,
            last_report_time=status.report_time(state),
            pending_reports=0 if result.push is None else result.push.pending,
            bad_commits=state.bad_commits,
        )
        status.write(self.config.status_file, summary)

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
            changes=outcome.changes if outcome.result == Result.APPLIED else (),
        )
