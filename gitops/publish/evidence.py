"""What hosts say they applied: the newest report on ``reports/<host>`` that the host's
own key (``hosts/<host>/host.yaml`` in main) signed.

A clone that never published (a fresh CI checkout) knows nothing of a deploy branch's
past; the host's report is its witness. If the server's ``deploy/<host>`` does not
contain the commit the host reports applying, the branch was rewound, and a commit
built on it would be refused by the host forever.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from gitops.fleet.model import Fleet
from gitops.protocol import REPORTS_PREFIX, Report, reports_ref
from gitops.report_commits import read_report_commit, walk_reports
from gitops.system import transport
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError


@dataclass(frozen=True)
class Applied:
    """A host's own signed word on what it runs."""

    host: str
    commit: str  # the deploy commit it applied (the report's deploy_applied)
    source: str | None  # that commit's Source-Commit, as the report says
    report: str  # the report commit


def reported_applied(
    repository: pygit2.Repository,
    remote: str,
    fleet: Fleet,
    hosts: Iterable[str],
    *,
    depth: int = 1,
    warn: Callable[[str], None],
) -> dict[str, Applied]:
    """For each of ``hosts`` with a verified report among the newest ``depth`` on the
    server, what it applied. Reports that fail verification are skipped with a warning:
    they are no evidence either way."""
    git_dir = Path(repository.path)
    wanted = sorted(set(hosts))
    if not wanted:
        return {}
    listed = transport.list_refs(git_dir, remote, f"{REPORTS_PREFIX}*")
    present = [host for host in wanted if reports_ref(host) in listed]
    if not present:
        return {}
    found: dict[str, Applied] = {}
    with transport.scratch_repository(git_dir) as scratch:
        transport.fetch(
            scratch,
            transport.remote_url(git_dir, remote),
            [f"+{reports_ref(host)}:{reports_ref(host)}" for host in present],
            depth=depth,
            stdin=True,
        )
        reports = pygit2.Repository(str(scratch))
        for host in present:
            head = commits.ref_target(reports, reports_ref(host))
            if head is None:
                continue
            applied = _newest_applied(reports, host, head, fleet.hosts[host].trust(), warn)
            if applied is not None:
                found[host] = applied
    return found


def _newest_applied(
    reports: pygit2.Repository,
    host: str,
    head: pygit2.Oid,
    trust: AllowedSigners,
    warn: Callable[[str], None],
) -> Applied | None:
    for oid in walk_reports(reports, head):
        if oid not in reports:  # the end of a shallow fetch
            return None
        try:
            commits.verify_commit(reports, oid, trust)
        except SignatureError as err:
            warn(
                f"reports/{host}: report {str(oid)[:8]} ignored, not signed by {host}'s key ({err})"
            )
            continue
        status = read_report_commit(reports, oid).status
        try:
            report = Report.from_json(status or b"")
        except ValueError as err:
            warn(f"reports/{host}: report {str(oid)[:8]} ignored: {err}")
            continue
        if report.host != host:
            warn(f"reports/{host}: report {str(oid)[:8]} ignored: it is about {report.host}")
            continue
        if report.deploy_applied:
            return Applied(host, report.deploy_applied, report.source_commit, str(oid))
    return None
