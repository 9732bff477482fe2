"""What the aggregate pages need from each host, small, and valid until a known moment.

A host's :class:`Derived` is computed (in a worker) from its full data. It stays valid
while its identity (main, its refs, its key, the publishers, the templates and
settings) is unchanged and until ``valid_until``: the moment its state would turn
stale, a policy on ``report.age_seconds`` would flip, an exemption would expire, or the
30-day chart window moves to the next day. A build whose hosts are all still valid
reads no git object and no host history: only these rows.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from gitops.fleet.model import Host
from gitops.fleet.policies import Condition, Policy
from gitops.protocol import Result
from gitops.sitegen import compliance
from gitops.sitegen.audit import Event
from gitops.sitegen.model import HostData, HostStatus, State
from gitops.sitegen.render import Renderer

Samples = tuple[tuple[str, str | None], ...]  # (state, NixOS version) at each past day end


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


DeployRef = tuple[str, str, str, datetime, str]  # source, signer, trust, time, commit
ApplyRef = tuple[datetime, str, str, str, str | None]  # time, commit, applied, trust, source

_AGE_FACT = "report.age_seconds"
_NUMERIC_OPS = ("at_least", "at_most", "equals", "not_equals")


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
    trust_counts: tuple[tuple[str, int], ...]
    applies: tuple[ApplyRef, ...]
    deploys: tuple[DeployRef, ...]
    samples: str  # encode_samples
    pages: tuple[tuple[str, str, str], ...] = ()  # (path, key, content digest) of its pages

    def valid(self, identity: str, window: str, now: datetime) -> bool:
        return (
            self.identity == identity
            and self.window == window
            and (self.valid_until is None or now < self.valid_until)
        )


def identity(
    main_sha: str, global_id: str, host: str, reports_head: str | None, deploy_head: str | None
) -> str:
    """Everything a host's derived row depends on, except time."""
    return f"{main_sha}:{global_id}:{host}:{reports_head}:{deploy_head}"


def page_key(
    global_id: str,
    data: HostData,
    host: Host,
    status: HostStatus,
    answers: tuple[compliance.Answer, ...],
) -> str:
    # repr, not pickle: pickle's bytes depend on object identity (a cached copy differs).
    ident = (data.reports_head, data.deploy_head, data.key_id, data.publishers_id)
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


def valid_until(
    data: HostData,
    host: Host,
    status: HostStatus,
    now: datetime,
    stale_after: int,
    flips: tuple[int, ...] | None,
    window_ends_at: datetime,
) -> datetime | None:
    """The first moment after ``now`` at which this host's state or answers may change."""
    moments = [window_ends_at]
    newest = data.newest_verified
    if newest is not None and status.state is not State.STALE:
        moments.append(newest.when + timedelta(seconds=stale_after + 1))
    if newest is not None:
        if flips is None:
            return now  # re-judge on every build
        age = int((now - newest.when).total_seconds())
        later = [f for f in flips if f > age]
        if later:
            moments.append(newest.when + timedelta(seconds=later[0]))
    today: date = now.date()
    for exemption in host.exemptions:
        if exemption.expires >= today:
            day_after = exemption.expires + timedelta(days=1)
            moments.append(datetime.combine(day_after, time(0), tzinfo=UTC))
    return min(moments)


def deploy_refs(data: HostData) -> tuple[DeployRef, ...]:
    return tuple(
        (d.source_commit or "", d.principal or d.trust_detail, str(d.trust), d.time, d.oid)
        for d in data.deploys
    )


def apply_refs(data: HostData) -> tuple[ApplyRef, ...]:
    return tuple(
        (entry.when, entry.oid, entry.deploy_applied or "", str(entry.trust), entry.source_commit)
        for entry in data.reports
        if entry.result == str(Result.APPLIED)
    )


def apply_event(host: str, ref: ApplyRef) -> Event:
    moment, sha, applied, trust, source = ref
    return Event(
        kind="apply",
        time=moment,
        sha=sha,
        title=f"{host} applied {applied[:8]}",
        who=host,
        trust=trust,
        hosts=(host,),
        host_count=1,
        source=source,
    )


def inventory_json(host: Host, status: HostStatus, failing: list[str]) -> dict[str, Any]:
    from gitops.sitegen.export import status_json

    return {
        "name": host.name,
        "profiles": list(host.profiles),
        "tags": list(host.tags),
        "owner": host.owner,
        "failing_policies": failing,
        **status_json(status),
    }


def derive(
    *,
    data: HostData,
    host: Host,
    status: HostStatus,
    answers: tuple[compliance.Answer, ...],
    policies: Sequence[Policy],
    ident: str,
    window: str,
    window_ends_at: datetime,
    global_id: str,
    now: datetime,
    stale_after: int,
    flips: tuple[int, ...] | None,
    samples: str,
    renderer: Renderer,
    state_order: list[str],
) -> Derived:
    failing = compliance.failing(answers)
    row = json.dumps(
        inventory_json(host, status, failing), separators=(",", ":"), ensure_ascii=False
    )
    return Derived(
        identity=ident,
        window=window,
        valid_until=valid_until(data, host, status, now, stale_after, flips, window_ends_at),
        status=status,
        outcomes=compliance.encode(policies, answers),
        page_key=page_key(global_id, data, host, status, answers),
        row_html=str(renderer.inventory_row(host, status, failing, state_order)),
        row_json=row,
        trust_counts=data.trust_counts,
        applies=apply_refs(data),
        deploys=deploy_refs(data),
        samples=samples,
    )


@dataclass(frozen=True)
class Overview:
    """The whole fleet for the aggregate pages, from derived rows only."""

    policies: list[Policy]
    now: datetime
    derived: Mapping[str, Derived]

    @property
    def statuses(self) -> dict[str, HostStatus]:
        return {name: d.status for name, d in self.derived.items()}

    @property
    def outcomes(self) -> dict[str, str]:
        return {name: d.outcomes for name, d in self.derived.items()}

    def applies(self) -> Iterator[tuple[tuple[datetime, str], Callable[[], Event]]]:
        """((time, commit), make_event) for every apply: events are built on demand."""
        for name, d in self.derived.items():
            for ref in d.applies:
                yield (ref[0], ref[1]), functools.partial(apply_event, name, ref)

    def trust_counts(self) -> Counter[str]:
        counts = Counter[str]()
        for d in self.derived.values():
            for trust, count in d.trust_counts:
                counts[trust] += count
        return counts
