"""One timeline of changes to main, publishes and applies, each linked to its commit.

``git log`` stays the record: this is a view of it, capped at the newest
:data:`MAX_EVENTS` events, and every line names a commit that ``git verify-commit``
can check.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gitops.sitegen.model import MainCommit, Trust

MAX_EVENTS = 1000
MAX_LISTED_HOSTS = 12


class Kind(StrEnum):
    CHANGE = "change"  # a commit on main
    PUBLISH = "publish"  # deploy commits, grouped by main commit and signer
    APPLY = "apply"  # a host's applied report


@dataclass(frozen=True)
class Event:
    kind: Kind
    time: datetime
    sha: str  # the commit to check
    title: str
    who: str  # author, verified publisher principal, or host
    trust: Trust | None  # None for main: as trustworthy as the forge's review rules
    hosts: tuple[str, ...] = ()
    host_count: int = 0
    source: str | None = None  # main commit a publish or apply came from
    pull_request: int | None = None


@dataclass(frozen=True)
class DeployRef:
    """A deploy commit, as the audit trail groups it into publishes."""

    source: str  # its Source-Commit ("" when it has none)
    signer: str  # the verified publisher, or why it does not verify
    trust: Trust
    time: datetime
    commit: str


@dataclass(frozen=True)
class ApplyRef:
    """An ``applied`` report, as the audit trail lists it."""

    time: datetime
    commit: str  # the report commit
    applied: str  # the deploy commit it applied ("" when unknown)
    trust: Trust
    source: str | None  # main commit of the applied deploy commit

    def event(self, host: str) -> Event:
        return Event(
            kind=Kind.APPLY,
            time=self.time,
            sha=self.commit,
            title=f"{host} applied {self.applied[:8]}",
            who=host,
            trust=self.trust,
            hosts=(host,),
            host_count=1,
            source=self.source,
        )


def main_events(history: Iterable[MainCommit]) -> list[Event]:
    return [
        Event(
            kind=Kind.CHANGE,
            time=c.time,
            sha=c.sha,
            title=c.subject,
            who=f"{c.author} <{c.email}>",
            trust=None,
            pull_request=c.pull_request,
        )
        for c in history
    ]


def publish_events(
    deploys: Mapping[str, Iterable[DeployRef]], sources: Mapping[str, MainCommit]
) -> list[Event]:
    """Deploy commits grouped by (main commit, signer): one publish touches many hosts.
    ``deploys``: host -> its deploy commits."""
    groups: dict[tuple[str, str, Trust], list[tuple[datetime, str, str]]] = {}
    for name, refs in deploys.items():
        for ref in refs:
            groups.setdefault((ref.source, ref.signer, ref.trust), []).append(
                (ref.time, name, ref.commit)
            )
    events = []
    for (source, signer, trust), items in groups.items():
        items.sort()
        names = tuple(sorted(n for _, n, _ in items))
        origin = sources.get(source)
        title = f"publish of {origin.subject}" if origin is not None else "publish"
        events.append(
            Event(
                kind=Kind.PUBLISH,
                time=items[0][0],
                sha=items[0][2],
                title=title,
                who=signer if trust is Trust.VERIFIED else f"unverified: {signer}",
                trust=trust,
                hosts=names[:MAX_LISTED_HOSTS],
                host_count=len(names),
                source=source or None,
                pull_request=origin.pull_request if origin is not None else None,
            )
        )
    return events


def timeline(
    history: Iterable[MainCommit],
    applies: Iterable[tuple[str, ApplyRef]],
    deploys: Mapping[str, Iterable[DeployRef]],
    sources: Mapping[str, MainCommit],
) -> list[Event]:
    """Changes, publishes and applies, newest first, the newest MAX_EVENTS. ``applies`` are
    (host, apply) pairs: only the events that make the cut are built."""
    newest_applies = heapq.nlargest(
        MAX_EVENTS, applies, key=lambda item: (item[1].time, item[1].commit)
    )
    events = itertools.chain(
        main_events(history),
        publish_events(deploys, sources),
        (ref.event(host) for host, ref in newest_applies),
    )
    return heapq.nlargest(MAX_EVENTS, events, key=lambda e: (e.time, e.kind, e.sha))
