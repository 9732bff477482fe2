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
import re
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from gitops import __version__
from gitops.agent import facts, health
from gitops.agent.config import Action, AgentConfig
from gitops.agent.mirror import APPLIED_REF, INCOMING_REF, Incoming, Mirror
from gitops.agent.reporter import PushOutcome, Reporter
from gitops.agent.state import AgentState, BuildRecord, StateStore, now_text
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
from gitops.protocol import Report, Result, deploy_ref, format_time
from gitops.system import nix, transport
from gitops.trust import keys, trees
from gitops.trust.trees import TreeError

log = logging.getLogger(__name__)

RETRY_HINT = "publish a new commit, or run 'gitops agent once --retry'"
_COMMIT_ID = re.compile(r"^[0-9a-f]{40}$")


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
            head = transport.remote_head(config.remote, deploy_ref(config.host), env=self.env)
            if head is not None and head == applied and pygit2.Oid(hex=head) in self.mirror.repo:
                return self._unchanged(self.mirror.repo, pygit2.Oid(hex=head), policy)
            incoming = self.mirror.fetch_commits(config.remote, self.env) if head else None
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
            self.mirror.fetch_verified(self.config.remote, self.env, incoming)
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
        return self._build_and_activate(head, accepted)

    def _same_tree_as_applied(self, commit: pygit2.Commit) -> bool:
        applied = self.state.applied
        old = self.mirror.repo.get(applied) if applied else None
        return isinstance(old, pygit2.Commit) and old.tree_id == commit.tree_id

    def _renew(self, head: pygit2.Oid, accepted: AcceptedDeploy) -> _Outcome:
        """A heartbeat (the publisher renewed expiry; same tree): move the floor, build nothing."""
        before = str(self.state.applied)[:8]
        self.state = replace(self.state, applied=str(head), applied_source=accepted.source_commit)
        self.store.save(self.state)
        self.mirror.set_ref(APPLIED_REF, head, "renewed")
        self.mirror.delete_ref(INCOMING_REF)
        until = f", valid until {format_time(accepted.expires)}" if accepted.expires else ""
        return _Outcome(
            Result.UNCHANGED,
            f"deploy {str(head)[:8]} renews {before} (same tree, signed by {accepted.principal}"
            f"{until}): nothing to build",
            head,
        )

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
            reporter.add(report)
            self.state = replace(self.state, last_report_time=now, last_report_key=key)
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
            facts=facts.collect_facts(config.root),
            durations=outcome.durations,
            log_tail=outcome.log_tail,
            changes=self.changes if outcome.result == Result.APPLIED else (),
        )


def _hex(oid: pygit2.Oid | None) -> str | None:
    return None if oid is None else str(oid)


def _readlink(path: Path) -> Path | None:
    try:
        return path.resolve(strict=True) if path.is_symlink() else None
    except OSError:
        return None
