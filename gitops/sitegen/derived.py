"""What the aggregate pages need from each host, small, and valid until a known moment.

A host's :class:`Derived` is computed (in a worker) from its full data. It stays valid
while its identity (main, its refs, its key, the publishers, the templates and
settings) is unchanged and until ``valid_until``: the moment its state would turn
stale, a policy on ``report.age_seconds`` would flip, an exemption would expire, or the
30-day chart window moves to the next day. A build whose hosts are all still valid
reads no git object and no host history: only these rows.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, date, datetime, time, timedelta

from gitops.fleet.model import Host
from gitops.fleet.policies import Condition, Policy, deadlines, is_dated
from gitops.protocol import CommandAck, Result
from gitops.sitegen import compliance, export, states
from gitops.sitegen.audit import ApplyRef, DeployRef
from gitops.sitegen.model import (
    CLOCK_SKEW,
    Flag,
    HostData,
    HostSoftware,
    HostStatus,
    State,
    Trust,
)

Samples = tuple[tuple[str, str | None], ...]  # (state, NixOS version) at each past day end

_AGE_FACT = "report.age_seconds"
_NUMERIC_OPS = ("at_least", "at_most", "equals", "not_equals")


def encode_samples(samples: Iterable[tuple[object, str | None]]) -> str:
    """Samples as one string (cheap to store and load, and to count identical ones)."""

    def clean(text: str) -> str:  # a version is the host's word: no separators in it
        return text.replace("\t", " ").replace("\n", " ")

    return "\n".join(f"{state}\t{clean(version or '')}" for state, version in samples)


def decode_samples(text: str) -> Samples:
    if not text:
        return ()
    pairs = (line.split("\t") for line in text.split("\n"))
    return tuple((state, version or None) for state, version in pairs)


@dataclass(frozen=True)
class Rules:
    """What every host is judged and derived against in one build."""

    policies: Sequence[Policy]
    now: datetime
    stale_after: int  # seconds
    global_id: str  # the code, templates, settings and policies
    main_sha: str
    window: tuple[datetime, ...]  # the past day ends the chart samples
    flips: tuple[int, ...] | None  # age_flips(policies)

    @property
    def window_id(self) -> str:
        return self.window[0].isoformat() if self.window else ""

    @property
    def window_ends_at(self) -> datetime:
        """The chart window moves at the next UTC midnight."""
        tomorrow = self.now.date() + timedelta(days=1)
        return datetime.combine(tomorrow, time(0), tzinfo=UTC)

    def identity(self, host: str, reports_head: str | None, deploy_head: str | None) -> str:
        """Everything a host's derived row depends on, except time."""
        return f"{self.main_sha}:{self.global_id}:{host}:{reports_head}:{deploy_head}"


@dataclass(frozen=True)
class PageFile:
    """A page written into the site: its path, the key it was rendered for, its digest."""

    path: str
    key: str
    digest: str


@dataclass(frozen=True)
class Derived:
    identity: str
    window: str  # start of the chart window the samples are for
    valid_until: datetime | None  # None: nothing time-dependent ahead
    status: HostStatus
    outcomes: str  # compliance.encode: one character per policy
    page_key: str
    row_html: str  # the inventory row
    row_json: str  # the inventory.json entry, serialized
    trust_counts: tuple[tuple[Trust, int], ...]
    applies: tuple[ApplyRef, ...]
    deploys: tuple[DeployRef, ...]
    samples: str  # encode_samples
    invalid_reports: int  # report commits read whose status.json was refused
    pages: tuple[PageFile, ...] = ()
    software: HostSoftware | None = None  # gitops.sitegen.software
    commands: tuple[CommandAck, ...] = ()  # verified acknowledgements, newest last, no output
    nixpkgs: tuple[str, str] | None = None  # the counted report's (revision, date or "")
    history_pending: bool = False  # HostData.history_pending: a later build reads on
    metric_lines: tuple[str, ...] = ()  # metrics.host_lines: its Prometheus samples

    def valid(self, identity: str, window: str, now: datetime) -> bool:
        return (
            self.identity == identity
            and self.window == window
            and (self.valid_until is None or now < self.valid_until)
        )


def page_key(
    global_id: str,
    data: HostData,
    host: Host,
    status: HostStatus,
    answers: tuple[compliance.Answer, ...],
) -> str:
    """What a host's pages depend on: equal keys, equal pages (HTML and JSON)."""
    # repr, not pickle: pickle's bytes depend on object identity (a cached copy differs).
    pending = (data.older, data.sbom.pending if data.sbom is not None else None)
    ident = (data.reports_head, data.deploy_head, data.key_id, data.publishers_id, pending)
    text = repr((global_id, ident, host, status, answers))
    return hashlib.sha256(text.encode()).hexdigest()


def _age_conditions(condition: Condition) -> Iterable[Condition]:
    if condition.children:
        for child in condition.children:
            yield from _age_conditions(child)
    elif condition.fact.startswith("report."):
        yield condition


def age_flips(policies: Sequence[Policy]) -> tuple[int, ...] | None:
    """Report ages (seconds) at which some policy's answer can change; None when a policy
    looks at ``report.*`` in a way whose flips we cannot list (then: re-judge every build)."""
    flips: set[int] = set()
    for policy in policies:
        for condition in _age_conditions(policy.condition):
            if condition.fact != _AGE_FACT:
                if condition.fact == "report.verified":
                    continue
                return None
            if condition.op == "exists":
                continue
            if condition.op not in _NUMERIC_OPS or not isinstance(condition.value, int | float):
                return None
            value = int(condition.value)
            flips.update((value, value + 1))
    return tuple(sorted(flips))


def valid_until(data: HostData, host: Host, status: HostStatus, rules: Rules) -> datetime | None:
    """The first moment after ``rules.now`` at which this host's state or answers may change."""
    moments = [rules.window_ends_at]
    if Flag.FUTURE_REPORT in status.flags:
        # A report dated ahead counts from the moment it is no longer ahead.
        limit = rules.now + CLOCK_SKEW
        moments += [r.when - CLOCK_SKEW for r in data.reports if r.verified and r.when > limit]
    seen = status.last_seen  # the counted report's time
    if seen is not None and status.state is not State.STALE:
        moments.append(seen + timedelta(seconds=rules.stale_after + 1))
    if seen is not None:
        if rules.flips is None:
            return rules.now  # re-judge on every build
        age = int((rules.now - seen).total_seconds())
        later = [f for f in rules.flips if f > age]
        if later:
            moments.append(seen + timedelta(seconds=later[0]))
    moments += [m for m in _fact_deadlines(data, rules) if m > rules.now]
    today: date = rules.now.date()
    for exemption in host.exemptions:
        if exemption.expires >= today:
            day_after = exemption.expires + timedelta(days=1)
            moments.append(datetime.combine(day_after, time(0), tzinfo=UTC))
    return min(moments)


def _fact_deadlines(data: HostData, rules: Rules) -> list[datetime]:
    """When a ``max_age_days`` answer flips for the counted report (nixpkgs turning old)."""
    dated = [p for p in rules.policies if is_dated(p.condition)]
    newest = states.counted(data, rules.now) if dated else None
    report = data.report_of(newest) if newest is not None else None
    if report is None:
        return []
    context = compliance.context(report, rules.now)
    return [m for p in dated for m in deadlines(p.condition, context)]


def deploy_refs(data: HostData) -> tuple[DeployRef, ...]:
    return tuple(
        DeployRef(d.source_commit or "", d.principal or d.trust_detail, d.trust, d.time, d.oid)
        for d in data.deploys
    )


def apply_refs(data: HostData) -> tuple[ApplyRef, ...]:
    return tuple(
        ApplyRef(
            entry.when, entry.oid, entry.deploy_applied or "", entry.trust, entry.source_commit
        )
        for entry in data.reports
        if entry.result is Result.APPLIED
    )


def derive(
    data: HostData,
    host: Host,
    status: HostStatus,
    answers: tuple[compliance.Answer, ...],
    rules: Rules,
    *,
    samples: str,
    row_html: str,
) -> Derived:
    failing = compliance.failing(answers)
    return Derived(
        identity=rules.identity(data.name, data.reports_head, data.deploy_head),
        window=rules.window_id,
        valid_until=valid_until(data, host, status, rules),
        status=status,
        outcomes=compliance.encode(rules.policies, answers),
        page_key=page_key(rules.global_id, data, host, status, answers),
        row_html=row_html,
        row_json=export.compact(export.inventory_json(host, status, failing)),
        trust_counts=data.trust_counts,
        applies=apply_refs(data),
        deploys=deploy_refs(data),
        samples=samples,
        invalid_reports=sum(1 for r in data.reports if r.error),
        commands=command_acks(data),
        nixpkgs=nixpkgs_of(data, rules.now),
        history_pending=data.history_pending,
    )


def nixpkgs_of(data: HostData, now: datetime) -> tuple[str, str] | None:
    """The nixpkgs the counted report says the host runs (``facts.nixpkgs_revision`` and
    ``nixpkgs_date``), for the overview's spread; None when it does not say."""
    newest = states.counted(data, now)
    report = data.report_of(newest) if newest is not None else None
    facts = report.facts if report is not None else {}
    revision, day = facts.get("nixpkgs_revision"), facts.get("nixpkgs_date")
    if not isinstance(revision, str) or revision in ("", "unknown"):
        return None
    return revision, day if isinstance(day, str) and day != "unknown" else ""


def command_acks(data: HostData) -> tuple[CommandAck, ...]:
    """The host's verified acknowledgements of signed commands, oldest first, without
    their output (the aggregate commands page needs only the outcomes)."""
    return tuple(
        replace(ack, output="")
        for entry in reversed(data.reports)
        if entry.verified
        for ack in entry.commands
    )
