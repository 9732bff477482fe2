"""Commit reports locally, then push them; never lose or duplicate one.

A report is first a signed commit on the local ``reports/<host>`` (durable before any
network). Pushing sends the whole local branch. When the server refuses (someone else
moved the branch, or a previous push landed but we crashed before noting it), we fetch
the remote branch, re-create only the reports whose ``Report-Id`` it lacks on top of it,
re-sign them, and push again.

When the server is busy (sshd drops connections beyond ``MaxStartups`` before the
handshake; a gitops server says "the gitops server is busy" when its push slots are
taken), or refuses again after a rebase, we wait before the next attempt: a random time
up to a limit that doubles each attempt ("full jitter"), so a thousand agents that failed
together do not all come back together. Attempts are bounded; what is not pushed stays
committed locally and goes with the next cycle. A gitops server that checked the reports
and refused them (its ``gitops:`` line says why) is not asked again: the answer would not
change.
"""

from __future__ import annotations

import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

import pygit2

from gitops.agent.mirror import REMOTE_REPORTS_REF, Mirror
from gitops.errors import GitopsError
from gitops.protocol import Report
from gitops.report_commits import create_report_commit, read_report_commit
from gitops.system import transport
from gitops.trust.sshsig import PrivateKeyTypes

log = logging.getLogger(__name__)

MAX_PUSH_ATTEMPTS = 8
REMOTE_HISTORY_SCAN = 1000  # how far back to look for Report-Ids already pushed


@dataclass(frozen=True)
class Backoff:
    """Waits between push attempts: random in [0, min(cap, base * 2**(n-1))] before the
    n-th retry. The defaults wait at most 2+4+8+16+32+60+60 s (about 3 minutes, half that
    on average) over eight attempts: long enough to spread a thousand agents that all
    failed at once over the minutes a busy server needs (docs/server.md)."""

    base: float = 2.0
    cap: float = 60.0
    attempts: int = MAX_PUSH_ATTEMPTS

    def delay(self, retry: int, rng: random.Random) -> float:
        return rng.uniform(0.0, min(self.cap, self.base * 2 ** (retry - 1)))


@dataclass(frozen=True)
class PushOutcome:
    pushed: bool
    pending: int  # local reports not known to be on the remote
    message: str = ""


def pending_reports(mirror: Mirror) -> list[pygit2.Oid]:
    """Local reports not on the remote as far as we know, oldest first."""
    local = mirror.target(mirror.local_reports_ref)
    if local is None:
        return []
    walker = mirror.repo.walk(
        local, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE
    )
    remote = mirror.target(REMOTE_REPORTS_REF)
    if remote is not None and mirror.repo.get(remote) is not None:
        walker.hide(remote)
    return [commit.id for commit in walker]


class Reporter:
    def __init__(
        self,
        mirror: Mirror,
        key: PrivateKeyTypes,
        remote: str,
        credentials: transport.Credentials,
        *,
        backoff: Backoff | None = None,
        sleep: Callable[[float], None] = time.sleep,
        rng: random.Random | None = None,
    ) -> None:
        self.mirror = mirror
        self.key = key
        self.remote = remote
        self.credentials = credentials
        self.backoff = backoff or Backoff()
        self.sleep = sleep
        self.rng = rng or random.Random()
        self.retries = 0  # attempts after the first, in the last push()

    @property
    def repo(self) -> pygit2.Repository:
        return self.mirror.repo  # compaction (agent/compact.py) opens a fresh handle

    @property
    def ref(self) -> str:
        return self.mirror.local_reports_ref

    def add(
        self, report: Report, sbom: bytes | None = None, escrow: dict[str, bytes] | None = None
    ) -> pygit2.Oid:
        """Commit ``report`` (and the host's SBOM, and escrowed ciphertext) on the local
        branch (no network)."""
        parent = self.mirror.target(self.ref)
        oid = create_report_commit(
            self.repo, report, parent=parent, key=self.key, sbom=sbom, escrow=escrow
        )
        self.mirror.set_ref(self.ref, oid, f"report {report.result}")
        return oid

    def pending(self) -> list[pygit2.Oid]:
        return pending_reports(self.mirror)

    def _pause(self, retry: int) -> None:
        self.retries = retry
        delay = self.backoff.delay(retry, self.rng)
        log.info("report push: waiting %.1fs before attempt %d", delay, retry + 1)
        self.sleep(delay)

    def push(self) -> PushOutcome:
        last_message = ""
        self.retries = 0
        pause_before_next = False
        for attempt in range(1, self.backoff.attempts + 1):
            if pause_before_next:
                self._pause(attempt - 1)
            local = self.mirror.target(self.ref)
            if local is None or not self.pending():
                return PushOutcome(True, 0)
            try:
                result = transport.push(
                    self.mirror.path,
                    self.remote,
                    [f"{self.ref}:{self.ref}"],
                    env=self.credentials.env(),
                )
            except transport.TransientError as err:
                log.info("report push, attempt %d: %s", attempt, err)
                last_message, pause_before_next = str(err), True
                continue
            except GitopsError as err:
                log.warning("could not push reports: %s", err)
                return PushOutcome(False, len(self.pending()), str(err))
            if result.ok:
                self.mirror.set_ref(REMOTE_REPORTS_REF, local, "pushed")
                return PushOutcome(True, 0)
            if "gitops:" in result.message:
                # A gitops server checked the reports and said no (its line says why):
                # another attempt would be refused the same way.
                log.warning("the server refused reports/%s: %s", self.mirror.host, result.message)
                return PushOutcome(False, len(self.pending()), result.message)
            refused = result.refused()
            last_message = refused[0].summary if refused else result.message
            log.info("report push refused (%s), attempt %d: rebasing", last_message, attempt)
            try:
                remote_head = self.mirror.fetch_remote_reports(self.remote, self.credentials.env())
            except GitopsError as err:
                return PushOutcome(False, len(self.pending()), str(err))
            self.rebase_onto(remote_head)
            # A rebase answers "someone moved the branch" at once; a refusal after one is
            # the server saying no again: slow down.
            pause_before_next = attempt > 1
        return PushOutcome(
            False,
            len(self.pending()),
            f"the server kept refusing reports/{self.mirror.host}: {last_message}",
        )

    def rebase_onto(self, remote_head: pygit2.Oid | None) -> None:
        """Re-create unpushed reports on top of ``remote_head``, skipping any already there."""
        pending = self.pending()
        already = self._remote_report_ids(remote_head)
        parent = remote_head
        for oid in pending:
            commit = read_report_commit(self.repo, oid)
            if commit.report_id is not None and commit.report_id in already:
                continue
            if commit.status is None:
                continue
            report = Report.from_json(commit.status)
            parent = create_report_commit(
                self.repo,
                report,
                parent=parent,
                key=self.key,
                sbom=commit.sbom,
                escrow=commit.escrow,
            )
        if parent is None:
            self.mirror.delete_ref(self.ref)
        else:
            self.mirror.set_ref(self.ref, parent, "rebased reports onto the remote")

    def _remote_report_ids(self, head: pygit2.Oid | None) -> set[str]:
        if head is None:
            return set()
        found = set()
        for count, commit in enumerate(self.repo.walk(head, pygit2.enums.SortMode.TOPOLOGICAL)):
            if count >= REMOTE_HISTORY_SCAN:
                break
            report_id = read_report_commit(self.repo, commit.id).report_id
            if report_id:
                found.add(report_id)
        return found
