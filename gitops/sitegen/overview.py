"""The whole fleet at a glance, from derived rows only: counts, the most urgent problems,
the drift groups, the 30-day charts, the compliance summary and the audit trail; and the
table of aggregate pages (overview, inventory, drift, compliance, audit) with their JSON.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from markupsafe import Markup

from gitops.fleet.commands import BadCommand, SignedCommand
from gitops.fleet.model import FleetSettings
from gitops.fleet.policies import Outcome, Policy
from gitops.protocol import format_time
from gitops.sitegen import audit, commands, compliance, currency, export, states
from gitops.sitegen.audit import ApplyRef
from gitops.sitegen.charts import PALETTE, STATE_COLORS, Series, stacked_bars
from gitops.sitegen.derived import Derived, decode_samples
from gitops.sitegen.model import (
    QUIET_FLAGS,
    STATE_ORDER,
    URGENCY,
    DriftGroup,
    Enrolment,
    Flag,
    HostStatus,
    MainCommit,
    Orphan,
    Problem,
    State,
    Trust,
)

CHART_DAYS = 30
MAX_PROBLEMS = 200  # listed on the overview; the drift page has them all
MAX_VERSIONS = 5  # NixOS releases charted by name; the rest are "other"
_SECOND = timedelta(seconds=1)
# Flags that get a section on the drift page beside the states.
GROUPED_FLAGS = frozenset({Flag.DEPLOY_REWOUND, Flag.REPORTS_REWRITTEN, Flag.DRIFT})
# The drift page's sections, most urgent first: every state but up to date, and those flags.
DRIFT_ORDER: tuple[State | Flag, ...] = tuple(
    k for k in URGENCY if isinstance(k, State) or k in GROUPED_FLAGS
)
# The overview's flag tiles, in this order (a flag no host has is left out).
FLAG_TILES: tuple[Flag, ...] = (
    *(k for k in URGENCY if isinstance(k, Flag)),
    Flag.REBOOT_PENDING,
    Flag.DEPLOY_UNVERIFIED,
    Flag.REPORT_UNVERIFIED,
)


@dataclass(frozen=True)
class Overview:
    """The whole fleet for the aggregate pages, from derived rows only."""

    policies: Sequence[Policy]
    now: datetime
    derived: Mapping[str, Derived]

    @property
    def statuses(self) -> dict[str, HostStatus]:
        return {name: d.status for name, d in self.derived.items()}

    @property
    def outcomes(self) -> dict[str, str]:
        return {name: d.outcomes for name, d in self.derived.items()}

    def applies(self) -> Iterator[tuple[str, ApplyRef]]:
        for name, d in self.derived.items():
            for ref in d.applies:
                yield name, ref

    def trust_counts(self) -> Counter[Trust]:
        counts = Counter[Trust]()
        for d in self.derived.values():
            for trust, count in d.trust_counts:
                counts[trust] += count
        return counts


def problems(view: Overview) -> list[Problem]:
    """Every host that is not up to date or carries a flag, most urgent first, then the
    longest-standing."""
    found = []
    for name, status in view.statuses.items():
        if status.quiet:
            continue
        kind = status.most_urgent
        if kind is State.UP_TO_DATE:  # only flags that rank nowhere: the first of them
            kind = next(f for f in status.flags if f not in QUIET_FLAGS)
        text = status.note(kind) if isinstance(kind, Flag) else f"{kind}: {status.reason}"
        found.append(Problem(status.urgency, kind, name, text, status.since))
    found.sort(key=lambda p: (p.rank, p.since or view.now, p.host))
    return found


def drift_groups(view: Overview) -> list[DriftGroup]:
    """Hosts that are not up to date by state, and hosts with drift, longest first."""
    groups: dict[State | Flag, list[HostStatus]] = {}
    for status in view.statuses.values():
        if status.state is not State.UP_TO_DATE:
            groups.setdefault(status.state, []).append(status)
        for flag in GROUPED_FLAGS.intersection(status.flags):
            groups.setdefault(flag, []).append(status)
    return [
        DriftGroup(kind, tuple(sorted(groups[kind], key=lambda s: (s.since or view.now, s.name))))
        for kind in DRIFT_ORDER
        if kind in groups
    ]


@dataclass(frozen=True)
class Charts:
    states: Markup  # hosts by state, each day
    versions: Markup  # NixOS releases in use, each day
    data: dict[str, Any]  # the same numbers, for index.json


def _version_label(version: str | None) -> str:
    if not version:
        return "unknown"
    parts = version.split(".")
    return ".".join(parts[:2]) if len(parts) >= 2 else version


def _daily_counts(view: Overview, days: int) -> tuple[list[Counter[str]], list[Counter[str]]]:
    """Hosts by state and by NixOS release (major.minor) at each day end."""
    state_counts = [Counter[str]() for _ in range(days)]
    version_counts = [Counter[str]() for _ in range(days)]
    labels_of: dict[str | None, str] = {}
    never = str(State.NEVER)
    # Many hosts share a history (up to date every day on one release): count each
    # distinct one once.
    histories = Counter(
        (d.samples, str(d.status.state), d.status.nixos_version) for d in view.derived.values()
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
    return state_counts, version_counts


def _version_series(version_counts: list[Counter[str]]) -> list[Series]:
    """The MAX_VERSIONS releases most used over the period, and "other"."""
    totals = Counter[str]()
    for counter in version_counts:
        totals.update(counter)
    top = [v for v, _ in totals.most_common(MAX_VERSIONS)]
    series = [
        Series(v, PALETTE[i % len(PALETTE)], [c[v] for c in version_counts])
        for i, v in enumerate(sorted(top))
    ]
    others = [sum(n for v, n in c.items() if v not in top) for c in version_counts]
    if any(others):
        series.append(Series("other", PALETTE[-1], others))
    return series


def charts(view: Overview) -> Charts:
    ends = states.day_ends(view.now, CHART_DAYS)
    state_counts, version_counts = _daily_counts(view, len(ends))
    labels = [(moment.astimezone(UTC) - _SECOND).strftime("%m-%d") for moment in ends]
    labels[-1] = "now"
    state_series = [
        Series(str(s), STATE_COLORS[str(s)], [c[str(s)] for c in state_counts])
        for s in STATE_ORDER
        if any(c[str(s)] for c in state_counts)
    ]
    version_series = _version_series(version_counts)
    data = {
        "days": [format_time(e) for e in ends],
        "states": {s.label: list(s.values) for s in state_series},
        "nixos_versions": {s.label: list(s.values) for s in version_series},
    }
    return Charts(
        stacked_bars(labels, state_series, title="Hosts by state, each day of the last 30 days"),
        stacked_bars(
            labels, version_series, title="NixOS releases in use, each day of the last 30 days"
        ),
        data,
    )


@dataclass(frozen=True)
class AggregatePage:
    """One aggregate page: ``<name>.html`` from the template of that name with ``context``,
    and ``<name>.json`` with ``data``."""

    name: str
    title: str
    context: Mapping[str, Any]
    data: Mapping[str, Any]


@dataclass(frozen=True)
class Sources:
    """What the aggregate pages show beside the hosts: from main and the refs."""

    settings: FleetSettings
    names: Sequence[str]  # every host in main, sorted
    history: Sequence[MainCommit]  # main, newest first
    commits: Mapping[str, MainCommit]  # main commits by id (history and applied sources)
    orphans: Sequence[Orphan]
    enrolments: Sequence[Enrolment] = ()  # pending enroll/<host> branches
    commands: Sequence[SignedCommand | BadCommand] = ()  # main's commands/


def _index_page(
    view: Overview,
    sources: Sources,
    summaries: Sequence[compliance.PolicySummary],
    found: Sequence[Problem],
    drift: Sequence[DriftGroup],
) -> AggregatePage:
    statuses = view.statuses.values()
    counts = Counter(s.state for s in statuses)
    flag_counts = Counter(f for s in statuses for f in s.flags)
    failing = [(s.policy, s.counts[Outcome.FAIL]) for s in summaries if s.counts[Outcome.FAIL]]
    failing.sort(key=lambda item: (-item[1], item[0].name))
    drawn = charts(view)
    nixpkgs = currency.spread(view.derived.values(), view.now)
    context = {
        "nixpkgs": nixpkgs,
        "max_revisions": currency.MAX_REVISIONS,
        "counts": counts,
        "states_order": STATE_ORDER,
        "flag_counts": flag_counts,
        "flag_tiles": [f for f in FLAG_TILES if flag_counts[f]],
        "drift_kinds": {g.kind for g in drift},
        "failing_counts": failing,
        "problems": found[:MAX_PROBLEMS],
        "problem_total": len(found),
        "state_chart": drawn.states,
        "version_chart": drawn.versions,
        "orphans": sources.orphans,
        "enrolments": sources.enrolments,
        "trust_counts": view.trust_counts(),
    }
    data = export.index_json(
        hosts=len(view.derived),
        counts=counts,
        flag_counts=flag_counts,
        summaries=summaries,
        problems=found,
        chart_data=drawn.data,
    )
    return AggregatePage("index", "Overview", context, {**data, "nixpkgs": nixpkgs.to_json()})


def _inventory_page(view: Overview, sources: Sources) -> AggregatePage:
    rows = Markup("\n".join(view.derived[name].row_html for name in sources.names))
    data = export.inventory_file(view.derived[name].row_json for name in sorted(view.derived))
    return AggregatePage("inventory", "Inventory", {"rows": rows}, data)


def aggregate_pages(view: Overview, sources: Sources) -> tuple[AggregatePage, ...]:
    """The overview, inventory, drift, compliance and audit pages, and their JSON."""
    summaries = compliance.summarize_codes(view.policies, view.outcomes)
    drift = drift_groups(view)
    deploys = {name: d.deploys for name, d in view.derived.items()}
    events = audit.timeline(sources.history, view.applies(), deploys, sources.commits)
    return (
        _index_page(view, sources, summaries, problems(view), drift),
        _inventory_page(view, sources),
        AggregatePage(
            "drift",
            "Drift",
            {"groups": drift, "sources": sources.commits},
            export.drift_json(drift, sources.commits),
        ),
        AggregatePage(
            "compliance",
            "Compliance",
            {"summaries": summaries, "policies": view.policies},
            export.compliance_json(view.policies, summaries, view.outcomes),
        ),
        AggregatePage(
            "audit",
            "Audit trail",
            {"events": events, "max_events": audit.MAX_EVENTS},
            export.audit_json(events),
        ),
        _commands_page(view, sources),
    )


def _commands_page(view: Overview, sources: Sources) -> AggregatePage:
    acks = {name: d.commands for name, d in view.derived.items()}
    table = commands.rows(sources.commands, acks, view.now)
    bad = [c for c in sources.commands if isinstance(c, BadCommand)]
    context, data = commands.page_data(table, bad)
    return AggregatePage("commands", "Commands", context, data)
