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
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

import pygit2

from gitops import __version__
from gitops.agent import compact, escrow, facts, metrics, sbom, status
from gitops.agent.activate import RETRY_HINT, Deployer
from gitops.agent.activate import Outcome as _Outcome
from gitops.agent.chores import Chores
from gitops.agent.config import AgentConfig
from gitops.agent.mirror import APPLIED_REF, INCOMING_REF, Incoming, Mirror
from gitops.agent.reporter import PushOutcome, Reporter
from gitops.agent.state import AgentState, StateStore
from gitops.agent.verify import (
    AcceptedDeploy,
    Floor,
    FloorKind,
    NotDescendingError,
    Policy,
    RejectedError,
    StaleError,
    check_deploy_head,
    check_fresh,
    read_deploy_commit,
)
from gitops.errors import GitopsError
from gitops.protocol import CONTROL_DIR, Report, Result, deploy_ref, format_time
from gitops.system import nix, transport
from gitops.trust import keys, trees
from gitops.trust.trees import TreeError

log = logging.getLogger(__name__)

_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")


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
            # Signed commands and reboot policy (agent/chores.py): acknowledged in this report.
            self.chores = Chores.start(self.config, self.mirror, self.state, outcome, self.clock())
            self.durations["total"] = round(time.monotonic() - started, 3)
            outcome.durations = dict(self.durations)
            result = self._finish(
                outcome, Reporter(self.mirror, key, self.config.remote, self.credentials)
            )
            self.chores.after_report(result.push)
            return result

    def _load_state(self) -> AgentState:
        """The saved state, or an empty one when it is gone: the anti-rollback floor is
        then recovered each cycle until something is applied (see :meth:`_floors`)."""
        state = self.store.load(self.config.host)
        if state is not None:
            return state
        if self.mirror.target(APPLIED_REF) is not None:
            log.warning(
                "%s is missing although this host applied deploy commits before; the "
                "anti-rollback floor is taken from %s in %s",
                self.store.path,
                APPLIED_REF,
                self.mirror.path,
            )
        return AgentState(host=self.config.host)

    def _timed(self, name: str, started: float) -> None:
        self.durations[name] = round(self.durations.get(name, 0) + time.monotonic() - started, 3)

    def _apply(self) -> _Outcome:
        try:
            policy = self._policy()
        except GitopsError as err:
            return _Outcome(Result.MISCONFIGURED, f"{err}; fix the agent configuration")
        fetched = self._fetch_commits(policy)
        if isinstance(fetched, _Outcome):
            return fetched
        started = time.monotonic()
        try:
            accepted = self._verify(fetched, policy)
        except RejectedError as err:  # nothing of a refused head is kept
            self.mirror.drop_quarantine()
            stale = isinstance(err, StaleError)
            return _Outcome(
                Result.STALE_PUBLISHER if stale else Result.REJECTED, str(err), fetched.head
            )
        finally:
            self._timed("verify", started)
        return self._download_and_apply(fetched, accepted)

    # -- fetch and verify (verify before download) ---------------------------------------

    def _policy(self) -> Policy:
        """What deploy commits are checked against; GitopsError when this machine's own
        configuration is broken (reported as misconfigured, not as a crash)."""
        config = self.config
        try:
            trust = config.publisher_trust()
        except (GitopsError, ValueError) as err:  # ValueError: not text (UnicodeDecodeError)
            detail = err if isinstance(err, GitopsError) else f"{config.trusted_publishers}: {err}"
            raise GitopsError(f"trusted publishers unusable: {detail}") from err
        if not trust.entries:
            raise GitopsError(
                f"{config.trusted_publishers}: lists no publisher key, so every deploy "
                "commit would be refused"
            )
        if config.min_commit is not None and not _COMMIT_ID.match(config.min_commit):
            raise GitopsError(f"min_commit {config.min_commit!r} is not a full commit id")
        return Policy(config.host, trust, self.clock(), config.max_age)

    def _fetch_commits(self, policy: Policy) -> Incoming | _Outcome:
        """The new head's commits in the quarantine, or the cycle's outcome when there is
        nothing new (an idle poll asks the server for one ref and downloads nothing)."""
        config = self.config
        applied = self.state.applied
        started = time.monotonic()
        try:
            head = transport.remote_head(
                config.remote, deploy_ref(config.host), env=self.credentials.env()
            )
            if head is not None and head == applied and pygit2.Oid(hex=head) in self.mirror.repo:
                return self._unchanged(self.mirror.repo, pygit2.Oid(hex=head), policy)
            incoming = (
                self.mirror.fetch_commits(config.remote, self.credentials.env()) if head else None
            )
        except GitopsError as err:
            return _Outcome(Result.FETCH_FAILED, f"cannot fetch deploy/{config.host}: {err}")
        finally:
            self._timed("fetch", started)
        if incoming is None:
            return self._missing()
        if str(incoming.head) == applied:
            try:
                return self._unchanged(incoming.repo, incoming.head, policy)
            finally:
                self.mirror.drop_quarantine()
        return incoming

    def _missing(self) -> _Outcome:
        host = self.config.host
        applied = self.state.applied or _hex(self.mirror.target(APPLIED_REF))
        if applied is None:
            return _Outcome(
                Result.UNCHANGED, f"nothing is published for {host} yet (no deploy/{host})"
            )
        return _Outcome(
            Result.DEPLOY_MISSING,
            f"deploy/{host} is missing on the server although this host applied deploy "
            f"{applied[:8]} from it (deleted, or the server lost it); nothing changed. Restore "
            "the branch or publish again (docs/operations.md)",
        )

    def _unchanged(self, repo: pygit2.Repository, head: pygit2.Oid, policy: Policy) -> _Outcome:
        """Nothing new: the applied head must still be fresh (a frozen server keeps serving
        it; expiry is checked every cycle, not only on new heads)."""
        try:
            check_fresh(read_deploy_commit(repo, head), policy)
        except StaleError as err:
            return _Outcome(Result.STALE_PUBLISHER, str(err), head)
        except RejectedError as err:
            return _Outcome(Result.REJECTED, str(err), head)
        return _Outcome(Result.UNCHANGED, f"up to date with deploy {str(head)[:8]}", head)

    def _verify(self, incoming: Incoming, policy: Policy) -> AcceptedDeploy:
        """Check the head against each floor in turn: a floor it does not descend from
        passes the question on to the next (a pinned min_commit after a revision that is
        not in the branch's history); the last one decides."""
        *first, last = self._floors()
        for floor in first:
            try:
                return check_deploy_head(incoming.repo, incoming.head, floor=floor, policy=policy)
            except NotDescendingError:
                log.info("deploy head does not descend from %s", floor.describe())
        return check_deploy_head(incoming.repo, incoming.head, floor=last, policy=policy)

    def _floors(self) -> list[Floor]:
        """What the head must descend from: the applied commit; when state.json is gone,
        the mirror's record of it, else the running system's configurationRevision and a
        pinned min_commit, else nothing (first use) only if the configuration allows it."""
        config = self.config
        applied = self.state.applied or _hex(self.mirror.target(APPLIED_REF))
        if applied is not None:
            return [Floor(FloorKind.APPLIED, applied)]
        floors = []
        revision = facts.collect_system(config.root, config.system_profile).configuration_revision
        if revision is not None and _COMMIT_ID.match(revision):
            floors.append(Floor(FloorKind.REVISION, revision))
        if config.min_commit is not None:
            floors.append(Floor(FloorKind.PINNED, config.min_commit))
        if floors:
            return floors
        if config.trust_on_first_use:
            return [Floor(FloorKind.FIRST_USE)]
        raise RejectedError(
            "no applied commit is recorded, the running system names no configurationRevision, "
            "and trust_on_first_use is off; pin min_commit (the deploy commit to start from) in "
            "the agent configuration (docs/operations.md)"
        )

    def _download_and_apply(self, incoming: Incoming, accepted: AcceptedDeploy) -> _Outcome:
        head = incoming.head
        short = str(head)[:8]
        started = time.monotonic()
        try:
            self.mirror.fetch_verified(self.config.remote, self.credentials.env(), incoming)
        except GitopsError as err:
            return _Outcome(
                Result.FETCH_FAILED, f"cannot download verified deploy {short}: {err}", head
            )
        finally:
            self._timed("fetch", started)
        commit = self.mirror.repo.get(head)
        try:
            if not isinstance(commit, pygit2.Commit):
                raise TreeError("it did not arrive in full")
            trees.check_tree(self.mirror.repo, commit.tree_id, what="its tree")
        except TreeError as err:
            self.mirror.forget_incoming()
            return _Outcome(Result.REJECTED, f"deploy commit {short} refused: {err}", head)
        if str(head) in self.state.bad_commits and not self.retry:
            return _Outcome(
                Result.ROLLED_BACK,
                f"deploy {short} was rolled back before and is not retried; {RETRY_HINT}",
                head,
            )
        if self._same_tree_as_applied(commit):
            return self._renew(head, accepted)
        outcome, self.state = self.deployer.deploy(self.mirror, self.state, head, accepted)
        return outcome

    def _same_tree_as_applied(self, commit: pygit2.Commit) -> bool:
        """Same tree, or one that differs only in gitops-control/ (commands, settings)."""
        applied = self.state.applied
        old = self.mirror.repo.get(applied) if applied else None
        return isinstance(old, pygit2.Commit) and same_system(old.tree, commit.tree)

    def _renew(self, head: pygit2.Oid, accepted: AcceptedDeploy) -> _Outcome:
        """A heartbeat (the publisher renewed expiry; same tree) or a change of commands and
        settings only: move the floor, build nothing."""
        before = str(self.state.applied)[:8]
        old, new = self.mirror.repo.get(str(self.state.applied)), self.mirror.repo.get(head)
        same = (
            isinstance(old, pygit2.Commit)
            and isinstance(new, pygit2.Commit)
            and old.tree_id == new.tree_id
        )
        self.state = replace(self.state, applied=str(head), applied_source=accepted.source_commit)
        self.store.save(self.state)
        self.mirror.set_ref(APPLIED_REF, head, "renewed")
        self.mirror.delete_ref(INCOMING_REF)
        until = f", valid until {format_time(accepted.expires)}" if accepted.expires else ""
        what = "same tree" if same else f"only {CONTROL_DIR}/ changed"
        return _Outcome(
            Result.UNCHANGED,
            f"deploy {str(head)[:8]} renews {before} ({what}, signed by {accepted.principal}"
            f"{until}): nothing to build",
            head,
        )

    # -- reporting -------------------------------------------------------------------

    def _finish(self, outcome: _Outcome, reporter: Reporter) -> CycleResult:
        now = self.clock()
        seen = str(outcome.seen) if outcome.seen is not None else None
        # Applied then unchanged is one state: report changes of state once, then heartbeats.
        key = ReportKey.of(outcome, self.state.applied).text()
        last = self.state.last_report_at()
        due = (
            self.force_report
            or self.chores.must_report
            or key != self.state.last_report_key
            or last is None
            or (now - last).total_seconds() >= self.config.report_interval
        )
        report = None
        if due:
            log.info("writing a signed report")
            report = self._report(outcome, now)
            written = sbom.sbom_if_changed(report, self.state)
            escrowed = escrow.escrow_if_changed(self.config, self.state)  # recovery keys
            reporter.add(report, written.document if written else None, escrow.files(escrowed))
            self.chores.reported(report)
            self.state = replace(
                escrow.remember(sbom.remember(self.state, written), escrowed),
                last_report_time=now,
                last_report_key=key,
            )
            self.store.save(self.state)
        if reporter.pending():
            log.info("pushing reports to %s", self.config.remote)
        push = reporter.push() if reporter.pending() else None
        compact.compact_if_due(self.mirror, reporter.key)  # keep the state directory small
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
        metrics.after_cycle(
            self.config,
            time=now,
            result=result.result,
            state=self.state,
            system=self.chores.system,
            reboot_pending=result.reboot_pending,
            pending_reports=0 if push is None else push.pending,
            durations=self.durations,
        )
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
        system = self.chores.system
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
            commands=self.chores.acks(),
            reboot_needed_since=self.chores.reboot_needed_since,
        )


def same_system(old: pygit2.Tree, new: pygit2.Tree) -> bool:
    """The trees differ at most in ``gitops-control/``, which no build reads."""
    if old.id == new.id:
        return True
    old_ids = {e.name: e.id for e in old}
    new_ids = {e.name: e.id for e in new}
    old_ids.pop(CONTROL_DIR, None)
    new_ids.pop(CONTROL_DIR, None)
    return old_ids == new_ids


def _hex(oid: pygit2.Oid | None) -> str | None:
    return None if oid is None else str(oid)
