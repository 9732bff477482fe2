"""Read the repository into :mod:`gitops.sitegen.model` values.

``main`` gives the hosts, their keys, the publishers and the policies; ``deploy/<host>``
what was published; ``reports/<host>`` what each host did. Every report is checked
against the host key in main's ``host.yaml``, every deploy commit against fleet.yaml's
publishers. Reading is incremental: given a host's previous :class:`HostData`, only the
commits above its old heads are read and verified.
"""

from __future__ import annotations

import json
import multiprocessing
import re
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import HOSTS_DIR, Fleet, Host, load_fleet
from gitops.fleet.policies import Policy, load_policies
from gitops.fleet.schema import Problem, Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import (
    DEPLOY_PREFIX,
    MAIN_REF,
    REPORTS_PREFIX,
    STATUS_FILE,
    TRAILER_EXPIRES,
    TRAILER_SOURCE,
    Report,
    Result,
    branch_name,
)
from gitops.sitegen.model import DeployEntry, HostData, MainCommit, Orphan, ReportEntry, Trust
from gitops.sitegen.verify import verdict
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners

MAX_DETAILED = 50  # newest reports read in full; older ones thinned to one a day
WINDOW = timedelta(days=32)  # how far back (from the newest report) history is kept
MAX_DEPLOYS = 100  # newest deploy commits read per host
MAIN_HISTORY = 300  # newest main commits in the audit trail
PARALLEL_FLEET_MIN = 2000  # hosts from which host.yaml files are parsed in parallel
LOG_TAIL_LIMIT = 8000  # characters of a failure's log kept
FAILURES = {str(Result.BUILD_FAILED), str(Result.SWITCH_FAILED), str(Result.ROLLED_BACK)}
_PULL_REQUEST = (
    re.compile(r"^Merge pull request #(\d+)\b"),
    re.compile(r"\(#(\d+)\)\s*$"),
    re.compile(r"^Merge branch .* into .*\(!(\d+)\)"),
)

Verdict = tuple[Trust, str, str]
VerdictLookup = Callable[[str, str], Verdict | None]


def open_repo(path: Path) -> pygit2.Repository:
    if not path.exists():
        raise GitopsError(f"{path}: no such directory; pass the fleet repository with --repo")
    return commits.open_repository(path)


def main_head(repo: pygit2.Repository) -> pygit2.Commit:
    target = commits.ref_target(repo, MAIN_REF)
    if target is None:
        raise GitopsError(
            f"{repo.path}: no branch 'main'; the site reads hosts, keys and policies from main "
            "(fetch it, or build from a mirror: git clone --mirror)"
        )
    commit = repo.get(target)
    if not isinstance(commit, pygit2.Commit):
        raise GitopsError(f"{repo.path}: main does not point to a commit")
    return commit


def load_main(
    repo: pygit2.Repository, commit: pygit2.Commit, *, workers: int = 1
) -> tuple[Fleet, list[Policy]]:
    """The fleet and the policies at ``commit``; one clear error line when they are invalid.

    With ``workers`` > 1 and many hosts, the host.yaml files are parsed in that many
    processes (each runs the ordinary ``load_fleet`` on a share of ``hosts/``)."""
    problems = Problems()
    label = f"main ({commit.short_id})"
    source = TreeSource(repo, commit.tree, label)
    names = source.list_dir(HOSTS_DIR) or []
    if workers > 1 and len(names) >= PARALLEL_FLEET_MIN:
        fleet = _load_fleet_parallel(repo, commit, names, workers, problems)
    else:
        fleet = load_fleet(source, problems)
    policies = load_policies(source, problems)
    if problems:
        more = len(problems.items) - 1
        raise GitopsError(
            f"{problems.items[0]}"
            + (f" (and {more} more problem{'s' if more > 1 else ''})" if more else "")
            + "; fix it on main ('gitops check' lists every problem)"
        )
    return fleet, policies


def load_main_policies(repo: pygit2.Repository, commit: pygit2.Commit) -> list[Policy]:
    """The policies at ``commit`` (load_main checked them already)."""
    problems = Problems()
    return load_policies(TreeSource(repo, commit.tree, f"main ({commit.short_id})"), problems)


class _SomeHosts:
    """A Source showing only some of ``hosts/`` (to parse a fleet in parts)."""

    def __init__(self, inner: TreeSource, hosts: Sequence[str]) -> None:
        self.inner = inner
        self.hosts = list(hosts)

    def read(self, path: str) -> bytes | None:
        return self.inner.read(path)

    def list_dir(self, path: str) -> list[str] | None:
        return list(self.hosts) if path == HOSTS_DIR else self.inner.list_dir(path)

    def is_dir(self, path: str) -> bool:
        return self.inner.is_dir(path)

    def describe(self, path: str) -> str:
        return self.inner.describe(path)


_FLEET_JOB: dict[str, Any] = {}


def _load_fleet_part(hosts: Sequence[str]) -> tuple[Fleet, list[Problem]]:
    repo = pygit2.Repository(_FLEET_JOB["path"])
    commit = repo.get(_FLEET_JOB["commit"])
    assert isinstance(commit, pygit2.Commit)
    problems = Problems()
    source = _SomeHosts(TreeSource(repo, commit.tree, _FLEET_JOB["label"]), hosts)
    return load_fleet(source, problems), problems.items


def _load_fleet_parallel(
    repo: pygit2.Repository,
    commit: pygit2.Commit,
    names: list[str],
    workers: int,
    problems: Problems,
) -> Fleet:
    _FLEET_JOB.update(path=repo.path, commit=str(commit.id), label=f"main ({commit.short_id})")
    size = (len(names) + workers * 4 - 1) // (workers * 4)
    parts = [names[i : i + size] for i in range(0, len(names), size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(_load_fleet_part, parts)
    _FLEET_JOB.clear()
    seen_problems: set[Problem] = set()
    hosts: dict[str, Host] = {}
    for fleet, items in results:
        hosts.update(fleet.hosts)
        for item in items:
            if item not in seen_problems:  # fleet.yaml's problems come from every part
                seen_problems.add(item)
                problems.items.append(item)
    owners: dict[bytes, str] = {}
    for host in hosts.values():  # the duplicate-key check, across parts
        if host.key is not None:
            other = owners.setdefault(host.key.blob, host.name)
            if other != host.name:
                problems.add(
                    f"main ({commit.short_id}):{HOSTS_DIR}/{host.name}/host.yaml",
                    f"key: same key as host {other!r}",
                    "each host signs its reports with its own key",
                )
    first = results[0][0]
    return Fleet(first.settings, dict(sorted(hosts.items())), first.profiles)


def list_heads(repo: pygit2.Repository) -> tuple[dict[str, str], dict[str, str]]:
    """(deploy heads, report heads), host name -> commit id."""
    deploys: dict[str, str] = {}
    reports: dict[str, str] = {}
    for ref in repo.references.iterator(pygit2.enums.ReferenceFilter.BRANCHES):
        name = ref.name
        for prefix, into in ((DEPLOY_PREFIX, deploys), (REPORTS_PREFIX, reports)):
            if name.startswith(prefix):
                target = ref.resolve().target
                if isinstance(target, pygit2.Oid):
                    into[name[len(prefix) :]] = str(target)
    return deploys, reports


def pull_request_number(message: str) -> int | None:
    subject = message.strip().splitlines()[0] if message.strip() else ""
    for pattern in _PULL_REQUEST:
        match = pattern.search(subject)
        if match:
            return int(match.group(1))
    return None


def _utc(timestamp: int) -> datetime:
    return datetime.fromtimestamp(timestamp, UTC)


def main_commit_info(commit: pygit2.Commit) -> MainCommit:
    message = commit.message or ""
    subject = message.strip().splitlines()[0] if message.strip() else ""
    return MainCommit(
        sha=str(commit.id),
        time=_utc(commit.commit_time),
        author=commit.author.name,
        email=commit.author.email,
        subject=subject,
        pull_request=pull_request_number(message),
        merge=len(commit.parent_ids) > 1,
    )


def read_main_history(repo: pygit2.Repository, head: pygit2.Commit) -> tuple[MainCommit, ...]:
    """The newest main commits along first parents (merges are how pull requests land)."""
    result: list[MainCommit] = []
    commit: pygit2.Commit | None = head
    while commit is not None and len(result) < MAIN_HISTORY:
        result.append(main_commit_info(commit))
        parent = repo.get(commit.parent_ids[0]) if commit.parent_ids else None
        commit = parent if isinstance(parent, pygit2.Commit) else None
    return tuple(result)


def find_main_commit(repo: pygit2.Repository, sha: str) -> MainCommit | None:
    try:
        obj = repo.get(sha)
    except (ValueError, pygit2.GitError):
        return None
    return main_commit_info(obj) if isinstance(obj, pygit2.Commit) else None


def orphans(
    hosts: set[str], deploys: dict[str, str], reports: dict[str, str]
) -> tuple[Orphan, ...]:
    found = []
    for prefix, heads in ((DEPLOY_PREFIX, deploys), (REPORTS_PREFIX, reports)):
        for name in sorted(heads.keys() - hosts):
            found.append(Orphan(f"{branch_name(prefix)}{name}", "no hosts/<host>/host.yaml"))
    return tuple(found)


@dataclass
class HostReader:
    """Reads hosts' refs in one process; ``lookup`` answers cached verdicts, ``new`` collects
    the verdicts computed here (for the cache)."""

    repo: pygit2.Repository
    lookup: VerdictLookup = lambda _commit, _key: None
    new: list[tuple[str, str, Verdict]] = field(default_factory=list)

    def _verdict(self, oid: str, trust: AllowedSigners, key_id: str) -> Verdict:
        known = self.lookup(oid, key_id)
        if known is not None:
            return known
        found = verdict(self.repo, oid, trust)
        self.new.append((oid, key_id, found))
        return found

    def collect(
        self,
        name: str,
        host: Host | None,
        *,
        reports_head: str | None,
        deploy_head: str | None,
        publishers: AllowedSigners,
        publishers_id: str,
        previous: HostData | None,
    ) -> HostData:
        key_id = host.key.fingerprint if host is not None and host.key is not None else ""
        trust = host.trust() if host is not None else AllowedSigners()
        reuse_reports = previous is not None and previous.key_id == key_id
        reuse_deploys = previous is not None and previous.publishers_id == publishers_id
        reports, latest, truncated = self._reports(
            reports_head, trust, key_id, previous if reuse_reports else None
        )
        deploys = self._deploys(
            deploy_head, publishers, publishers_id, previous if reuse_deploys else None
        )
        counts: dict[str, int] = {}
        for entry in reports:
            counts[str(entry.trust)] = counts.get(str(entry.trust), 0) + 1
        return HostData(
            name=name,
            key_id=key_id,
            publishers_id=publishers_id,
            reports_head=reports_head,
            deploy_head=deploy_head,
            reports=reports,
            deploys=deploys,
            latest_status=latest,
            truncated=truncated,
            report_count=len(reports),
            trust_counts=tuple(sorted(counts.items())),
        )

    # -- reports ------------------------------------------------------------------

    def _reports(
        self,
        head: str | None,
        trust: AllowedSigners,
        key_id: str,
        previous: HostData | None,
    ) -> tuple[tuple[ReportEntry, ...], dict[str, Any] | None, bool]:
        if head is None:
            return (), None, False
        if previous is not None and previous.reports_head == head:
            return previous.reports, previous.latest_status, previous.truncated
        stop = previous.reports_head if previous is not None else None
        entries: list[ReportEntry] = []
        latest: dict[str, Any] | None = None
        days: set[int] = set()
        newest_time: datetime | None = None
        reached_stop = stop is None
        truncated = False
        oid: pygit2.Oid | None = pygit2.Oid(hex=head)
        index = 0
        while oid is not None:
            if stop is not None and str(oid) == stop:
                reached_stop = True
                break
            commit = self.repo.get(oid)
            if not isinstance(commit, pygit2.Commit):
                break
            when = _utc(commit.commit_time)
            newest_time = newest_time or when
            if index >= MAX_DETAILED and stop is None and when < newest_time - WINDOW:
                truncated = True
                break
            day = commit.commit_time // 86400  # the UTC day
            if index < MAX_DETAILED or day not in days:
                entry, status = self._report_entry(commit, when, trust, key_id)
                entries.append(entry)
                if latest is None and entry.verified and status is not None:
                    latest = json.loads(status)
            days.add(day)
            index += 1
            oid = commit.parent_ids[0] if commit.parent_ids else None
        if previous is not None and not reached_stop:
            # The branch was rewritten: what we cached is not below the new head.
            return self._reports(head, trust, key_id, None)
        if previous is not None:
            merged = thin(entries + list(previous.reports))
            if latest is None:
                latest = previous.latest_status
            return (
                merged,
                latest,
                previous.truncated or len(merged) < len(entries) + len(previous.reports),
            )
        return tuple(entries), latest, truncated

    def _report_entry(
        self, commit: pygit2.Commit, when: datetime, trust: AllowedSigners, key_id: str
    ) -> tuple[ReportEntry, bytes | None]:
        sha = str(commit.id)
        state, detail, _principal = self._verdict(sha, trust, key_id)
        status = _status_json(commit)
        if status is None:
            return ReportEntry(sha, when, state, detail, error="no status.json in the commit"), None
        try:
            report = Report.from_json(status)
        except ValueError as err:
            return ReportEntry(sha, when, state, detail, error=str(err)), None
        return report_entry(sha, when, state, detail, report), status

    # -- deploys ------------------------------------------------------------------

    def _deploys(
        self,
        head: str | None,
        publishers: AllowedSigners,
        publishers_id: str,
        previous: HostData | None,
    ) -> tuple[DeployEntry, ...]:
        if head is None:
            return ()
        if previous is not None and previous.deploy_head == head:
            return previous.deploys
        stop = previous.deploy_head if previous is not None else None
        entries: list[DeployEntry] = []
        oid: pygit2.Oid | None = pygit2.Oid(hex=head)
        reached_stop = stop is None
        while oid is not None and len(entries) < MAX_DEPLOYS:
            if stop is not None and str(oid) == stop:
                reached_stop = True
                break
            commit = self.repo.get(oid)
            if not isinstance(commit, pygit2.Commit):
                break
            sha = str(oid)
            state, detail, principal = self._verdict(sha, publishers, publishers_id)
            message = commit.message or ""
            trailers = commits.trailers(message)
            entries.append(
                DeployEntry(
                    oid=sha,
                    time=_utc(commit.commit_time),
                    trust=state,
                    trust_detail=detail,
                    principal=principal,
                    source_commit=trailers.get(TRAILER_SOURCE),
                    subject=message.strip().splitlines()[0] if message.strip() else "",
                    expires=trailers.get(TRAILER_EXPIRES),
                )
            )
            oid = commit.parent_ids[0] if commit.parent_ids else None
        if previous is not None and not reached_stop and len(entries) < MAX_DEPLOYS:
            return self._deploys(head, publishers, publishers_id, None)
        if previous is not None and reached_stop:
            return tuple(entries + list(previous.deploys))[:MAX_DEPLOYS]
        return tuple(entries)


def report_entry(
    sha: str, when: datetime, state: Trust, detail: str, report: Report
) -> ReportEntry:
    result = str(report.result)
    system = report.system
    intern = sys.intern
    return ReportEntry(
        oid=sha,
        commit_time=when,
        trust=state,
        trust_detail=detail,
        time=report.time,
        result=intern(result),
        reason=report.reason,
        deploy_seen=intern(report.deploy_seen) if report.deploy_seen else None,
        deploy_applied=intern(report.deploy_applied) if report.deploy_applied else None,
        source_commit=intern(report.source_commit) if report.source_commit else None,
        generation=system.generation,
        store_path=intern(system.store_path) if system.store_path else None,
        current_system=intern(system.current_system) if system.current_system else None,
        nixos_version=intern(system.nixos_version) if system.nixos_version else None,
        reboot_required=system.reboot_required,
        log_tail=report.log_tail[-LOG_TAIL_LIMIT:] if result in FAILURES else "",
        changes=report.changes,
    )


def _status_json(commit: pygit2.Commit) -> bytes | None:
    """``status.json`` of a report commit (what gitops.report_commits.read_report_commit reads,
    from the commit object already in hand)."""
    try:
        entry = commit.tree[STATUS_FILE]
    except KeyError:
        return None
    return bytes(entry.data) if isinstance(entry, pygit2.Blob) else None


def _day(moment: datetime) -> int:
    return int(moment.timestamp()) // 86400


def thin(entries: list[ReportEntry]) -> tuple[ReportEntry, ...]:
    """Keep the newest MAX_DETAILED reports, then the newest of each day within WINDOW."""
    if len(entries) <= MAX_DETAILED:
        return tuple(entries)
    newest = entries[0].commit_time
    kept = entries[:MAX_DETAILED]
    days = {_day(e.commit_time) for e in kept}
    for entry in entries[MAX_DETAILED:]:
        if entry.commit_time < newest - WINDOW:
            break
        day = _day(entry.commit_time)
        if day not in days:
            days.add(day)
            kept.append(entry)
    return tuple(kept)
