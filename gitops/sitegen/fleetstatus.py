"""The fleet at a glance from the repository alone (``gitops status``), judged exactly as
the site judges it.

Each host is read (:class:`gitops.sitegen.collect.HostReader`) and judged
(:func:`gitops.sitegen.pages.judge`: state, flags, policy answers) by the same code a site
build's workers run, and its JSON object is the site's ``inventory.json`` entry
(:func:`gitops.sitegen.export.inventory_json`): the terminal and the dashboard cannot
disagree. Nothing is rendered and nothing is written.

:class:`FleetReader` keeps what it read, so a second read (``--watch``) reads only the
commits above the heads it saw, as an incremental site build does.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
import watchfiles

from gitops.errors import GitopsError
from gitops.fleet.model import Host
from gitops.inventory.sbom import PackageQuery
from gitops.protocol import MAIN_REF
from gitops.sitegen import collect, export, software, states, vulnscan
from gitops.sitegen.compliance import failing
from gitops.sitegen.model import STATE_ORDER, Flag, HostData, HostSoftware, HostStatus, State
from gitops.sitegen.pages import judge
from gitops.sitegen.render import iso
from gitops.sitegen.verify import trust_id
from gitops.trust import commits

# How often --watch judges again with nothing changed (a host turns stale with time).
RETICK_SECONDS = 60.0


@dataclass(frozen=True)
class HostRow:
    """One host as ``gitops status`` shows it."""

    host: Host
    status: HostStatus
    failing: tuple[str, ...]  # policies the host fails
    packages: str | None = None  # its package set (software.packages_text), when read
    matched: tuple[tuple[str, str], ...] = ()  # what a --package query found in it

    def to_json(self) -> dict[str, Any]:
        """The host's object in the site's inventory.json, as it is (with the packages a
        query found, when there is one)."""
        return export.inventory_json(self.host, self.status, list(self.failing))

    @property
    def reboot(self) -> str:
        """ "needed", "pending" (a boot-mode host waits for its next boot), or ""."""
        if Flag.REBOOT_PENDING in self.status.flags:
            return "pending"
        return "needed" if Flag.REBOOT_NEEDED in self.status.flags else ""


@dataclass(frozen=True)
class FleetStatus:
    """Every host of main, judged at ``now``."""

    main: str  # main's commit id
    fleet: str  # fleet.yaml's name
    now: datetime
    rows: tuple[HostRow, ...]  # sorted by host name
    package: PackageQuery | None = None  # the hosts running it, with what they run

    def select(
        self,
        *,
        states: Iterable[State] = (),
        tags: Iterable[str] = (),
        package: PackageQuery | None = None,
    ) -> FleetStatus:
        """Only the hosts in one of ``states``, with one of ``tags`` (each: all if empty),
        and running ``package`` (by their newest accepted SBOM, as the site's software
        page answers it; read with ``FleetReader(software=True)``)."""
        wanted, tagged = set(states), set(tags)
        rows = [
            r
            for r in self.rows
            if (not wanted or r.status.state in wanted)
            and (not tagged or tagged.intersection(r.host.tags))
        ]
        if package is not None:
            found = [replace(r, matched=software.matching(package, r.packages or "")) for r in rows]
            rows = [r for r in found if r.matched]
        return FleetStatus(self.main, self.fleet, self.now, tuple(rows), package or self.package)

    def to_json(self) -> dict[str, Any]:
        hosts = [row.to_json() for row in self.rows]
        if self.package is not None:
            for entry, row in zip(hosts, self.rows, strict=True):
                entry["packages"] = [{"name": n, "version": v} for n, v in row.matched]
        return {
            "schema": export.SCHEMA,
            "built": iso(self.now),
            "main": self.main,
            "fleet": self.fleet,
            "hosts": hosts,
        }


class FleetReader:
    """Reads and judges the fleet of one repository; keeps each host's data for the next
    read (only new commits are read and verified again)."""

    def __init__(self, repo_path: Path, *, software: bool = False) -> None:
        self.repo_path = repo_path
        self.previous: dict[str, HostData] = {}
        self.software = software  # also find each host's SBOM (its package set)
        self.sets: dict[str, str] = {}  # package set id -> its packages

    def read(self, now: datetime | None = None) -> FleetStatus:
        moment = (now or datetime.now(UTC)).replace(microsecond=0)
        repo = collect.open_repo(self.repo_path)
        head = collect.main_head(repo)
        fleet, policies = collect.load_main(repo, head)
        settings = fleet.settings
        publishers = settings.publisher_trust()
        publishers_id = trust_id(publishers)
        deploys, reports = collect.list_heads(repo)
        reader = collect.HostReader(repo)
        scanner = None
        if vulnscan.uses_vulns(policies):  # judged with the feed, as the site judges them
            feed = vulnscan.load_feed(Path(repo.workdir or repo.path), settings, None)
            scanner = vulnscan.Scanner(feed, None, settings.vulnerabilities.exemptions)
        wanted = self.software or scanner is not None
        sboms = software.SbomFinder(repo, reader.verdict, reader.walks) if wanted else None
        rows = []
        seen: dict[str, HostData] = {}
        for name, host in sorted(fleet.hosts.items()):
            data = reader.collect(
                name,
                host,
                reports_head=reports.get(name),
                deploy_head=deploys.get(name),
                publishers=publishers,
                publishers_id=publishers_id,
                previous=self.previous.get(name),
                now=moment,
            )
            packages = None
            if sboms is not None:
                data, packages = self._software(sboms, data, host, self.previous.get(name))
            seen[name] = data
            found = data.sbom.found if data.sbom is not None else None
            scan = vulnscan.scan(
                scanner,
                HostSoftware.of(data, host.cve_exemptions),
                moment.date(),
                (found.packages_id, packages) if found and packages else None,
            )
            judged = judge(data, host, policies, moment, settings.stale_after, scan)
            rows.append(HostRow(host, judged.status, tuple(failing(judged.answers)), packages))
        self.previous = seen
        used = {d.sbom.found.packages_id for d in seen.values() if d.sbom and d.sbom.found}
        self.sets = {k: v for k, v in self.sets.items() if k in used}
        return FleetStatus(str(head.id), settings.name, moment, tuple(rows))

    def _software(
        self, sboms: software.SbomFinder, data: HostData, host: Host, previous: HostData | None
    ) -> tuple[HostData, str | None]:
        """``data`` with its SBOM found as a site build finds it, and its package set."""
        update = sboms.update(data, host, previous)
        if update.packages is not None:
            self.sets[update.packages[0]] = update.packages[1]
        found = update.state.found
        return replace(data, sbom=update.state), self.sets.get(found.packages_id) if found else None


def read_status(
    repo_path: Path, now: datetime | None = None, *, software: bool = False
) -> FleetStatus:
    return FleetReader(repo_path, software=software).read(now)


# -- the table ----------------------------------------------------------------------------

COLUMNS = ("HOST", "STATE", "APPLIED", "PUBLISHED", "LAST SEEN", "REBOOT", "FAILING POLICIES")
VERSION = "VERSION"  # the column --package adds


def _versions(row: HostRow) -> str:
    """The versions of the queried package the host runs."""
    return ", ".join(v or "(no version)" for _n, v in row.matched)


def _cells(row: HostRow, now: datetime, query: PackageQuery | None) -> tuple[str, ...]:
    status = row.status
    seen = status.last_seen
    return (
        *((row.host.name, _versions(row)) if query is not None else ()),
        *(() if query is not None else (row.host.name,)),
        str(status.state),
        states.short(status.applied) if status.applied else "-",
        states.short(status.published) if status.published else "-",
        f"{states.describe_age((now - seen).total_seconds())} ago" if seen else "never",
        row.reboot or "-",
        ", ".join(row.failing) or "-",
    )


def table(status: FleetStatus) -> str:
    """One line per host under a header, columns aligned, then a count by state."""
    query = status.package
    header = (COLUMNS[0], VERSION, *COLUMNS[1:]) if query is not None else COLUMNS
    lines = [header, *(_cells(r, status.now, query) for r in status.rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    text = [
        "  ".join(cell.ljust(width) for cell, width in zip(line, widths, strict=True)).rstrip()
        for line in lines
    ]
    counts: dict[State, int] = {}
    for row in status.rows:
        counts[row.status.state] = counts.get(row.status.state, 0) + 1
    summary = ", ".join(f"{counts[s]} {s}" for s in STATE_ORDER if s in counts)
    text.append("")
    text.append(
        f"{len(status.rows)} host{'s' if len(status.rows) != 1 else ''}"
        + (f" running {query}" if query is not None else "")
        + (f": {summary}" if summary else "")
        + f"; main {status.main[:8]}, {iso(status.now)}"
    )
    return "\n".join(text)


# -- watching -------------------------------------------------------------------------------


def watch_paths(repo_path: Path) -> list[Path]:
    """What changes when the repository does: its git directory (refs, packed-refs)."""
    repo = collect.open_repo(repo_path)
    return [Path(repo.path)]


def _heads(repo_path: Path) -> tuple[str | None, dict[str, str], dict[str, str]]:
    """Main and every deploy/reports head: what a change of the fleet moves."""
    repo = collect.open_repo(repo_path)
    main = commits.ref_target(repo, MAIN_REF)
    return (str(main) if main else None, *collect.list_heads(repo))


def changes(
    repo_path: Path, stop: threading.Event, *, retick: float = RETICK_SECONDS
) -> Iterator[str]:
    """Yield once at start, then each time the repository changes (a fetch, a push, a
    commit) or ``retick`` seconds pass (time alone turns hosts stale), until ``stop``."""
    heads = _heads(repo_path)
    yield "start"
    paths = [str(p) for p in watch_paths(repo_path)]
    waited = 0.0
    first_tick = True
    for found in watchfiles.watch(
        *paths,
        stop_event=stop,
        rust_timeout=1000,
        yield_on_timeout=True,
        debounce=300,
        raise_interrupt=False,
        watch_filter=_not_lock_files,
    ):
        if stop.is_set():
            return
        # A change between the first read and the watch's start is seen by no watcher.
        missed = first_tick and not found and _heads(repo_path) != heads
        first_tick = False
        if found or missed:
            waited = 0.0
            yield "changed"
            continue
        waited += 1.0
        if waited >= retick:
            waited = 0.0
            yield "time"


def _not_lock_files(_change: watchfiles.Change, path: str) -> bool:
    """Lock files come and go around every ref update: the update itself is enough."""
    return not path.endswith(".lock")


def watch(
    repo_path: Path,
    show: Callable[[FleetStatus], None],
    stop: threading.Event,
    *,
    fail: Callable[[GitopsError], None],
    now: Callable[[], datetime] = lambda: datetime.now(UTC),
    retick: float = RETICK_SECONDS,
    software: bool = False,
) -> None:
    """Read and ``show`` the fleet, then again on each change until ``stop``; a fleet that
    cannot be read (main invalid for a while) is said through ``fail``, and watched on."""
    reader = FleetReader(repo_path, software=software)
    for _why in changes(repo_path, stop, retick=retick):
        try:
            show(reader.read(now()))
        except GitopsError as err:
            fail(err)
        except pygit2.GitError:
            continue  # caught mid-update (a ref moved under us): the next change reads again
