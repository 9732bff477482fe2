"""One site build: collect → judge → render, into a temporary directory that then
replaces ``--out`` in one rename.

Incremental by construction: a host whose derived row (:mod:`gitops.sitegen.derived`) is
still valid costs one dictionary lookup and two hard links (its pages, from the cache's
page store). Any other host is brought up to date end to end in a worker process: read
only the commits above its cached heads (verifying each signature once), judge it,
render its pages unless identical ones exist, sample its 30-day history, derive its
row. The main process holds derived rows only, never a host's history.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import multiprocessing
import os
import pickle
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from datetime import time as dtime
from pathlib import Path
from typing import Any

import pygit2
from markupsafe import Markup

from gitops import __version__
from gitops.errors import GitopsError
from gitops.fleet.model import Fleet, FleetSettings, SiteSettings
from gitops.fleet.policies import Policy
from gitops.protocol import format_time
from gitops.sitegen import audit, collect, compliance, export, resources, states
from gitops.sitegen.cache import Cache, CacheReader, cache_dir_for, digest_bytes
from gitops.sitegen.charts import PALETTE, STATE_COLORS, Series, stacked_bars
from gitops.sitegen.collect import HostReader
from gitops.sitegen.derived import (
    Derived,
    Overview,
    age_flips,
    decode_samples,
    derive,
    encode_samples,
    identity,
)
from gitops.sitegen.model import STATE_ORDER, HostData, HostStatus, MainCommit, Problem, State
from gitops.sitegen.pages import Pages, judge
from gitops.sitegen.render import Renderer
from gitops.sitegen.verify import trust_id
from gitops.trust.allowed_signers import AllowedSigners

MARKER = ".gitops-site"
PARALLEL_MIN = 64  # below this many hosts to read or pages to render, stay in one process
CHART_DAYS = 30
GIT_CACHE_BYTES = 16 << 20
MAX_PROBLEMS = 200
MAX_VERSIONS = 5

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

    def summary(self) -> str:
        return (
            f"site: {self.hosts} hosts ({self.hosts_read} read from git, "
            f"{self.verified_now} signatures checked) in {self.seconds:.1f} s"
        )


@dataclass(frozen=True)
class Job:
    """What every worker needs; set before a pool forks, so it is inherited, not sent."""

    repo_path: Path
    cache_path: Path | None
    fleet: Fleet | None  # set whenever a worker runs
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
    main_sha: str
    old_pages: dict[str, tuple[str, str]]  # path -> (key, digest) of the previous build
    age_flips: tuple[int, ...] | None


_JOB: list[Job] = []
_LOCAL: dict[str, Any] = {}  # per-process: repository, cache reader, renderer


def _job() -> Job:
    return _JOB[0]


def _fleet() -> Fleet:
    fleet = _job().fleet
    assert fleet is not None
    return fleet


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


def _load_fleet(
    repo: pygit2.Repository, head: pygit2.Commit, cache: Cache | None, workers: int
) -> Fleet:
    main_sha = str(head.id)
    loaded = cache.get_blob(f"main:{main_sha}") if cache is not None else None
    if isinstance(loaded, Fleet):
        return loaded
    fleet, _ = collect.load_main(repo, head, workers=workers)
    if cache is not None:
        cache.put_blob(f"main:{main_sha}", fleet, prefix="main:")
    return fleet


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
        compiled = job.cache_path.parent / "templates" if job.cache_path is not None else None
        renderer = _LOCAL["renderer"] = Renderer(job.site, job.now, job.docs, compiled=compiled)
    assert isinstance(renderer, Renderer)
    return renderer


def _window_id() -> str:
    window = _job().window
    return window[0].isoformat() if window else ""


def _samples(data: HostData) -> str:
    job = _job()
    return encode_samples(states.samples(data, job.window, job.stale_after))


@dataclass(frozen=True)
class Refreshed:
    """A worker's result for one host: its derived row, its new cache row when its data
    was read again, and the pages it wrote or linked."""

    derived: Derived
    rows: tuple[str, bytes] | None  # set when the host's data changed (new commits, new key)
    written: tuple[Written, ...]
    rendered: bool  # False when identical pages were linked from the page store


def _refresh(names: Sequence[str]) -> tuple[list[Refreshed], int]:
    """Worker: bring hosts up to date: read what changed in git (verifying signatures),
    judge them, render their pages unless an identical page exists, derive their rows."""
    job = _job()
    reader = _host_reader()
    reader.new = []
    cached = _cache_reader()
    previous = cached.load_full(names) if cached is not None else {}
    full: dict[str, HostData] = {}
    for name in names:
        full[name] = reader.collect(
            name,
            _fleet().hosts.get(name),
            reports_head=job.reports.get(name),
            deploy_head=job.deploys.get(name),
            publishers=job.publishers,
            publishers_id=job.publishers_id,
            previous=previous.get(name),
        )
    pages = _pages_for(full)
    renderer = _renderer()
    order = [str(s) for s in STATE_ORDER]
    # The chart window moves at the next UTC midnight.
    window_ends_at = datetime.combine(job.now.date() + timedelta(days=1), dtime(0), tzinfo=UTC)
    result = []
    for name, data in full.items():
        status, answers = pages.statuses[name], pages.answers[name]
        derived = derive(
            data=data,
            host=_fleet().hosts[name],
            status=status,
            answers=answers,
            policies=job.policies,
            ident=identity(job.main_sha, job.global_id, name, data.reports_head, data.deploy_head),
            window=_window_id(),
            window_ends_at=window_ends_at,
            global_id=job.global_id,
            now=job.now,
            stale_after=job.stale_after,
            flips=job.age_flips,
            samples=_samples(data),
            renderer=renderer,
            state_order=order,
        )
        written = _link_pages(name, derived.page_key, job.old_pages)
        rendered = written is None
        if written is None:
            written = _render(pages, name, derived.page_key)
        derived = replace(derived, pages=written)
        old = previous.get(name)
        changed = old is None or old != data
        rows = (name, pickle.dumps(data, protocol=pickle.HIGHEST_PROTOCOL)) if changed else None
        result.append(Refreshed(derived, rows, written, rendered))
    return result, len(reader.new)


def _render(pages: Pages, name: str, key: str) -> tuple[Written, ...]:
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
            data, _fleet().hosts[name], job.policies, job.now, job.stale_after
        )
    return Pages(
        _renderer(), _fleet(), job.policies, full, statuses, answers, job.global_id, job.now
    )


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


def _link_pages(
    name: str, key: str, old_pages: dict[str, tuple[str, str]]
) -> tuple[Written, ...] | None:
    """Hard-link a host's pages from the page store when their key is unchanged."""
    job = _job()
    if job.store is None:
        return None
    found = []
    for suffix in (".html", ".json"):
        path = f"hosts/{name}{suffix}"
        old = old_pages.get(path)
        if old is None or old[0] != key:
            return None
        found.append((path, old[0], old[1]))
    tmp, store = str(job.tmp), str(job.store)
    for path, _, digest in found:
        try:
            os.link(f"{store}/{digest}", f"{tmp}/{path}")
        except FileExistsError:
            continue
        except OSError:
            return None
    return tuple(found)


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


# -- the pages -----------------------------------------------------------------------


def _problems(pages: Overview) -> list[Problem]:
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


def _drift_groups(pages: Overview) -> list[tuple[str, list[HostStatus]]]:
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
    pages: Overview,
) -> tuple[Any, Any, dict[str, Any]]:
    ends = states.day_ends(pages.now, CHART_DAYS)
    state_counts = [Counter[str]() for _ in ends]
    version_counts = [Counter[str]() for _ in ends]
    labels_of: dict[str | None, str] = {}
    never = str(State.NEVER)
    # Many hosts share a history (up to date every day on one release): count each
    # distinct one once.
    histories = Counter(
        (d.samples, str(d.status.state), d.status.nixos_version) for d in pages.derived.values()
    )
    for (encoded, current, current_version), hosts in histories.items():
        history = [*decode_samples(encoded), (current, current_version)]
        for index, (state, version) in enumerate(history):
            state_counts[index][state] += hosts
            if version is not None and state != never:
                label = labels_of.get(version)
                if label is None:
                    label = labels_of[version] = _version_label(version)
                version_counts[index][label] += hosts
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
        "days": [format_time(e) for e in ends],
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


def swap_into(tmp: Path, out: Path, *, background: bool = False) -> None:
    """Make ``tmp`` the new ``out``: a reader sees the old site or the new, never a mix.
    With ``background``, the old site is deleted by a detached child process (a killed
    one leaves a directory the next build sweeps)."""
    if not out.exists():
        tmp.rename(out)
        return
    if _renameat2_exchange(tmp, out):
        old = tmp
    else:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
    if background and _delete_in_child(old):
        return
    shutil.rmtree(old, ignore_errors=True)


def _delete_in_child(path: Path) -> bool:
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid != 0:
        return True
    try:  # the child: detach from the caller's pipes, delete, leave without cleanup
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os._exit(0)


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
    background_cleanup: bool = False,
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
    if cache is not None:
        # Holding the cache's lock, no other build of this site runs: what a killed
        # build left behind can go.
        for leftover in out.parent.glob(f".{out.name}.[to][ml][pd]-*"):
            shutil.rmtree(leftover, ignore_errors=True)
    try:
        _build(repo_path, repo, head, out, tmp, moment, workers, cache, stats, progress)
        swap_into(tmp, out, background=background_cleanup)
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
    # What every build needs from main; the full fleet (every host's key and fields) is
    # unpickled or parsed only when some host must be refreshed.
    summary = cache.get_blob(f"mainsummary:{main_sha}") if cache is not None else None
    fleet: Fleet | None = None
    if not isinstance(summary, MainSummary):
        fleet = _load_fleet(repo, head, cache, workers)
        summary = MainSummary.of(fleet, collect.load_main_policies(repo, head))
        if cache is not None:
            cache.put_blob(f"mainsummary:{main_sha}", summary, prefix="mainsummary:")
    settings, policies, names = summary.settings, summary.policies, summary.names
    progress(f"site: main {head.short_id}: {len(names)} hosts, {len(policies)} policies")
    deploys, reports = collect.list_heads(repo)
    publishers = settings.publisher_trust()
    docs = docs_link(settings.site.docs_url, out)
    global_id = hashlib.sha256(
        repr((resources.code_id(), settings, policies, docs)).encode()
    ).hexdigest()
    (tmp / "hosts").mkdir(parents=True)
    window = tuple(states.day_ends(now, CHART_DAYS)[:-1])
    window_id = window[0].isoformat() if window else ""
    old_derived: dict[str, Derived] = {}
    if cache is not None:
        old_derived = cache.load_derived()
    old_pages = {path: (key, digest) for d in old_derived.values() for path, key, digest in d.pages}
    job = Job(
        repo_path=repo_path,
        cache_path=cache.path if cache is not None else None,
        fleet=fleet,
        policies=policies,
        site=settings.site,
        docs=docs,
        now=now,
        stale_after=settings.stale_after,
        publishers=publishers,
        publishers_id=trust_id(publishers),
        reports=reports,
        deploys=deploys,
        global_id=global_id,
        tmp=tmp,
        store=cache.pages_dir if cache is not None else None,
        window=window,
        main_sha=main_sha,
        old_pages=old_pages,
        age_flips=age_flips(policies),
    )
    _JOB[:] = [job]
    mark = _phase(stats, "read main", mark)

    derived: dict[str, Derived] = {}
    stale: list[str] = []
    for name in names:
        old = old_derived.get(name)
        ident = identity(main_sha, global_id, name, reports.get(name), deploys.get(name))
        if (
            old is not None
            and old.valid(ident, window_id, now)
            and _link_pages(name, old.page_key, old_pages) is not None
        ):
            derived[name] = old
            continue
        stale.append(name)
    stats.pages_reused = len(names) - len(stale)
    if stale:
        progress(f"site: {len(stale)} host(s) to bring up to date (new commits or time passed)")
        if job.fleet is None:
            _JOB[:] = [replace(job, fleet=_load_fleet(repo, head, cache, workers))]
    new_rows: list[tuple[str, bytes]] = []
    for refreshed, verified in _run(_refresh, stale, workers):
        for item in refreshed:
            name = item.derived.status.name
            derived[name] = item.derived
            if item.rows is not None:
                new_rows.append(item.rows)
                stats.hosts_read += 1
            stats.pages_rendered += item.rendered
        stats.verified_now += verified
        if cache is not None and len(new_rows) >= 500:
            cache.save_host_rows(new_rows)
            new_rows = []
    if cache is not None:
        cache.save_host_rows(new_rows)
        cache.forget_hosts(set(old_derived) - set(names))
        removed = bool(set(old_derived) - set(names))
        if stale or removed:
            cache.save_derived(derived, stale, snapshot=removed)
    stats.hosts = len(names)
    progress(f"site: {len(stale)} host(s) refreshed, {stats.pages_reused} unchanged")
    mark = _phase(stats, "hosts", mark)

    history = collect.read_main_history(repo, head)
    sources: dict[str, MainCommit] = {c.sha: c for c in history}
    wanted = {ref[0] for d in derived.values() for ref in d.deploys if ref[0]}
    for sha in wanted - sources.keys():
        found_commit = collect.find_main_commit(repo, sha)
        if found_commit is not None:
            sources[sha] = found_commit
    renderer = Renderer(
        settings.site, now, docs, compiled=cache.directory / "templates" if cache else None
    )
    shutil.copytree(resources.assets_dir(), tmp / "assets")
    (tmp / MARKER).write_text(f"built by gitops {__version__}; safe to replace\n")
    view = Overview(policies, now, derived)
    statuses = view.statuses
    state_chart, version_chart, chart_data = _charts(view)
    problems = _problems(view)
    drift = _drift_groups(view)
    summaries = compliance.summarize_codes(policies, view.outcomes)
    events = audit.timeline(
        history,
        view.applies(),
        {name: d.deploys for name, d in derived.items()},
        sources,
    )
    counts = Counter(str(s.state) for s in statuses.values())
    flag_counts = Counter(f for s in statuses.values() for f in s.flags)
    failing_counts = [(s.policy, s.counts["fail"]) for s in summaries if s.counts["fail"]]
    failing_counts.sort(key=lambda item: (-item[1], item[0].name))
    rows = Markup("\n".join(derived[name].row_html for name in names))
    trust_counts = view.trust_counts()
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
            orphans=collect.orphans(set(names), deploys, reports),
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
            policies=policies,
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
        view,
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
    (keys / "hosts.allowed_signers").write_text(summary.host_signers)
    if cache is not None:
        cache.prune_pages(
            {digest for d in derived.values() for _, _, digest in d.pages},
            {digest for _, digest in old_pages.values()},
            sweep=not old_derived,
        )
    _phase(stats, "aggregate pages", mark)
