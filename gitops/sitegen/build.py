"""One site build: collect → judge → render, into a temporary directory that then
replaces ``--out`` in one rename.

Incremental by construction: a host whose refs, key and publishers did not change is
taken from the cache (a "light" row) without reading git; a page whose inputs did not
change is hard-linked from the cache's page store instead of rendered. Hosts that did
change are handled end to end in worker processes (read, verify, judge, render their
page, sample their 30-day history) so the main process only ever holds light rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2

from gitops import __version__
from gitops.allowed_signers import AllowedSigners
from gitops.errors import GitopsError
from gitops.fleet import Fleet, SiteSettings
from gitops.policies import Policy
from gitops.sitegen import audit, collect, compliance, export, resources, states
from gitops.sitegen.cache import Cache, CacheReader, cache_dir_for, digest_bytes, host_rows
from gitops.sitegen.charts import PALETTE, STATE_COLORS, Series, stacked_bars
from gitops.sitegen.collect import HostReader
from gitops.sitegen.model import STATE_ORDER, HostData, HostStatus, MainCommit, Problem, State
from gitops.sitegen.pages import Pages, judge
from gitops.sitegen.render import Renderer
from gitops.sitegen.verify import trust_id

MARKER = ".gitops-site"
PARALLEL_MIN = 64  # below this many hosts to read or pages to render, stay in one process
CHART_DAYS = 30
GIT_CACHE_BYTES = 16 << 20
MAX_PROBLEMS = 200
MAX_VERSIONS = 5

Samples = tuple[tuple[str, str | None], ...]  # (state, NixOS version) at each past day end
Written = tuple[str, str, str]  # page path, its key, its content digest


@dataclass
class BuildStats:
    hosts: int = 0
    hosts_read: int = 0
    verified_now: int = 0
    pages_rendered: int = 0
    pages_reused: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


@dataclass(frozen=True)
class Job:
    """What every worker needs; set before a pool forks, so it is inherited, not sent."""

    repo_path: Path
    cache_path: Path | None
    fleet: Fleet
    policies: list[Policy]
    site: SiteSettings
    docs: str
    now: datetime
    stale_after: int
    publishers: AllowedSigners
    publishers_id: str
    reports: dict[str, str]
    deploys: dict[str, str]
    global_id: str
    tmp: Path
    store: Path | None
    window: tuple[datetime, ...]  # the past day ends the chart samples


_JOB: list[Job] = []
_LOCAL: dict[str, Any] = {}  # per-process: repository, cache reader, renderer


def _job() -> Job:
    return _JOB[0]


def _cache_reader() -> CacheReader | None:
    job = _job()
    if job.cache_path is None:
        return None
    reader = _LOCAL.get("cache")
    if reader is None:
        reader = _LOCAL["cache"] = CacheReader(job.cache_path)
    assert isinstance(reader, CacheReader)
    return reader


def _host_reader() -> HostReader:
    reader = _LOCAL.get("reader")
    if reader is None:
        # Every object is read once: libgit2's object cache (256 MiB by default) would
        # only hold memory in each worker.
        pygit2.settings.cache_max_size(GIT_CACHE_BYTES)
        repo = collect.open_repo(_job().repo_path)
        reader = HostReader(repo)
        _LOCAL["reader"] = reader
    assert isinstance(reader, HostReader)
    return reader


def _renderer() -> Renderer:
    renderer = _LOCAL.get("renderer")
    if renderer is None:
        job = _job()
        renderer = _LOCAL["renderer"] = Renderer(job.site, job.now, job.docs)
    assert isinstance(renderer, Renderer)
    return renderer


def sample_key(data: HostData, stale_after: int, window: Sequence[datetime]) -> str:
    start = window[0].isoformat() if window else ""
    return (
        f"{data.reports_head}:{data.deploy_head}:{data.key_id}:{data.publishers_id}"
        f":{stale_after}:{start}"
    )


def _samples(data: HostData) -> Samples:
    job = _job()
    return tuple(
        (str(state), version)
        for state, version in states.samples(data, job.window, job.stale_after)
    )


@dataclass(frozen=True)
class Processed:
    """A worker's result for one changed host."""

    light: HostData
    rows: tuple[str, bytes, bytes]
    written: tuple[Written, ...]
    samples: Samples


def _render(pages: Pages, name: str) -> tuple[Written, ...]:
    key = pages.key(name)
    written = []
    for suffix, text in ((".html", pages.host_html(name)), (".json", pages.host_json(name))):
        path = f"hosts/{name}{suffix}"
        written.append((path, key, _write_page(path, text.encode())))
    return tuple(written)


def _pages_for(full: dict[str, HostData]) -> Pages:
    job = _job()
    statuses, answers = {}, {}
    for name, data in full.items():
        statuses[name], answers[name] = judge(
            data, job.fleet.hosts[name], job.policies, job.now, job.stale_after
        )
    return Pages(
        _renderer(), job.fleet, job.policies, full, statuses, answers, job.global_id, job.now
    )


def _process_changed(names: Sequence[str]) -> tuple[list[Processed], list[Any]]:
    """Worker: read, verify, judge and render hosts whose refs changed."""
    job = _job()
    reader = _host_reader()
    reader.new = []
    cached = _cache_reader()
    previous = cached.load_full(names) if cached is not None else {}
    full = {
        name: reader.collect(
            name,
            job.fleet.hosts.get(name),
            reports_head=job.reports.get(name),
            deploy_head=job.deploys.get(name),
            publishers=job.publishers,
            publishers_id=job.publishers_id,
            previous=previous.get(name),
        )
        for name in names
    }
    pages = _pages_for(full)
    result = []
    for name, data in full.items():
        rows = host_rows(data)
        result.append(Processed(data.light(), rows, _render(pages, name), _samples(data)))
    return result, reader.new


def _render_cached(names: Sequence[str]) -> list[Written]:
    """Worker: re-render host pages of unchanged hosts (their state or a policy changed)."""
    full = _load_full(names)
    pages = _pages_for(full)
    return [w for name in names for w in _render(pages, name)]


def _sample_cached(names: Sequence[str]) -> list[tuple[str, Samples]]:
    """Worker: re-sample the 30-day history of unchanged hosts (a new day began)."""
    full = _load_full(names)
    return [(name, _samples(full[name])) for name in names]


def _load_full(names: Sequence[str]) -> dict[str, HostData]:
    cached = _cache_reader()
    full = cached.load_full(names) if cached is not None else {}
    missing = [n for n in names if n not in full]
    if missing:
        raise GitopsError(
            f"the site cache has no data for {missing[0]}; delete the cache directory "
            "(.<out>.cache next to --out) and build again"
        )
    return full


def _write_page(path: str, data: bytes) -> str:
    job = _job()
    digest = digest_bytes(data)
    target = job.tmp / path
    target.unlink(missing_ok=True)  # never write through a hard link into the page store
    target.write_bytes(data)
    if job.store is not None:
        with contextlib.suppress(FileExistsError, OSError):
            os.link(target, job.store / digest)
    return digest


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _run(
    function: Callable[[Sequence[str]], Any], items: Sequence[str], workers: int
) -> Iterator[Any]:
    """``function`` over chunks of ``items``, in ``workers`` processes when there are many."""
    if not items:
        return
    if len(items) < PARALLEL_MIN or workers <= 1:
        yield function(items)
        _LOCAL.clear()
        return
    size = max(16, min(100, len(items) // (workers * 8) or 1))
    context = multiprocessing.get_context("fork")
    with context.Pool(workers) as pool:
        yield from pool.imap_unordered(function, _chunks(items, size))


def _reuse_pages(
    cache: Cache,
    old_pages: dict[str, tuple[str, str]],
    key: str,
    name: str,
    manifest: dict[str, tuple[str, str]],
) -> bool:
    """Hard-link a host's pages from the page store when their key is unchanged."""
    job = _job()
    found = []
    for suffix in (".html", ".json"):
        path = f"hosts/{name}{suffix}"
        old = old_pages.get(path)
        if old is None or old[0] != key:
            return False
        found.append((path, old))
    for path, old in found:
        try:
            os.link(cache.page_file(old[1]), job.tmp / path)
        except OSError:
            return False
        manifest[path] = old
    return True


# -- the pages -----------------------------------------------------------------------


def _problems(pages: Pages) -> list[Problem]:
    found = []
    for name, status in pages.statuses.items():
        if status.state is State.UP_TO_DATE and not status.flags:
            continue
        rank = status.urgency
        text = f"{status.state}: {status.reason}"
        kind = str(status.state)
        if status.state is State.UP_TO_DATE:
            kind = status.flags[0]
            text = status.drift_detail or status.flags[0]
        elif "drift" in status.flags and rank == 3:
            kind = "drift"
            text = status.drift_detail
        found.append(Problem(rank, kind, name, text, status.since))
    found.sort(key=lambda p: (p.rank, p.since or pages.now, p.host))
    return found


def _drift_groups(pages: Pages) -> list[tuple[str, list[HostStatus]]]:
    groups: dict[str, list[HostStatus]] = {}
    for status in pages.statuses.values():
        if status.state is not State.UP_TO_DATE:
            groups.setdefault(str(status.state), []).append(status)
        if "drift" in status.flags:
            groups.setdefault("drift", []).append(status)
    order = [str(s) for s in (State.FAILED, State.ROLLED_BACK, State.REJECTED)]
    order += ["drift"] + [
        str(s) for s in (State.UNVERIFIED, State.STALE, State.OFFLINE, State.PENDING, State.NEVER)
    ]
    return [
        (key, sorted(groups[key], key=lambda s: (s.since or pages.now, s.name)))
        for key in order
        if key in groups
    ]


def _version_label(version: str | None) -> str:
    if not version:
        return "unknown"
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else version


def _charts(
    pages: Pages, samples: dict[str, tuple[tuple[str, str | None], ...]]
) -> tuple[Any, Any, dict[str, Any]]:
    ends = states.day_ends(pages.now, CHART_DAYS)
    state_counts = [Counter[str]() for _ in ends]
    version_counts = [Counter[str]() for _ in ends]
    labels_of: dict[str | None, str] = {}
    never = str(State.NEVER)
    for name, status in pages.statuses.items():
        current = (str(status.state), status.nixos_version)
        for index, (state, version) in enumerate([*samples[name], current]):
            state_counts[index][state] += 1
            if version is not None and state != never:
                label = labels_of.get(version)
                if label is None:
                    label = labels_of[version] = _version_label(version)
                version_counts[index][label] += 1
    labels = [(moment.astimezone(UTC) - _SECOND).strftime("%m-%d") for moment in ends]
    labels[-1] = "now"
    state_series = [
        Series(str(s), STATE_COLORS[str(s)], [c[str(s)] for c in state_counts])
        for s in STATE_ORDER
        if any(c[str(s)] for c in state_counts)
    ]
    totals = Counter[str]()
    for counter in version_counts:
        totals.update(counter)
    top = [v for v, _ in totals.most_common(MAX_VERSIONS)]
    version_series = [
        Series(v, PALETTE[i % len(PALETTE)], [c[v] for c in version_counts])
        for i, v in enumerate(sorted(top))
    ]
    others = [sum(n for v, n in c.items() if v not in top) for c in version_counts]
    if any(others):
        version_series.append(Series("other", PALETTE[-1], others))
    chart_data = {
        "days": [e.strftime("%Y-%m-%dT%H:%M:%SZ") for e in ends],
        "states": {s.label: list(s.values) for s in state_series},
        "nixos_versions": {s.label: list(s.values) for s in version_series},
    }
    return (
        stacked_bars(labels, state_series, title="Hosts by state, each day of the last 30 days"),
        stacked_bars(
            labels, version_series, title="NixOS releases in use, each day of the last 30 days"
        ),
        chart_data,
    )


_SECOND = datetime(2000, 1, 1, 0, 0, 1, tzinfo=UTC) - datetime(2000, 1, 1, tzinfo=UTC)


# -- output directory ---------------------------------------------------------------


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = function(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange)
    return bool(result == 0)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise GitopsError(f"{out}: exists and is not a directory; choose a directory for --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise GitopsError(
            f"{out}: not empty and not a site built by gitops (no {MARKER} file); "
            "refusing to replace it: choose a new or empty directory"
        )


def swap_into(tmp: Path, out: Path) -> None:
    """Make ``tmp`` the new ``out``: a reader sees the old site or the new, never a mix."""
    if not out.exists():
        tmp.rename(out)
        return
    if _renameat2_exchange(tmp, out):
        shutil.rmtree(tmp, ignore_errors=True)
        return
    old = out.with_name(f".{out.name}.old-{os.getpid()}")
    out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


def docs_link(settings_docs_url: str, out: Path) -> str:
    if settings_docs_url:
        return settings_docs_url
    handbook = out.parent / "handbook" / "index.html"
    return "../handbook/index.html" if handbook.is_file() else ""


# -- the build ------------------------------------------------------------------------


def build(
    repo_path: Path,
    out: Path,
    *,
    now: datetime | None = None,
    workers: int | None = None,
    use_cache: bool = True,
    progress: Callable[[str], None] = lambda _text: None,
) -> BuildStats:
    started = time.monotonic()
    stats = BuildStats()
    moment = (now or datetime.now(UTC)).replace(microsecond=0)
    out = out.absolute()
    workers = workers or os.cpu_count() or 1
    repo = collect.open_repo(repo_path)
    head = collect.main_head(repo)
    _check_out(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise GitopsError(f"{out.parent}: cannot create: {err.strerror}") from err
    cache = Cache(cache_dir_for(out), resources.code_id()) if use_cache else None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(repo_path, repo, head, out, tmp, moment, workers, cache, stats, progress)
        swap_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if cache is not None:
            cache.close()
        _JOB.clear()
        _LOCAL.clear()
    stats.seconds = time.monotonic() - started
    return stats


def _phase(stats: BuildStats, name: str, since: float) -> float:
    now = time.monotonic()
    stats.phases[name] = round(now - since, 3)
    return now


def _build(
    repo_path: Path,
    repo: pygit2.Repository,
    head: pygit2.Commit,
    out: Path,
    tmp: Path,
    now: datetime,
    workers: int,
    cache: Cache | None,
    stats: BuildStats,
    progress: Callable[[str], None],
) -> None:
    mark = time.monotonic()
    main_sha = str(head.id)
    loaded = cache.get_blob(f"main:{main_sha}") if cache is not None else None
    if loaded is None:
        fleet, policies = collect.load_main(repo, head, workers=workers)
        if cache is not None:
            cache.put_blob(f"main:{main_sha}", (fleet, policies), prefix="main:")
    else:
        fleet, policies = loaded
    settings = fleet.settings
    progress(f"site: main {head.short_id}: {len(fleet.hosts)} hosts, {len(policies)} policies")
    deploys, reports = collect.list_heads(repo)
    publishers = settings.publisher_trust()
    publishers_id = trust_id(publishers)
    previous = cache.load_hosts() if cache is not None else {}
    docs = docs_link(settings.site.docs_url, out)
    global_id = hashlib.sha256(
        repr((resources.code_id(), settings, policies, docs)).encode()
    ).hexdigest()
    (tmp / "hosts").mkdir(parents=True)
    window = tuple(states.day_ends(now, CHART_DAYS)[:-1])
    _JOB[:] = [
        Job(
            repo_path=repo_path,
            cache_path=cache.path if cache is not None else None,
            fleet=fleet,
            policies=policies,
            site=settings.site,
            docs=docs,
            now=now,
            stale_after=settings.stale_after,
            publishers=publishers,
            publishers_id=publishers_id,
            reports=reports,
            deploys=deploys,
            global_id=global_id,
            tmp=tmp,
            store=cache.pages_dir if cache is not None else None,
            window=window,
        )
    ]
    mark = _phase(stats, "read main", mark)

    def unchanged(name: str) -> bool:
        old = previous.get(name)
        host = fleet.hosts[name]
        key_id = host.key.fingerprint if host.key is not None else ""
        return (
            old is not None
            and old.reports_head == reports.get(name)
            and old.deploy_head == deploys.get(name)
            and old.key_id == key_id
            and old.publishers_id == publishers_id
        )

    names = sorted(fleet.hosts)
    changed = [n for n in names if not unchanged(n)]
    hosts: dict[str, HostData] = {n: previous[n] for n in names if n not in changed}
    manifest: dict[str, tuple[str, str]] = {}
    samples: dict[str, Samples] = {}
    fresh_samples: list[tuple[str, str, Samples]] = []
    verified = 0
    if changed:
        progress(f"site: reading {len(changed)} host(s) whose refs changed, checking signatures")
    for processed, verdicts in _run(_process_changed, changed, workers):
        for item in processed:
            name = item.light.name
            hosts[name] = item.light
            samples[name] = item.samples
            fresh_samples.append(
                (name, sample_key(item.light, settings.stale_after, window), item.samples)
            )
            for path, key, digest in item.written:
                manifest[path] = (key, digest)
        if cache is not None:
            cache.save_host_rows(item.rows for item in processed)
        verified += len(verdicts)
    if cache is not None:
        cache.forget_hosts(previous.keys() - fleet.hosts.keys())
    stats.hosts = len(names)
    stats.hosts_read = len(changed)
    stats.verified_now = verified
    stats.pages_rendered = len(changed)
    mark = _phase(stats, "read changed hosts", mark)

    statuses: dict[str, HostStatus] = {}
    answers: dict[str, tuple[compliance.Answer, ...]] = {}
    for name in names:
        statuses[name], answers[name] = judge(
            hosts[name], fleet.hosts[name], policies, now, settings.stale_after
        )
    history = collect.read_main_history(repo, head)
    sources: dict[str, MainCommit] = {c.sha: c for c in history}
    wanted = {d.source_commit for h in hosts.values() for d in h.deploys if d.source_commit}
    for sha in wanted - sources.keys():
        found = collect.find_main_commit(repo, sha)
        if found is not None:
            sources[sha] = found
    renderer = Renderer(settings.site, now, docs)
    pages = Pages(renderer, fleet, policies, hosts, statuses, answers, global_id, now)
    mark = _phase(stats, "judge", mark)

    # Unchanged hosts: reuse their pages and chart samples when still valid.
    old_pages = cache.load_pages() if cache is not None else {}
    old_samples = cache.load_keyed("samples") if cache is not None else {}
    to_render: list[str] = []
    to_sample: list[str] = []
    for name in names:
        if name in samples:
            continue
        if cache is not None and _reuse_pages(cache, old_pages, pages.key(name), name, manifest):
            stats.pages_reused += 1
        else:
            to_render.append(name)
        cached_samples = old_samples.get(name)
        if cached_samples is not None and cached_samples[0] == sample_key(
            hosts[name], settings.stale_after, window
        ):
            samples[name] = cached_samples[1]
        else:
            to_sample.append(name)
    for written in _run(_render_cached, to_render, workers):
        for path, key, digest in written:
            manifest[path] = (key, digest)
    for sampled in _run(_sample_cached, to_sample, workers):
        for name, values in sampled:
            samples[name] = values
            fresh_samples.append(
                (name, sample_key(hosts[name], settings.stale_after, window), values)
            )
    if cache is not None and fresh_samples:
        cache.save_keyed("samples", fresh_samples)
    stats.pages_rendered += len(to_render)
    progress(f"site: {stats.pages_rendered} host page(s) rendered, {stats.pages_reused} unchanged")
    mark = _phase(stats, "host pages", mark)

    shutil.copytree(resources.assets_dir(), tmp / "assets")
    (tmp / MARKER).write_text(f"built by gitops {__version__}; safe to replace\n")
    state_chart, version_chart, chart_data = _charts(pages, samples)
    problems = _problems(pages)
    drift = _drift_groups(pages)
    summaries = compliance.summarize(policies, answers)
    events = audit.timeline(history, hosts, sources)
    counts = Counter(str(s.state) for s in statuses.values())
    flag_counts = Counter(f for s in statuses.values() for f in s.flags)
    failing_counts = [(s.policy, s.counts["fail"]) for s in summaries if s.counts["fail"]]
    failing_counts.sort(key=lambda item: (-item[1], item[0].name))
    rows = pages.inventory_rows()
    trust_counts = Counter[str]()
    for data in hosts.values():
        trust_counts.update(dict(data.trust_counts))
    common = {
        "now": now,
        "settings": settings,
        "main": history[0] if history else None,
        "host_count": len(names),
    }
    aggregate = {
        "index.html": renderer.render(
            "index.html",
            root="",
            current="index.html",
            title="Overview",
            counts=counts,
            states_order=[str(s) for s in STATE_ORDER],
            flag_counts=flag_counts,
            failing_counts=failing_counts,
            problems=problems[:MAX_PROBLEMS],
            problem_total=len(problems),
            state_chart=state_chart,
            version_chart=version_chart,
            orphans=collect.orphans(fleet, deploys, reports),
            trust_counts=trust_counts,
            **common,
        ),
        "inventory.html": renderer.render(
            "inventory.html",
            root="",
            current="inventory.html",
            title="Inventory",
            rows=rows,
            states_order=[str(s) for s in STATE_ORDER],
            **common,
        ),
        "drift.html": renderer.render(
            "drift.html",
            root="",
            current="drift.html",
            title="Drift",
            groups=drift,
            sources=sources,
            **common,
        ),
        "compliance.html": renderer.render(
            "compliance.html",
            root="",
            current="compliance.html",
            title="Compliance",
            summaries=summaries,
            answers=answers,
            policies=policies,
            fleet=fleet,
            **common,
        ),
        "audit.html": renderer.render(
            "audit.html",
            root="",
            current="audit.html",
            title="Audit trail",
            events=events,
            max_events=audit.MAX_EVENTS,
            **common,
        ),
    }
    for path, text in aggregate.items():
        (tmp / path).write_text(text, encoding="utf-8")
    json_files = export.aggregate_files(
        pages,
        counts=counts,
        flag_counts=flag_counts,
        problems=problems,
        chart_data=chart_data,
        drift=drift,
        summaries=summaries,
        events=events,
        sources=sources,
    )
    for path, data in json_files.items():
        (tmp / path).write_text(export.dumps(data), encoding="utf-8")
    keys = tmp / "keys"
    keys.mkdir()
    (keys / "publishers.allowed_signers").write_text(publishers.text())
    host_lines = "".join(
        f'{h.name} namespaces="git" {h.key.openssh()}\n'
        for h in fleet.hosts.values()
        if h.key is not None
    )
    (keys / "hosts.allowed_signers").write_text(host_lines)
    if cache is not None:
        cache.save_pages(manifest)
    _phase(stats, "aggregate pages", mark)
