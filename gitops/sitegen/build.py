"""One site build, in named phases:

1. **read main** (:func:`_read_main`): hosts, keys, publishers, policies, settings, and the
   heads of every ``deploy/`` and ``reports/`` branch;
2. **reuse** (:func:`_reuse`): hosts whose derived row is still valid cost one lookup and
   two hard links (their pages, from the cache's page store);
3. **refresh** (:func:`_refresh`): every other host is brought up to date end to end in a
   worker process (:mod:`gitops.sitegen.workers`: collect, verify, judge, derive, render);
4. **write** (:func:`_write_site`): the aggregate pages and their JSON, from derived rows
   only (:mod:`gitops.sitegen.overview`), the assets and the allowed-signers files;
5. **swap** (:mod:`gitops.sitegen.outdir`): the new directory replaces ``--out`` in one
   step.

The main process holds derived rows only, never a host's history.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from gitops import __version__
from gitops.errors import GitopsError
from gitops.fleet import commands as fleet_commands
from gitops.fleet.model import Fleet, FleetSettings
from gitops.fleet.policies import Policy
from gitops.fleet.source import TreeSource
from gitops.protocol import format_time
from gitops.sitegen import (
    collect,
    export,
    metrics,
    notify,
    outdir,
    resources,
    software,
    software_pages,
    states,
    vulnscan,
    workers,
)
from gitops.sitegen.cache import Cache, cache_dir_for, thaw_collector
from gitops.sitegen.derived import Derived, PageFile, Rules, age_flips
from gitops.sitegen.model import MainCommit
from gitops.sitegen.overview import CHART_DAYS, AggregatePage, Overview, Sources, aggregate_pages
from gitops.sitegen.render import Renderer
from gitops.sitegen.rollout import rollout_page
from gitops.sitegen.verify import trust_id
from gitops.trust.allowed_signers import AllowedSigners

CACHE_FLUSH_ROWS = 500  # host rows written to the cache at a time
# Hosts whose whole history (a month of reports, the SBOM search) one build reads. More
# hosts never read than this (a site's first build of a large fleet): each of them gets
# its newest reports (collect.QUICK_READ), the current state of every host, and the
# next builds read on, this many hosts each.
HISTORY_HOSTS = 1000


@dataclass
class BuildStats:
    hosts: int = 0
    hosts_read: int = 0
    verified_now: int = 0
    pages_rendered: int = 0
    pages_reused: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)
    states: dict[str, int] = field(default_factory=dict)  # hosts by state
    invalid_reports: dict[str, int] = field(default_factory=dict)  # host -> refused reports
    flagged: dict[str, list[str]] = field(default_factory=dict)  # host -> its flags
    alerts: dict[str, int] = field(default_factory=dict)  # webhook and status deliveries
    history_pending: int = 0  # hosts whose older reports a later build reads

    def count(self, derived: Mapping[str, Derived]) -> None:
        """What the hosts came to, for the summary."""
        self.states = dict(Counter(str(d.status.state) for d in derived.values()))
        self.invalid_reports = {
            n: d.invalid_reports for n, d in derived.items() if d.invalid_reports
        }
        self.flagged = {
            n: [str(f) for f in d.status.flags] for n, d in derived.items() if d.status.flags
        }
        self.history_pending = sum(1 for d in derived.values() if d.history_pending)

    def to_json(self) -> dict[str, object]:
        """``gitops site build --json`` (docs/dashboard.md, "Build summary")."""
        return {
            "schema": 1,
            "hosts": self.hosts,
            "states": self.states,
            "invalid_reports": self.invalid_reports,
            "flagged_hosts": self.flagged,
            "alerts": self.alerts,
            "hosts_read": self.hosts_read,
            "signatures_checked": self.verified_now,
            "history_pending": self.history_pending,
            "pages_rendered": self.pages_rendered,
            "pages_reused": self.pages_reused,
            "seconds": round(self.seconds, 3),
            "phases": self.phases,
        }

    def summary(self) -> str:
        later = (
            f"; older reports of {self.history_pending} host(s) are read in the next builds"
            if self.history_pending
            else ""
        )
        return (
            f"site: {self.hosts} hosts ({self.hosts_read} read from git, "
            f"{self.verified_now} signatures checked) in {self.seconds:.1f} s{later}"
        )

    def phase(self, name: str, since: float) -> float:
        """Record the phase that began at ``since``; returns the time the next begins."""
        now = time.monotonic()
        self.phases[name] = round(now - since, 3)
        return now


@dataclass(frozen=True)
class MainSummary:
    """What every build needs from main, small enough to load in a few milliseconds."""

    settings: FleetSettings
    policies: list[Policy]
    names: list[str]
    host_signers: str  # allowed-signers lines of every host key (for the audit page)

    @classmethod
    def of(cls, fleet: Fleet, policies: list[Policy]) -> MainSummary:
        lines = "".join(
            f'{h.name} namespaces="git" {h.key.openssh()}\n'
            for h in fleet.hosts.values()
            if h.key is not None
        )
        return cls(fleet.settings, policies, sorted(fleet.hosts), lines)


@dataclass(frozen=True)
class Main:
    """Main, the refs and the settings, as one build reads them."""

    repo: pygit2.Repository
    head: pygit2.Commit
    summary: MainSummary
    fleet: Fleet | None  # parsed only when the summary was not cached
    deploys: dict[str, str]  # host -> head of deploy/<host>
    reports: dict[str, str]  # host -> head of reports/<host>
    publishers: AllowedSigners
    docs: str  # the handbook link
    rules: Rules
    vulns: vulnscan.Scanner | None = None  # the feed, for host pages, policies, vulnerabilities


def build(
    repo_path: Path,
    out: Path,
    *,
    now: datetime | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    background_cleanup: bool = False,
    send_alerts: bool = True,
    history_hosts: int = HISTORY_HOSTS,
    progress: Callable[[str], None] = lambda _text: None,
) -> BuildStats:
    """Build the site of the repository at ``repo_path`` into ``out``; the whole history
    of at most ``history_hosts`` hosts is read (the others' newest reports only)."""
    started = time.monotonic()
    stats = BuildStats()
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    out = out.absolute()
    processes = workers or os.cpu_count() or 1
    repo = collect.open_repo(repo_path)
    head = collect.main_head(repo)
    outdir.check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GitopsError(f"{out.parent}: cannot create: {err.strerror}") from err
    cache = Cache(cache_dir_for(out), resources.code_id()) if use_cache else None
    tmp = outdir.new_tmp(out)
    if cache is not None:
        outdir.sweep_leftovers(out)  # we hold the cache's lock: no other build runs
    links: list[_Linker] = []  # at most one; waited for before tmp is removed
    try:
        mark = time.monotonic()
        main = _read_main(repo, head, out, moment, cache, processes)
        progress(
            f"site: main {head.short_id}: {len(main.summary.names)} hosts, "
            f"{len(main.summary.policies)} policies"
        )
        mark = stats.phase("read main", mark)
        sets = software_pages.PackageSets(cache.directory if cache is not None else None)
        derived, render_unlinked = _hosts(
            repo_path, main, tmp, cache, processes, stats, progress, sets, history_hosts, links
        )
        stats.count(derived)
        mark = stats.phase("hosts", mark)
        _write_site(main, derived, tmp, cache)
        mark = stats.phase("aggregate pages", mark)
        templates = cache.directory / "templates" if cache is not None else None
        settings, rules = main.summary.settings, main.rules
        software_pages.write(
            main.repo, settings, rules, main.docs, derived, tmp, sets, templates, main.vulns
        )
        mark = stats.phase("software pages", mark)
        render_unlinked()
        mark = stats.phase("unchanged pages", mark)
        sent = notify.run(
            out,
            tmp,
            settings.alerts,
            derived,
            fleet=settings.name,
            main=str(head.id),
            now=moment,
            send=send_alerts,
        )
        stats.alerts = {"sent": sent.sent, "failed": sent.failed, "dropped": sent.dropped}
        stats.phase("alerts", mark)
        outdir.swap_into(tmp, out, background=background_cleanup)
    finally:
        for linker in links:
            with contextlib.suppress(Exception):  # the build's own error is the one raised
                linker.failed()
        shutil.rmtree(tmp, ignore_errors=True)
        if cache is not None:
            cache.close()
        thaw_collector()
    stats.seconds = time.monotonic() - started
    return stats


# -- 1. read main -----------------------------------------------------------------------


def _load_fleet(
    repo: pygit2.Repository, head: pygit2.Commit, cache: Cache | None, processes: int
) -> Fleet:
    main_sha = str(head.id)
    loaded = cache.get_blob(f"main:{main_sha}") if cache is not None else None
    if isinstance(loaded, Fleet):
        return loaded
    fleet, _ = collect.load_main(repo, head, workers=processes)
    if cache is not None:
        cache.put_blob(f"main:{main_sha}", fleet, prefix="main:")
    return fleet


def _read_main(
    repo: pygit2.Repository,
    head: pygit2.Commit,
    out: Path,
    now: datetime,
    cache: Cache | None,
    processes: int,
) -> Main:
    main_sha = str(head.id)
    # What every build needs from main; the full fleet (every host's key and fields) is
    # unpickled or parsed only when some host must be refreshed.
    summary = cache.get_blob(f"mainsummary:{main_sha}") if cache is not None else None
    fleet: Fleet | None = None
    if not isinstance(summary, MainSummary):
        fleet = _load_fleet(repo, head, cache, processes)
        summary = MainSummary.of(fleet, collect.load_main_policies(repo, head))
        if cache is not None:
            cache.put_blob(f"mainsummary:{main_sha}", summary, prefix="mainsummary:")
    settings, policies = summary.settings, summary.policies
    deploys, reports = collect.list_heads(repo)
    docs = outdir.docs_link(settings.site.docs_url, out)
    cache_dir = cache.directory if cache is not None else None
    feed = vulnscan.load_feed(Path(repo.workdir or repo.path), settings, cache_dir)
    global_id = hashlib.sha256(
        repr((resources.code_id(), settings, policies, docs, feed.ident)).encode()
    ).hexdigest()
    rules = Rules(
        policies=policies,
        now=now,
        stale_after=settings.stale_after,
        global_id=global_id,
        main_sha=main_sha,
        window=tuple(states.day_ends(now, CHART_DAYS)[:-1]),
        flips=age_flips(policies),
    )
    publishers = settings.publisher_trust()
    packages = software_pages.PackageSets.directory_in(cache_dir)
    scanner = vulnscan.Scanner(feed, packages, settings.vulnerabilities.exemptions)
    return Main(repo, head, summary, fleet, deploys, reports, publishers, docs, rules, scanner)


# -- 2. and 3. the hosts: reuse what is still valid, refresh the rest ---------------------


def _hosts(
    repo_path: Path,
    main: Main,
    tmp: Path,
    cache: Cache | None,
    processes: int,
    stats: BuildStats,
    progress: Callable[[str], None],
    sets: software_pages.PackageSets,
    history_hosts: int,
    links: list[_Linker],
) -> tuple[dict[str, Derived], Callable[[], None]]:
    """Every host's derived row, its pages in ``tmp/hosts``; the unchanged pages are
    still being linked (``links``) until the returned step, which renders any that
    could not be, has run."""
    (tmp / "hosts").mkdir(parents=True)
    old = cache.load_derived() if cache is not None else {}
    old_pages = {page.path: page for d in old.values() for page in d.pages}
    store = outdir.PageStore(tmp, cache.pages_dir if cache is not None else None)
    derived, stale = _reuse(main, old)
    quick = _history_budget(main.summary.names, old, derived, stale, history_hosts)
    reused = dict(derived)
    stats.hosts, stats.pages_reused = len(main.summary.names), len(derived)

    def job() -> workers.Job:
        return replace(_job(repo_path, main, tmp, cache, old_pages, processes), quick=quick)

    if stale:
        progress(f"site: {len(stale)} host(s) to bring up to date (new commits or time passed)")
        _refresh(job(), stale, processes, derived, cache, stats, sets)
    links.append(_Linker(store, reused, old_pages))
    if cache is not None:
        removed = set(old) - set(main.summary.names)
        cache.forget_hosts(removed)
        if stale or removed:
            cache.save_derived(derived, stale, snapshot=bool(removed))
        cache.prune_pages(
            {page.digest for d in derived.values() for page in d.pages},
            {page.digest for page in old_pages.values()},
            sweep=not old,
        )
    progress(f"site: {len(stale)} host(s) refreshed, {stats.pages_reused} unchanged")

    def render_unlinked() -> None:
        missing = links[0].failed()
        if not missing:
            return
        # Their rows stay as they were (the data behind them did not change): only their
        # pages are rendered again.
        stats.pages_reused -= len(missing)
        _refresh(replace(job(), quick=frozenset(missing)), missing, 1, derived, cache, stats, sets)
        if cache is not None:
            cache.save_derived(derived, missing, snapshot=False)

    return derived, render_unlinked


def _reuse(main: Main, old: Mapping[str, Derived]) -> tuple[dict[str, Derived], list[str]]:
    """The rows still valid (their pages are linked into the new site by a _Linker), and
    the hosts to refresh."""
    rules = main.rules
    derived: dict[str, Derived] = {}
    stale: list[str] = []
    for name in main.summary.names:
        row = old.get(name)
        ident = rules.identity(name, main.reports.get(name), main.deploys.get(name))
        if row is not None and row.valid(ident, rules.window_id, rules.now):
            derived[name] = row
        else:
            stale.append(name)
    return derived, stale


class _Linker:
    """Hard-links the pages of the rows still valid into the new site in a forked child:
    the kernel's work (20,000 links at 10,000 hosts) done on the other core while this
    process renders the aggregate pages (a thread would wait for the GIL after every
    link). ``failed`` waits, and names the hosts whose pages were not all in the page
    store (a later step renders them). Without the child (it could not be made, or it
    died) the links are made here."""

    def __init__(
        self,
        store: outdir.PageStore,
        rows: Mapping[str, Derived],
        old_pages: Mapping[str, PageFile],
    ) -> None:
        self._work = (store, list(rows.items()), old_pages)
        self._pid: int | None = None
        self._pipe: int | None = None
        self._answer: list[str] | None = None
        if not rows:
            self._answer = []
            return
        read, write = os.pipe()
        try:
            pid = os.fork()
        except OSError:
            os.close(read)
            os.close(write)
            return
        if pid == 0:  # the child: link, say which failed, leave without any clean-up
            os.close(read)
            code = 1
            try:
                text = "\n".join(self._link()).encode()
                view = memoryview(text)
                while view:
                    view = view[os.write(write, view) :]
                code = 0
            finally:
                os._exit(code)
        os.close(write)
        self._pid, self._pipe = pid, read

    def _link(self) -> list[str]:
        store, rows, old_pages = self._work
        return [name for name, row in rows if not software.relink(store, row, old_pages)]

    def failed(self) -> list[str]:
        if self._answer is None:
            self._answer = self._wait()
        return self._answer

    def _wait(self) -> list[str]:
        if self._pid is None or self._pipe is None:
            return self._link()
        with os.fdopen(self._pipe, "rb") as answer:
            text = answer.read().decode()
        _, status = os.waitpid(self._pid, 0)
        if os.waitstatus_to_exitcode(status) != 0:
            return self._link()  # what the child linked stays; the rest is linked here
        return text.split("\n") if text else []


def _history_budget(
    names: Sequence[str],
    old: Mapping[str, Derived],
    derived: dict[str, Derived],
    stale: list[str],
    budget: int,
) -> frozenset[str]:
    """Spend this build's budget of whole histories. Hosts never read come first: all of
    them at once when they fit, else every one of them is read quickly (the current
    state of a large fleet first). What is left goes to hosts an earlier build read
    quickly (those otherwise up to date move from ``derived`` to ``stale``). Returns the
    hosts to read quickly."""
    unread = [n for n in stale if n not in old]
    if len(unread) > budget:
        return frozenset(n for n in stale if n not in old or old[n].history_pending)
    behind = [n for n in stale if n in old and old[n].history_pending]
    waiting = [n for n in names if n in derived and derived[n].history_pending]
    chosen = [*unread, *behind, *waiting][:budget]
    for name in chosen[len(unread) + len(behind) :]:
        del derived[name]
        stale.append(name)
    return frozenset(unread + behind) - frozenset(chosen)


def _job(
    repo_path: Path,
    main: Main,
    tmp: Path,
    cache: Cache | None,
    old_pages: Mapping[str, PageFile],
    processes: int,
) -> workers.Job:
    settings = main.summary.settings
    return workers.Job(
        rules=main.rules,
        fleet=main.fleet or _load_fleet(main.repo, main.head, cache, processes),
        site=settings.site,
        docs=main.docs,
        repo_path=repo_path,
        cache_path=cache.path if cache is not None else None,
        verdicts=cache.directory if cache is not None else None,
        templates=cache.directory / "templates" if cache is not None else None,
        publishers=main.publishers,
        publishers_id=trust_id(main.publishers),
        reports=main.reports,
        deploys=main.deploys,
        tmp=tmp,
        store=cache.pages_dir if cache is not None else None,
        old_pages=old_pages,
        vulns=main.vulns,
    )


def _refresh(
    job: workers.Job,
    names: list[str],
    processes: int,
    derived: dict[str, Derived],
    cache: Cache | None,
    stats: BuildStats,
    sets: software_pages.PackageSets,
) -> None:
    """Bring ``names`` up to date in worker processes; their rows go into ``derived``,
    the data they read into the cache."""
    rows: list[tuple[str, bytes]] = []
    for batch in workers.run(job, names, processes):
        for item in batch.refreshed:
            derived[item.derived.status.name] = item.derived
            if item.row is not None:
                rows.append(item.row)
                stats.hosts_read += 1
            stats.pages_rendered += item.rendered
            if item.packages is not None:
                sets.add(*item.packages)
        stats.verified_now += batch.verified
        if cache is not None:
            cache.verdicts.add(batch.verdicts)
        if cache is not None and len(rows) >= CACHE_FLUSH_ROWS:
            cache.save_host_rows(rows)
            rows = []
    if cache is not None:
        cache.save_host_rows(rows)


# -- 4. write the aggregate pages ----------------------------------------------------------


def _main_commits(
    main: Main, derived: Mapping[str, Derived]
) -> tuple[tuple[MainCommit, ...], dict[str, MainCommit]]:
    """Main's newest commits (the audit trail), and every main commit a deploy commit names
    (older ones too: a host may run something published long ago)."""
    history = collect.read_main_history(main.repo, main.head)
    commits = {c.sha: c for c in history}
    wanted = {ref.source for d in derived.values() for ref in d.deploys if ref.source}
    for sha in wanted - commits.keys():
        found = collect.find_main_commit(main.repo, sha)
        if found is not None:
            commits[sha] = found
    return history, commits


def _write_site(main: Main, derived: Mapping[str, Derived], tmp: Path, cache: Cache | None) -> None:
    settings, rules = main.summary.settings, main.rules
    history, commits = _main_commits(main, derived)
    compiled = cache.directory / "templates" if cache is not None else None
    renderer = Renderer(settings.site, rules.now, main.docs, compiled=compiled)
    shutil.copytree(resources.assets_dir(), tmp / "assets")
    (tmp / outdir.MARKER).write_text(f"built by gitops {__version__}; safe to replace\n")
    names = main.summary.names
    view = Overview(rules.policies, rules.now, derived)
    sources = Sources(
        settings,
        names,
        history,
        commits,
        collect.orphans(set(names), main.deploys, main.reports),
        collect.enrolments(main.repo, main.head),
        fleet_commands.checked(
            settings.commander_trust(), fleet_commands.load(TreeSource(main.repo, main.head.tree))
        ),
    )
    common = {
        "now": rules.now,
        "settings": settings,
        "main": history[0] if history else None,
        "host_count": len(names),
        "history_pending": sum(1 for d in derived.values() if d.history_pending),
    }
    head = {"schema": export.SCHEMA, "built": format_time(rules.now)}
    staged = rollout_page(  # docs/rollout.md
        main.repo,
        settings,
        main.publishers,
        lambda: (main.fleet or _load_fleet(main.repo, main.head, cache, 1)).hosts,
        rules.now,
    )
    pages = (*aggregate_pages(view, sources), AggregatePage("rollout", "Rollout", *staged))
    for page in pages:
        html = renderer.render(
            f"{page.name}.html",
            root="",
            current=f"{page.name}.html",
            title=page.title,
            **common,
            **page.context,
        )
        (tmp / f"{page.name}.html").write_text(html, encoding="utf-8")
        (tmp / f"{page.name}.json").write_text(export.dumps({**head, **page.data}), "utf-8")
    fleet_metrics = metrics.render(derived, rules.policies, now=rules.now, main_sha=rules.main_sha)
    (tmp / metrics.FILE).write_bytes(fleet_metrics)
    keys = tmp / "keys"
    keys.mkdir()
    (keys / "publishers.allowed_signers").write_text(main.publishers.text())
    (keys / "hosts.allowed_signers").write_text(main.summary.host_signers)
