"""Bring hosts up to date, end to end, in worker processes: collect → verify → judge →
derive → render.

For each host the :class:`Worker` reads only the commits above its cached heads from git
(verifying each signature once), judges it, derives its row (:mod:`gitops.sitegen.derived`),
and renders its pages unless identical ones are in the page store. The main process
receives derived rows only, never a host's history.

Everything a worker needs is one :class:`Job`, handed to each pool process through the
pool's initializer; with fork it is inherited, not sent.
"""

from __future__ import annotations

import multiprocessing
import pickle
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pygit2

from gitops.fleet.model import Fleet, Host, SiteSettings
from gitops.sitegen import collect, metrics, software, states, vulnscan
from gitops.sitegen.cache import CacheReader, collector_paused
from gitops.sitegen.collect import HostReader
from gitops.sitegen.compliance import failing
from gitops.sitegen.derived import Derived, PageFile, Rules, derive, encode_samples
from gitops.sitegen.model import HostData, HostSoftware
from gitops.sitegen.outdir import PageStore
from gitops.sitegen.pages import HostPages, Judged, judge
from gitops.sitegen.render import Renderer
from gitops.sitegen.verdicts import NewVerdict, VerdictReader
from gitops.trust.allowed_signers import AllowedSigners

PARALLEL_MIN = 64  # below this many hosts to refresh, stay in one process
GIT_CACHE_BYTES = 16 << 20


@dataclass(frozen=True)
class Job:
    """What every worker needs for one build."""

    rules: Rules
    fleet: Fleet
    site: SiteSettings
    docs: str  # the handbook link
    repo_path: Path
    cache_path: Path | None  # the cache database (read-only here)
    verdicts: Path | None  # the directory of the verdict store (read-only here)
    templates: Path | None  # compiled templates, kept between builds
    publishers: AllowedSigners
    publishers_id: str
    reports: Mapping[str, str]  # host -> head of reports/<host>
    deploys: Mapping[str, str]  # host -> head of deploy/<host>
    tmp: Path  # the new site
    store: Path | None  # the page store
    old_pages: Mapping[str, PageFile]  # path -> what the previous build wrote there
    vulns: vulnscan.Scanner | None = None  # known vulnerabilities (host pages, policies)
    # Hosts read quickly this build (collect.QUICK_READ): this build's budget of whole
    # histories (build.HISTORY_HOSTS) went to others.
    quick: frozenset[str] = frozenset()


def host_paths(name: str) -> tuple[str, str]:
    return f"hosts/{name}.html", f"hosts/{name}.json"


@dataclass(frozen=True)
class Refreshed:
    """A worker's result for one host: its derived row (with the pages it wrote or
    linked), its new cache row when its data was read again."""

    derived: Derived
    row: tuple[str, bytes] | None  # (name, pickled HostData) when its data changed
    rendered: bool  # False when identical pages were linked from the page store
    packages: tuple[str, str] | None = None  # (id, text): a newly accepted SBOM's packages


@dataclass(frozen=True)
class Batch:
    refreshed: tuple[Refreshed, ...]
    verified: int  # signatures checked (not found in the cache)
    verdicts: tuple[NewVerdict, ...] = ()  # what was checked, for the verdict store


class Worker:
    """One process's tools for a job: a repository reader, a cache reader, a renderer."""

    def __init__(self, job: Job) -> None:
        self.job = job
        # Every object is read once: libgit2's object cache (256 MiB by default) would
        # only hold memory in each worker.
        pygit2.settings.cache_max_size(GIT_CACHE_BYTES)
        self.reader = HostReader(collect.open_repo(job.repo_path))
        if job.verdicts is not None:
            self.reader.store = VerdictReader(job.verdicts)
        self.cache = CacheReader(job.cache_path) if job.cache_path is not None else None
        self.renderer = Renderer(job.site, job.rules.now, job.docs, compiled=job.templates)
        self.pages = HostPages(self.renderer, job.rules.policies)
        self.store = PageStore(job.tmp, job.store)
        self.sboms = software.SbomFinder(self.reader.repo, self.reader.verdict, self.reader.walks)
        self.sent: set[str] = set()  # package sets this process has sent to the main one

    def close(self) -> None:
        if self.cache is not None:
            self.cache.close()
        if self.reader.store is not None:
            self.reader.store.close()

    def refresh(self, names: Sequence[str]) -> Batch:
        self.reader.new = []
        store = self.reader.store
        previous = self.cache.load_full(names) if self.cache is not None else {}
        done = tuple(self._refresh(name, previous.get(name)) for name in names)
        found: tuple[NewVerdict, ...] = ()
        if store is not None:
            found, store.new = tuple(store.new), []
            store.forget()
        return Batch(done, len(self.reader.new), found)

    def _refresh(self, name: str, previous: HostData | None) -> Refreshed:
        job, host = self.job, self.job.fleet.hosts[name]
        data = self.reader.collect(
            name,
            host,
            reports_head=job.reports.get(name),
            deploy_head=job.deploys.get(name),
            publishers=job.publishers,
            publishers_id=job.publishers_id,
            previous=previous,
            now=job.rules.now,
            quick=name in job.quick,
        )
        sbom = self.sboms.update(data, host, previous, quick=name in job.quick)
        data = replace(data, sbom=sbom.state)
        rules = job.rules
        ware = HostSoftware.of(data, host.cve_exemptions)
        scan = vulnscan.scan(job.vulns, ware, rules.now.date(), sbom.packages)
        judged = judge(data, host, rules.policies, rules.now, rules.stale_after, scan)
        status, answers = judged.status, judged.answers
        samples = encode_samples(states.samples(data, rules.window, rules.stale_after))
        facts = judged.report.facts if judged.report is not None else None
        row = self.renderer.inventory_row(host, status, failing(answers), facts)
        derived = derive(data, host, status, answers, rules, samples=samples, row_html=str(row))
        derived = replace(
            derived,
            page_key=vulnscan.page_key(derived.page_key, scan),
            metric_lines=metrics.host_lines(name, status, derived.outcomes),
        )
        pages = self.store.link(host_paths(name), derived.page_key, job.old_pages)
        rendered = pages is None
        if pages is None:
            pages = self._render(host, data, judged, derived.page_key)
        pages += software.sbom_file(
            self.reader.repo,
            self.store,
            name,
            sbom.state.found,
            rules.global_id,
            job.old_pages,
        )
        derived = replace(derived, software=ware)
        changed = previous is None or previous != data
        cache_row = (
            (name, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)) if changed else None
        )
        packages = sbom.packages
        if packages is not None and packages[0] in self.sent:
            packages = None  # hosts running the same packages: their set is sent once
        elif packages is not None:
            self.sent.add(packages[0])
        return Refreshed(replace(derived, pages=pages), cache_row, rendered, packages)

    def _render(self, host: Host, data: HostData, judged: Judged, key: str) -> tuple[PageFile, ...]:
        html, json = host_paths(host.name)
        return (
            self.store.write(html, key, self.pages.html(host, data, judged).encode()),
            self.store.write(json, key, self.pages.json(host, data, judged).encode()),
        )


class _PoolProcess:
    """The Worker of a pool process. The pool runs ``start`` once in each process it
    forks, with the job as its argument, then ``refresh`` (looked up by name) for each
    chunk: this class attribute is where the two meet. The main process never sets it."""

    worker: Worker | None = None

    @classmethod
    def start(cls, job: Job) -> None:
        cls.worker = Worker(job)

    @classmethod
    def refresh(cls, names: Sequence[str]) -> Batch:
        assert cls.worker is not None, "refresh runs only in a started pool process"
        return cls.worker.refresh(names)


def run(job: Job, names: Sequence[str], workers: int) -> Iterator[Batch]:
    """Refresh ``names``, in ``workers`` processes when there are many; batches come as
    they finish."""
    if not names:
        return
    if len(names) < PARALLEL_MIN or workers <= 1:
        worker = Worker(job)
        try:
            yield worker.refresh(names)
        finally:
            worker.close()
        return
    size = max(16, min(100, len(names) // (workers * 8) or 1))
    chunks = [names[i : i + size] for i in range(0, len(names), size)]
    context = multiprocessing.get_context("fork")
    with (
        context.Pool(workers, initializer=_PoolProcess.start, initargs=(job,)) as pool,
        collector_paused(),  # here the main process only receives rows
    ):
        yield from pool.imap_unordered(_PoolProcess.refresh, chunks)
