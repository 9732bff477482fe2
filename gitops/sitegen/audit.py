"""One timeline of changes to main, publishes and applies, each linked to its commit.

``git log`` stays the record: this is a view of it, capped at the newest
:data:`MAX_EVENTS` events, and every line names a commit that ``git verify-commit``
can check.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gitops.sitegen.model import MainCommit, Trust

MAX_EVENTS = 1000
MAX_LISTED_HOSTS = 12


@dataclass(frozen=True)
class Event:
    kind: str  # change, publish, apply
    time: datetime
    sha: str  # the commit to check
    title: str
    who: str  # author, verified publisher principal, or host
    trust: str  # verified / unverified / unknown key / "" for main (forge rules)
    hosts: tuple[str, ...] = ()
    host_count: int = 0
    source: str | None = None  # main commit a publish or apply came from
    pull_request: int | None = None


def main_events(history: Iterable[MainCommit]) -> list[Event]:
    return [
        Event(
            kind="change",
            time=c.time,
            sha=c.sha,
            title=c.subject,
            who=f"{c.author} <{c.email}>",
            trust="",
            pull_request=c.pull_request,
        )
        for c in history
    ]


def publish_events(
    deploys: Mapping[str, Iterable[tuple[str, str, str, datetime, str]]],
    sources: Mapping[str, MainCommit],
) -> list[Event]:
    """Deploy commits grouped by (main commit, signer): one publish touches many hosts.
    ``deploys``: host -> (source commit, signer, trust, time, commit) of each deploy commit."""
    groups: dict[tuple[str, str, str], list[tuple[datetime, str, str]]] = {}
    for name, entries in deploys.items():
        for source, signer, trust, moment, oid in entries:
            groups.setdefault((source, signer, trust), []).append((moment, name, oid))
    events = []
    for (source, signer, trust), items in groups.items():
        items.sort()
        names = tuple(sorted(n for _, n, _ in items))
        origin = sources.get(source)
        title = f"publish of {origin.subject}" if origin is not None else "publish"
        events.append(
            Event(
                kind="publish",
                time=items[0][0],
                sha=items[0][2],
                title=title,
                who=signer if trust == str(Trust.VERIFIED) else f"unverified: {signer}",
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
    applies: Iterable[tuple[tuple[datetime, str], Callable[[], Event]]],
    deploys: Mapping[str, Iterable[tuple[str, str, str, datetime, str]]],
    sources: Mapping[str, MainCommit],
) -> list[Event]:
    """Changes, publishes and applies, newest first, the newest MAX_EVENTS. ``applies`` are
    ((time, commit), make_event) pairs: only the events that make the cut are built."""
    newest_applies = heapq.nlargest(MAX_EVENTS, applies, key=lambda item: item[0])
    events = itertools.chain(
        main_events(history),
        publish_events(deploys, sources),
        (make() for _, make in newest_applies),
    )
    return heapq.nlargest(MAX_EVENTS, events, key=lambda e: (e.time, e.kind, e.sha))
