"""Read the repository into :mod:`gitops.sitegen.model` values.

``main`` gives the hosts, their keys, the publishers and the policies; ``deploy/<host>``
what was published; ``reports/<host>`` what each host did. Every report is checked
against the host key in main's ``host.yaml``, every deploy commit against fleet.yaml's
publishers. Reading is incremental: given a host's previous :class:`HostData`, only the
commits above its old heads are read and verified.
"""

from __future__ import annotations

import itertools
import multiprocessing
import re
import sys
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.fleet import enrolment
from gitops.fleet.model import HOSTS_DIR, Fleet, Host, load_fleet
from gitops.fleet.policies import Policy, load_policies
from gitops.fleet.schema import Problem, Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import (
    DEPLOY_PREFIX,
    ENROLL_PREFIX,
    MAIN_REF,
    REPORTS_PREFIX,
    STATUS_FILE,
    TRAILER_EXPIRES,
    TRAILER_RECOVERS,
    TRAILER_SOURCE,
    Report,
    Result,
    branch_name,
)
from gitops.sitegen import commitgraph
from gitops.sitegen.model import (
    CLOCK_SKEW,
    DeployEntry,
    DroppedReport,
    Enrolment,
    HostData,
    MainCommit,
    Orphan,
    Parsed,
    ReportEntry,
    Rewind,
    Trust,
)
from gitops.sitegen.verdicts import VerdictReader
from gitops.sitegen.verify import verdict
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners

MAX_DETAILED = 50  # newest reports read in full; older ones thinned to one a day
# A quick first read (a build's budget of whole histories spent: build.HISTORY_HOSTS) reads
# the newest reports only, and later builds read on from there.
QUICK_READ = 5
WINDOW = timedelta(days=32)  # how far back (from the newest report) history is kept
MAX_DEPLOYS = 100  # newest deploy commits read per host
MAIN_HISTORY = 300  # newest main commits in the audit trail
PARALLEL_FLEET_MIN = 2000  # hosts from which host.yaml files are parsed in parallel
LOG_TAIL_LIMIT = 8000  # characters of a failure's log kept
COMMAND_OUTPUT_LIMIT = 64 * 1024  # characters of a command's output (collect-logs) kept
MAX_ERROR = 300  # characters of why a report is invalid
MAX_DROPPED = 50  # reports remembered as dropped from a rewritten branch
MAX_PARSED = 10  # verified reports parsed and kept, newest first, when the newest are future
FAILURES = frozenset(
    {Result.BUILD_FAILED, Result.SUBSTITUTE_FAILED, Result.SWITCH_FAILED, Result.ROLLED_BACK}
)
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


@dataclass(frozen=True)
class _FleetPart:
    """Parse a share of ``hosts/`` at one main commit, in a pool process."""

    path: str
    commit: str
    label: str

    def load(self, hosts: Sequence[str]) -> tuple[Fleet, list[Problem]]:
        repo = pygit2.Repository(self.path)
        commit = repo.get(self.commit)
        assert isinstance(commit, pygit2.Commit)
        problems = Problems()
        source = _SomeHosts(TreeSource(repo, commit.tree, self.label), hosts)
        return load_fleet(source, problems), problems.items


def _load_fleet_parallel(
    repo: pygit2.Repository,
    commit: pygit2.Commit,
    names: list[str],
    workers: int,
    problems: Problems,
) -> Fleet:
    part = _FleetPart(repo.path, str(commit.id), f"main ({commit.short_id})")
    size = (len(names) + workers * 4 - 1) // (workers * 4)
    parts = [names[i : i + size] for i in range(0, len(names), size)]
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        results = pool.map(part.load, parts)  # a small value: sent with each part
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


def subject(message: str | None) -> str:
    """A commit message's first line ("" when empty)."""
    text = (message or "").strip()
    return text.splitlines()[0] if text else ""


def pull_request_number(message: str) -> int | None:
    first = subject(message)
    for pattern in _PULL_REQUEST:
        match = pattern.search(first)
        if match:
            return int(match.group(1))
    return None


_LAST_TIMESTAMP = 253402128000  # 9999-12-30: later dates cannot be computed with


def _utc(timestamp: int) -> datetime:
    """A commit's time (the signer's choice: any 64-bit number), kept computable."""
    return datetime.fromtimestamp(min(max(timestamp, 0), _LAST_TIMESTAMP), UTC)


def _descends(repo: pygit2.Repository, head: str, oid: str) -> bool:
    """Whether ``oid`` is ``head`` or below it (False when either cannot be read)."""
    if head == oid:
        return True
    try:
        return bool(repo.descendant_of(head, oid))
    except (KeyError, ValueError, pygit2.GitError):
        return False


def main_commit_info(commit: pygit2.Commit) -> MainCommit:
    message = commit.message or ""
    return MainCommit(
        sha=str(commit.id),
        time=_utc(commit.commit_time),
        author=commit.author.name,
        email=commit.author.email,
        subject=subject(message),
        pull_request=pull_request_number(message),
    )


def first_parents(
    repo: pygit2.Repository, head: str | pygit2.Oid, *, stop: str | None = None
) -> Iterable[pygit2.Commit]:
    """``head`` and its first parents, newest first, leaving out ``stop`` and everything
    below it; nothing when ``head`` cannot be read."""
    try:
        walker = repo.walk(pygit2.Oid(hex=head) if isinstance(head, str) else head)
        walker.simplify_first_parent()
        if stop is not None:
            walker.hide(pygit2.Oid(hex=stop))
    except (KeyError, ValueError, pygit2.GitError):
        return ()
    return walker


def _stopped_at(last: pygit2.Commit | None, stop: str) -> bool:
    """Whether a walk down to ``stop`` ended on it (else ``stop`` is not below the head:
    the branch was rewritten)."""
    return last is not None and bool(last.parent_ids) and str(last.parent_ids[0]) == stop


def read_main_history(repo: pygit2.Repository, head: pygit2.Commit) -> tuple[MainCommit, ...]:
    """The newest main commits along first parents (merges are how pull requests land)."""
    chain = itertools.islice(first_parents(repo, head.id), MAIN_HISTORY)
    return tuple(main_commit_info(commit) for commit in chain)


def find_main_commit(repo: pygit2.Repository, sha: str) -> MainCommit | None:
    try:
        obj = repo.get(sha)
    except (ValueError, pygit2.GitError):
        return None
    return main_commit_info(obj) if isinstance(obj, pygit2.Commit) else None


MAX_ENROLMENTS = 50  # shown on the overview; more is a queue to clear, not to render


def enrolments(repo: pygit2.Repository, head: pygit2.Commit) -> tuple[Enrolment, ...]:
    """The pending enrol/<host> branches, each checked as `gitops enroll list` does."""
    if not any(name.startswith(ENROLL_PREFIX) for name in repo.references):
        return ()
    return tuple(
        Enrolment(p.host, str(p.commit), p.problems)
        for p in enrolment.pending(repo, head)[:MAX_ENROLMENTS]
    )


def orphans(
    hosts: set[str], deploys: dict[str, str], reports: dict[str, str]
) -> tuple[Orphan, ...]:
    found = []
    for prefix, heads in ((DEPLOY_PREFIX, deploys), (REPORTS_PREFIX, reports)):
        for name in sorted(heads.keys() - hosts):
            found.append(Orphan(f"{branch_name(prefix)}{name}", "no hosts/<host>/host.yaml"))
    return tuple(found)


def _next_floor(
    floor: str | None, deploys: tuple[DeployEntry, ...], head: str | None, rewind: Rewind | None
) -> str | None:
    """The deploy head this site saw verified, which later heads must descend from: the
    current head once it verifies and is not rewound."""
    top = deploys[0] if deploys else None
    if rewind is None and top is not None and top.oid == head and top.verified:
        return top.oid
    return floor


@dataclass(frozen=True)
class _ReportsRead:
    entries: tuple[ReportEntry, ...]  # newest first
    latest: tuple[Parsed, ...]  # HostData.latest
    truncated: bool  # older reports exist beyond what was read
    reached_stop: bool = True  # False: the old head is not below the new one
    older: str | None = None  # a quick read: where a later build reads on


def _counted_found(parsed: Sequence[Parsed], now: datetime) -> bool:
    """Whether ``parsed`` (newest first) holds a report to count: one not dated ahead."""
    return any(item.report.time <= now + CLOCK_SKEW for item in parsed)


def _until_counted(parsed: Iterable[Parsed], now: datetime) -> tuple[Parsed, ...]:
    """``parsed`` (newest first) down to the first report not dated in the future."""
    kept = []
    for item in parsed:
        kept.append(item)
        if item.report.time <= now + CLOCK_SKEW:
            break
    return tuple(kept)


@dataclass
class HostReader:
    """Reads hosts' refs in one process; ``lookup`` answers cached verdicts, ``new`` collects
    the verdicts computed here (for the cache)."""

    repo: pygit2.Repository
    lookup: VerdictLookup = lambda _commit, _key: None
    new: list[tuple[str, str, Verdict]] = field(default_factory=list)
    store: VerdictReader | None = None  # verdicts of earlier builds (any code version)
    walks: commitgraph.Walks | None = None  # over the repository's commit-graph

    def __post_init__(self) -> None:
        self.walks = commitgraph.Walks(self.repo)

    def verdict(self, oid: str, trust: AllowedSigners, key_id: str) -> Verdict:
        """A commit's signature verdict, checked once per build and cache."""
        return self._verdict(oid, trust, key_id)

    def _verdict(self, oid: str, trust: AllowedSigners, key_id: str) -> Verdict:
        known = self.lookup(oid, key_id)
        if known is None and self.store is not None:
            known = self.store.get(oid, trust)
        if known is not None:
            return known
        found = verdict(self.repo, oid, trust)
        self.new.append((oid, key_id, found))
        if self.store is not None:
            self.store.note(oid, trust, found)
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
        now: datetime,
        quick: bool = False,
    ) -> HostData:
        """What ``name``'s refs hold, read on from ``previous``. ``quick``: a first read
        takes the newest QUICK_READ reports only, and older ones wait for a later build
        (``HostData.older``); without it, what an earlier quick read left is read now."""
        key_id = host.key.fingerprint if host is not None and host.key is not None else ""
        trust = host.trust() if host is not None else AllowedSigners()
        reuse_reports = previous is not None and previous.key_id == key_id
        reuse_deploys = previous is not None and previous.publishers_id == publishers_id
        reports = self._reports(
            reports_head, trust, key_id, previous if reuse_reports else None, now, quick
        )
        deploys = self._deploys(
            deploy_head, publishers, publishers_id, previous if reuse_deploys else None
        )
        newest = next((r for r in reports.entries if r.verified), None)
        floor = previous.deploy_floor if previous is not None else None
        rewind = self._rewind(deploy_head, deploys, newest, floor)
        counts = Counter(entry.trust for entry in reports.entries)
        return HostData(
            name=name,
            key_id=key_id,
            publishers_id=publishers_id,
            reports_head=reports_head,
            deploy_head=deploy_head,
            reports=reports.entries,
            deploys=deploys,
            latest=reports.latest,
            truncated=reports.truncated,
            report_count=len(reports.entries),
            trust_counts=tuple(sorted(counts.items())),
            older=reports.older,
            dropped=self._dropped(reports_head, previous) if previous is not None else (),
            deploy_floor=_next_floor(floor, deploys, deploy_head, rewind),
            rewind=rewind,
        )

    def _dropped(self, head: str | None, previous: HostData) -> tuple[DroppedReport, ...]:
        """The reports the site saw that ``head`` no longer holds (the branch was rewritten
        or deleted), with those found before."""
        old = previous.reports_head
        if old is None or (head is not None and _descends(self.repo, head, old)):
            return previous.dropped
        gone = [
            DroppedReport(e.oid, e.when, e.result, e.trust)
            for e in previous.reports
            if head is None or not _descends(self.repo, head, e.oid)
        ]
        seen = {d.oid for d in gone}
        return (*gone, *(d for d in previous.dropped if d.oid not in seen))[:MAX_DROPPED]

    def _rewind(
        self,
        head: str | None,
        deploys: tuple[DeployEntry, ...],
        newest: ReportEntry | None,
        floor: str | None,
    ) -> Rewind | None:
        """Whether ``deploy/<host>`` is below what the host applied or what the site saw
        published before (a rollback the agent refuses)."""
        if head is None:
            return None
        applied = newest.deploy_applied if newest is not None else None
        chain = {d.oid for d in deploys}
        recovered = {d.recovers for d in deploys if d.verified and d.recovers}
        for commit, why in ((applied, "applied by the host"), (floor, "published before")):
            if commit is None or commit in chain or commit in recovered:
                continue
            if len(deploys) >= MAX_DEPLOYS and _descends(self.repo, head, commit):
                continue  # further down than we read
            return Rewind(head, commit, why)
        return None

    # -- reports ------------------------------------------------------------------

    def _reports(
        self,
        head: str | None,
        trust: AllowedSigners,
        key_id: str,
        previous: HostData | None,
        now: datetime,
        quick: bool = False,
    ) -> _ReportsRead:
        if head is None:
            return _ReportsRead((), (), False)
        if previous is not None and previous.reports_head == head:
            kept = _ReportsRead(previous.reports, previous.latest, previous.truncated)
            return self._read_on(kept, previous.older, trust, key_id, quick)
        stop = previous.reports_head if previous is not None else None
        limit = QUICK_READ if quick and previous is None else None
        read = self._read_reports(head, stop, trust, key_id, now, limit)
        if previous is None:
            return read
        if not read.reached_stop:
            # The branch was rewritten: what we cached is not below the new head.
            return self._reports(head, trust, key_id, None, now, quick)
        merged = thin([*read.entries, *previous.reports])
        kept = _ReportsRead(
            merged,
            _until_counted((*read.latest, *previous.latest), now),
            previous.truncated or len(merged) < len(read.entries) + len(previous.reports),
        )
        return self._read_on(kept, previous.older, trust, key_id, quick)

    def _read_on(
        self,
        kept: _ReportsRead,
        older: str | None,
        trust: AllowedSigners,
        key_id: str,
        quick: bool,
    ) -> _ReportsRead:
        """``kept``, and the reports below it an earlier quick read left for later (now,
        unless this read is quick too)."""
        if older is None or quick or not kept.entries:
            return replace(kept, older=older)
        entries = list(kept.entries)
        days = {_day(e.commit_time) for e in entries}
        limit = int((entries[0].commit_time - WINDOW).timestamp())
        truncated = kept.truncated
        assert self.walks is not None
        for step in self.walks.walk(older):
            moment = min(max(step.time, 0), _LAST_TIMESTAMP)
            if len(entries) >= MAX_DETAILED and moment < limit:
                truncated = True
                break
            day = moment // 86400
            if len(entries) < MAX_DETAILED or day not in days:
                read = self._read_step(step.sha, moment, trust, key_id)
                if read is None:
                    break
                entries.append(read[0])
            days.add(day)
        return _ReportsRead(tuple(entries), kept.latest, truncated)

    def _read_reports(
        self,
        head: str,
        stop: str | None,
        trust: AllowedSigners,
        key_id: str,
        now: datetime,
        limit: int | None = None,
    ) -> _ReportsRead:
        """The reports above ``stop`` (all when None: the newest MAX_DETAILED, then one a
        day back to WINDOW before the newest). ``limit``: stop after that many, once the
        one to count is among them, and say where to read on (``older``)."""
        entries: list[ReportEntry] = []
        parsed: list[Parsed] = []
        days: set[int] = set()
        newest: int | None = None
        truncated = False
        last: commitgraph.Step | None = None
        window = int(WINDOW.total_seconds())
        # Commit ids and times come from the commit-graph where there is one: only the
        # commits kept are read (~80 of a month's ~720 hourly reports).
        assert self.walks is not None
        for index, step in enumerate(self.walks.walk(head, stop)):
            moment = min(max(step.time, 0), _LAST_TIMESTAMP)  # as _utc keeps it
            newest = moment if newest is None else newest
            if limit is not None and index >= limit and _counted_found(parsed, now):
                return _ReportsRead(
                    tuple(entries), _until_counted(parsed, now), False, older=step.sha
                )
            if index >= MAX_DETAILED and stop is None and moment < newest - window:
                truncated = True
                break
            day = moment // 86400
            if index < MAX_DETAILED or day not in days:
                read = self._read_step(step.sha, moment, trust, key_id)
                if read is None:
                    break
                entry, report = read
                entries.append(entry)
                if entry.verified and report is not None and len(parsed) < MAX_PARSED:
                    parsed.append(Parsed(entry.oid, report))
            days.add(day)
            last = step
        reached = stop is None or (last is not None and last.parent == stop)
        latest = _until_counted(parsed, now)
        return _ReportsRead(tuple(entries), latest, truncated, reached)

    def _read_step(
        self, sha: str, moment: int, trust: AllowedSigners, key_id: str
    ) -> tuple[ReportEntry, Report | None] | None:
        """The report at ``sha`` of a walk (None when it is not a commit here). The commit
        object itself (never the graph) says which tree it signed."""
        commit = self.repo.get(sha)
        if not isinstance(commit, pygit2.Commit):
            return None
        return self._report_entry(commit, _utc(moment), trust, key_id)

    def _report_entry(
        self, commit: pygit2.Commit, when: datetime, trust: AllowedSigners, key_id: str
    ) -> tuple[ReportEntry, Report | None]:
        sha = str(commit.id)
        state, detail, _principal = self._verdict(sha, trust, key_id)
        status = _status_json(self.repo, commit.tree_id)
        if status is None:
            return ReportEntry(sha, when, state, detail, error="no status.json in the commit"), None
        try:
            report = Report.from_json(status)  # the one parse of this status.json
        except ValueError as err:
            error = str(err)[:MAX_ERROR]  # the host's bytes may be in it: keep it short
            return ReportEntry(sha, when, state, detail, error=error), None
        return report_entry(sha, when, state, detail, report), report

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
        entries, reached = self._read_deploys(head, stop, publishers, publishers_id)
        if previous is None:
            return entries
        if reached:
            return (*entries, *previous.deploys)[:MAX_DEPLOYS]
        if len(entries) < MAX_DEPLOYS:  # rewritten: read it all again
            return self._deploys(head, publishers, publishers_id, None)
        return entries

    def _read_deploys(
        self, head: str, stop: str | None, publishers: AllowedSigners, publishers_id: str
    ) -> tuple[tuple[DeployEntry, ...], bool]:
        """The newest MAX_DEPLOYS deploy commits above ``stop``, and whether the walk
        ended on ``stop``."""
        entries: list[DeployEntry] = []
        last: pygit2.Commit | None = None
        for commit in itertools.islice(first_parents(self.repo, head, stop=stop), MAX_DEPLOYS):
            sha = str(commit.id)
            state, detail, principal = self._verdict(sha, publishers, publishers_id)
            trailers = commits.trailers(commit.message or "")
            entries.append(
                DeployEntry(
                    oid=sha,
                    time=_utc(commit.commit_time),
                    trust=state,
                    trust_detail=detail,
                    principal=principal,
                    source_commit=trailers.get(TRAILER_SOURCE),
                    subject=subject(commit.message),
                    expires=trailers.get(TRAILER_EXPIRES),
                    recovers=trailers.get(TRAILER_RECOVERS),
                )
            )
            last = commit
        return tuple(entries), stop is not None and _stopped_at(last, stop)


def report_entry(
    sha: str, when: datetime, state: Trust, detail: str, report: Report
) -> ReportEntry:
    result = report.result
    system = report.system
    intern = sys.intern
    return ReportEntry(
        oid=sha,
        commit_time=when,
        trust=state,
        trust_detail=detail,
        time=report.time,
        result=result,
        reason=report.reason,
        deploy_seen=intern(report.deploy_seen) if report.deploy_seen else None,
        deploy_applied=intern(report.deploy_applied) if report.deploy_applied else None,
        source_commit=intern(report.source_commit) if report.source_commit else None,
        generation=system.generation,
        store_path=intern(system.store_path) if system.store_path else None,
        current_system=intern(system.current_system) if system.current_system else None,
        nixos_version=intern(system.nixos_version) if system.nixos_version else None,
        reboot_required=system.reboot_required,
        action=intern(report.action),
        log_tail=report.log_tail[-LOG_TAIL_LIMIT:] if result in FAILURES else "",
        changes=report.changes,
        commands=tuple(replace(a, output=a.output[:COMMAND_OUTPUT_LIMIT]) for a in report.commands),
        reboot_needed_since=report.reboot_needed_since,
    )


def _status_json(repo: pygit2.Repository, tree_id: pygit2.Oid) -> bytes | None:
    """``status.json`` of a report commit, given its tree (what
    gitops.report_commits.read_report_commit reads; the commit object is not needed)."""
    try:
        tree = repo.get(tree_id)
        entry = tree[STATUS_FILE] if isinstance(tree, pygit2.Tree) else None
    except (KeyError, ValueError, pygit2.GitError):
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
        if entry.commands:  # acknowledgements of commands are not thinned away
            kept.append(entry)
        elif day not in days:
            days.add(day)
            kept.append(entry)
    return tuple(kept)
