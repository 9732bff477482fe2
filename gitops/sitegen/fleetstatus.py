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
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
import watchfiles

from gitops.errors import GitopsError
from gitops.fleet.model import Host
from gitops.protocol import MAIN_REF
from gitops.sitegen import collect, export, states
from gitops.sitegen.compliance import failing
from gitops.sitegen.model import STATE_ORDER, Flag, HostData, HostStatus, State
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

    def to_json(self) -> dict[str, Any]:
        """The host's object in the site's inventory.json, as it is."""
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

    def select(self, *, states: Iterable[State] = (), tags: Iterable[str] = ()) -> FleetStatus:
        """Only the hosts in one of ``states`` and with one of ``tags`` (each: all if empty)."""
        wanted, tagged = set(states), set(tags)
        rows = tuple(
            r
            for r in self.rows
            if (not wanted or r.status.state in wanted)
            and (not tagged or tagged.intersection(r.host.tags))
        )
        return FleetStatus(self.main, self.fleet, self.now, rows)

    def to_json(self) -> dict[str, Any]:
        return {
            "schema": export.SCHEMA,
            "built": iso(self.now),
            "main": self.main,
            "fleet": self.fleet,
            "hosts": [row.to_json() for row in self.rows],
        }


class FleetReader:
    """Reads and judges the fleet of one repository; keeps each host's data for the next
    read (only new commits are read and verified again)."""

    def __init__(self, repo_path: Path) -> None:
        self.repo_path = repo_path
        self.previous: dict[str, HostData] = {}

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
            seen[name] = data
            judged = judge(data, host, policies, moment, settings.stale_after)
            rows.append(HostRow(host, judged.status, tuple(failing(judged.answers))))
        self.previous = seen
        return FleetStatus(str(head.id), settings.name, moment, tuple(rows))


def read_status(repo_path: Path, now: datetime | None = None) -> FleetStatus:
    return FleetReader(repo_path).read(now)


# -- the table ----------------------------------------------------------------------------

COLUMNS = ("HOST", "STATE", "APPLIED", "PUBLISHED", "LAST SEEN", "REBOOT", "FAILING POLICIES")


def _cells(row: HostRow, now: datetime) -> tuple[str, ...]:
    status = row.status
    seen = status.last_seen
    return (
        row.host.name,
        str(status.state),
        states.short(status.applied) if status.applied else "-",
        states.short(status.published) if status.published else "-",
        f"{states.describe_age((now - seen).total_seconds())} ago" if seen else "never",
        row.reboot or "-",
        ", ".join(row.failing) or "-",
    )


def table(status: FleetStatus) -> str:
    """One line per host under a header, columns aligned, then a count by state."""
    lines = [COLUMNS, *(_cells(r, status.now) for r in status.rows)]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
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
) -> None:
    """Read and ``show`` the fleet, then again on each change until ``stop``; a fleet that
    cannot be read (main invalid for a while) is said through ``fail``, and watched on."""
    reader = FleetReader(repo_path)
    for _why in changes(repo_path, stop, retick=retick):
        try:
            show(reader.read(now()))
        except GitopsError as err:
            fail(err)
        except pygit2.GitError:
            continue  # caught mid-update (a ref moved under us): the next change reads again
