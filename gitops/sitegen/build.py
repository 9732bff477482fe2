"""One site build: collect → judge → render, into a temporary directory that then
replaces ``--out`` in one rename.

Incremental by construction: a host whose refs, key and publishers did not change is
taken from the cache without reading git; a page whose inputs did not change is
hard-linked from the cache's page store instead of rendered. A full build spreads the
per-host work (signature checks, parsing, host pages) over every core.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import hashlib
import json
import multiprocessing
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gitops import __version__
from gitops.allowed_signers import AllowedSigners
from gitops.errors import GitopsError
from gitops.fleet import Fleet
from gitops.policies import Policy
from gitops.sitegen import audit, collect, compliance, export, resources, states
from gitops.sitegen.cache import Cache, cache_dir_for, digest_bytes
from gitops.sitegen.charts import PALETTE, STATE_COLORS, Series, stacked_bars
from gitops.sitegen.collect import HostReader
from gitops.sitegen.model import (
    STATE_ORDER,
    HostData,
    HostStatus,
    MainCommit,
    Problem,
    State,
    Trust,
)
from gitops.sitegen.render import Renderer
from gitops.sitegen.verify import trust_id

MARKER = ".gitops-site"
PARALLEL_MIN = 64  # below this many hosts to read or pages to render, stay in one process
CHART_DAYS = 30
MAX_PROBLEMS = 200
MAX_VERSIONS = 5


@dataclass
class BuildStats:
    hosts: int = 0
    hosts_read: int = 0
    verified_now: int = 0
    pages_rendered: int = 0
    pages_reused: int = 0
    seconds: float = 0.0
    phases: dict[str, float] = field(default_factory=dict)


# State shared with forked worker processes (set before each pool starts).
_WORK: dict[str, Any] = {}


def _reader() -> HostReader:
    reader = _WORK.get("reader")
    if reader is None:
        repo = collect.open_repo(_WORK["repo_path"])
        verdicts = _WORK["cache"].verdict_reader() if _WORK.get("cache") is not None else None
        reader = HostReader(repo) if verdicts is None else HostReader(repo, verdicts.get)
        _WORK["reader"] = reader
    assert isinstance(reader, HostReader)
    return reader


def _collect_chunk(names: Sequence[str]) -> tuple[list[HostData], list[Any]]:
    reader = _reader()
    reader.new = []
    fleet: Fleet = _WORK["fleet"]
    result = []
    for name in names:
        result.append(
            reader.collect(
                name,
                fleet.hosts.get(name),
                reports_head=_WORK["reports"].get(name),
                deploy_head=_WORK["deploys"].get(name),
                publishers=_WORK["publishers"],
                publishers_id=_WORK["publishers_id"],
                previous=_WORK["previous"].get(name),
            )
        )
    return result, reader.new


def _render_chunk(names: Sequence[str]) -> list[tuple[str, str, str]]:
    """Render host pages (HTML and JSON) into the temporary output; (path, key, digest)."""
    pages = _WORK["pages"]
    out: Path = _WORK["tmp"]
    written = []
    for name in names:
        key = pages.host_keys[name]
        html = pages.host_html(name)
        data = pages.host_json(name)
        for suffix, text in ((".html", html), (".json", data)):
            path = f"hosts/{name}{suffix}"
            written.append((path, key, _write_page(out, path, text.encode())))
    return written


def _write_page(out: Path, path: str, data: bytes) -> str:
    digest = digest_bytes(data)
    target = out / path
    target.write_bytes(data)
    store: Path | None = _WORK.get("store")
    if store is not None:
        with contextlib.suppress(FileExistsError, OSError):
            os.link(target, store / digest)
    return digest


def _chunks(items: Sequence[str], size: int) -> list[Sequence[str]]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def _run_parallel(
    function: Callable[[Sequence[str]], Any], items: Sequence[str], workers: int
) -> list[Any]:
    if len(items) < PARALLEL_MIN or workers <= 1:
        return [function(items)] if items else []
    size = max(16, min(200, len(items) // (workers * 8) or 1))
    context = multiprocessing.get_context("fork")
    with context.Pool(workers) as pool:
        return list(pool.imap_unordered(function, _chunks(items, size)))


# -- the pages -----------------------------------------------------------------------


class Pages:
    """Everything the templates need, computed once per build."""

    def __init__(
        self,
        renderer: Renderer,
        fleet: Fleet,
        policies: list[Policy],
        hosts: dict[str, HostData],
        statuses: dict[str, HostStatus],
        answers: dict[str, tuple[compliance.Answer, ...]],
        global_id: str,
        now: datetime,
    ) -> None:
        self.renderer = renderer
        self.fleet = fleet
        self.policies = policies
        self.policy_by_name = {p.name: p for p in policies}
        self.hosts = hosts
        self.statuses = statuses
        self.answers = answers
        self.now = now
        self.host_keys = {
            name: hashlib.sha256(
                repr(
                    (
                        global_id,
                        hosts[name].reports_head,
                        hosts[name].deploy_head,
                        hosts[name].key_id,
                        hosts[name].publishers_id,
                        fleet.hosts[name],
                        statuses[name],
                        answers[name],
                    )
                ).encode()
            ).hexdigest()
            for name in statuses
        }

    def generations(self, data: HostData) -> list[dict[str, Any]]:
        seen: dict[int, dict[str, Any]] = {}
        for entry in reversed(data.reports):
            if not entry.verified or entry.generation is None:
                continue
            if entry.generation not in seen:
                seen[entry.generation] = {
                    "generation": entry.generation,
                    "store_path": entry.store_path,
                    "nixos_version": entry.nixos_version,
                    "deploy": entry.deploy_applied,
                    "first_seen": entry.when,
                    "last_seen": entry.when,
                }
            else:
                seen[entry.generation]["last_seen"] = entry.when
        return sorted(seen.values(), key=lambda g: int(g["generation"]), reverse=True)

    def host_context(self, name: str) -> dict[str, Any]:
        data = self.hosts[name]
        status = self.statuses[name]
        newest = data.newest_verified
        facts = (data.latest_status or {}).get("facts") or {}
        changes = next((r.changes for r in data.reports if r.verified and r.changes), ())
        failures = [r for r in data.reports if r.log_tail][:5]
        return {
            "host": self.fleet.hosts[name],
            "data": data,
            "status": status,
            "newest": newest,
            "facts": sorted(facts.items()),
            "system": (data.latest_status or {}).get("system") or {},
            "answers": self.answers[name],
            "policies": self.policy_by_name,
            "generations": self.generations(data),
            "changes": changes,
            "failures": failures,
            "published": data.published,
        }

    def host_html(self, name: str) -> str:
        return self.renderer.render(
            "host.html", root="../", current="", title=name, **self.host_context(name)
        )

    def host_json(self, name: str) -> str:
        return export.dumps(export.host_detail(self, name))

    def inventory_rows(self) -> list[dict[str, Any]]:
        rows = []
        for name in sorted(self.statuses):
            host = self.fleet.hosts[name]
            status = self.statuses[name]
            rows.append(
                {
                    "name": name,
                    "host": host,
                    "status": status,
                    "failing": compliance.failing(self.answers[name]),
                    "trust": (
                        str(self.hosts[name].reports[0].trust) if self.hosts[name].reports else ""
                    ),
                }
            )
        return rows


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
    pages: Pages,
    cache: Cache | None,
    stale_after: int,
) -> tuple[Any, Any, dict[str, Any]]:
    ends = states.day_ends(pages.now, CHART_DAYS)
    past = ends[:-1]
    old = cache.load_keyed("samples") if cache is not None else {}
    fresh: list[tuple[str, str, Any]] = []
    state_counts = [Counter[str]() for _ in ends]
    version_counts = [Counter[str]() for _ in ends]
    window = past[0].isoformat() if past else ""
    keys = {
        name: f"{data.reports_head}:{data.deploy_head}:{data.key_id}:{data.publishers_id}"
        f":{stale_after}:{window}"
        for name, data in pages.hosts.items()
    }
    misses = [n for n in pages.hosts if old.get(n, ("", None))[0] != keys[n]]
    _ensure_full(pages.hosts, misses, cache)
    for name, data in pages.hosts.items():
        key = keys[name]
        cached = old.get(name)
        if cached is not None and cached[0] == key:
            sampled = cached[1]
        else:
            sampled = states.samples(data, past, stale_after)
            fresh.append((name, key, sampled))
        status = pages.statuses[name]
        for index, (state, version) in enumerate([*sampled, (status.state, status.nixos_version)]):
            state_counts[index][str(state)] += 1
            if version is not None and state is not State.NEVER:
                version_counts[index][_version_label(version)] += 1
    if cache is not None and fresh:
        cache.save_keyed("samples", fresh)
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


def _ensure_full(hosts: dict[str, HostData], names: Iterable[str], cache: Cache | None) -> None:
    """Replace light copies by the full data (to render a host page or re-sample history)."""
    light = [n for n in names if hosts[n].is_light]
    if light and cache is not None:
        hosts.update(cache.load_full(light))
    still = [n for n in light if hosts[n].is_light]
    if still:
        raise GitopsError(
            f"the site cache has no full data for {still[0]}; delete the cache directory "
            "(.<out>.cache next to --out) and build again"
        )


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
    code = resources.code_id()
    cache = Cache(cache_dir_for(out), code) if use_cache else None
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        _build(repo_path, repo, head, out, tmp, moment, workers, cache, stats, progress)
        swap_into(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if cache is not None:
            cache.close()
        _WORK.clear()
    stats.seconds = time.monotonic() - started
    return stats


def _phase(stats: BuildStats, name: str, since: float) -> float:
    now = time.monotonic()
    stats.phases[name] = round(now - since, 3)
    return now


def _build(
    repo_path: Path,
    repo: Any,
    head: Any,
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
    publishers: AllowedSigners = settings.publisher_trust()
    publishers_id = trust_id(publishers)
    previous = cache.load_hosts() if cache is not None else {}
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
    dirty = [n for n in names if not unchanged(n)]
    # Unchanged hosts stay light; a changed one is read on top of its full cached data.
    full_previous = cache.load_full(d for d in dirty if d in previous) if cache else {}
    _WORK.update(
        repo_path=repo_path,
        cache=cache,
        fleet=fleet,
        reports=reports,
        deploys=deploys,
        publishers=publishers,
        publishers_id=publishers_id,
        previous=full_previous,
    )
    hosts: dict[str, HostData] = {n: previous[n] for n in names if n not in dirty}
    new_verdicts: list[Any] = []
    if dirty:
        progress(f"site: reading {len(dirty)} host(s) whose refs changed, checking signatures")
    for chunk, verdicts in _run_parallel(_collect_chunk, dirty, workers):
        for data in chunk:
            hosts[data.name] = data
        new_verdicts.extend(verdicts)
    _WORK.pop("reader", None)
    stats.hosts = len(names)
    stats.hosts_read = len(dirty)
    stats.verified_now = len(new_verdicts)
    if cache is not None:
        cache.save_verdicts(new_verdicts)
        cache.save_hosts((hosts[n] for n in dirty), previous.keys() - fleet.hosts.keys())
    mark = _phase(stats, "collect", mark)

    statuses = {n: states.judge(hosts[n], now=now, stale_after=settings.stale_after) for n in names}
    answers = {}
    for name in names:
        newest = hosts[name].newest_verified
        answers[name] = compliance.answer(
            policies,
            fleet.hosts[name],
            hosts[name].latest_status,
            newest.when if newest is not None else None,
            now,
        )
    history = collect.read_main_history(repo, head)
    sources: dict[str, MainCommit] = {c.sha: c for c in history}
    wanted = {d.source_commit for h in hosts.values() for d in h.deploys if d.source_commit}
    for sha in wanted - sources.keys():
        found = collect.find_main_commit(repo, sha)
        if found is not None:
            sources[sha] = found
    mark = _phase(stats, "judge", mark)

    docs = docs_link(settings.site.docs_url, out)
    renderer = Renderer(settings.site, now, docs)
    # repr, not pickle: pickle's bytes depend on object identity (a cached copy differs).
    global_id = hashlib.sha256(
        repr((resources.code_id(), settings, policies, docs, sorted(sources))).encode()
    ).hexdigest()
    pages = Pages(renderer, fleet, policies, hosts, statuses, answers, global_id, now)
    (tmp / "hosts").mkdir(parents=True)
    shutil.copytree(resources.assets_dir(), tmp / "assets")
    (tmp / MARKER).write_text(f"built by gitops {__version__}; safe to replace\n")
    old_pages = cache.load_pages() if cache is not None else {}
    manifest: dict[str, tuple[str, str]] = {}
    to_render = []
    for name in names:
        key = pages.host_keys[name]
        reused = True
        for suffix in (".html", ".json"):
            path = f"hosts/{name}{suffix}"
            old = old_pages.get(path)
            if old is None or old[0] != key or cache is None:
                reused = False
                break
            try:
                os.link(cache.page_file(old[1]), tmp / path)
            except OSError:
                reused = False
                break
            manifest[path] = old
        if reused:
            stats.pages_reused += 1
        else:
            to_render.append(name)
    _ensure_full(hosts, to_render, cache)
    _WORK.update(pages=pages, tmp=tmp, store=cache.pages_dir if cache is not None else None)
    for written in _run_parallel(_render_chunk, to_render, workers):
        for path, key, digest in written:
            manifest[path] = (key, digest)
    stats.pages_rendered = len(to_render)
    progress(f"site: {len(to_render)} host page(s) rendered, {stats.pages_reused} unchanged")
    mark = _phase(stats, "host pages", mark)

    state_chart, version_chart, chart_data = _charts(pages, cache, settings.stale_after)
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


def count_trust(entries: Iterable[Trust]) -> Counter[str]:
    return Counter(str(t) for t in entries)


def dump_stats(stats: BuildStats) -> str:
    return json.dumps(stats.__dict__, sort_keys=True)
