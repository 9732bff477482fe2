"""One timeline of changes to main, publishes and applies, each linked to its commit.

``git log`` stays the record: this is a view of it, capped at the newest
:data:`MAX_EVENTS` events, and every line names a commit that ``git verify-commit``
can check.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

from gitops.report import Result
from gitops.sitegen.model import HostData, MainCommit, Trust

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


def publish_events(hosts: Mapping[str, HostData], sources: Mapping[str, MainCommit]) -> list[Event]:
    """Deploy commits grouped by (main commit, signer): one publish touches many hosts."""
    groups: dict[tuple[str, str, str], list[tuple[datetime, str, str]]] = {}
    for name, data in hosts.items():
        for entry in data.deploys:
            signer = entry.principal or entry.trust_detail
            key = (entry.source_commit or "", signer, str(entry.trust))
            groups.setdefault(key, []).append((entry.time, name, entry.oid))
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


def apply_events(hosts: Mapping[str, HostData]) -> list[Event]:
    events = []
    for name, data in hosts.items():
        for entry in data.reports:
            if entry.result != str(Result.APPLIED):
                continue
            events.append(
                Event(
                    kind="apply",
                    time=entry.when,
                    sha=entry.oid,
                    title=f"{name} applied {(entry.deploy_applied or '')[:8]}",
                    who=name,
                    trust=str(entry.trust),
                    hosts=(name,),
                    host_count=1,
                    source=entry.source_commit,
                )
            )
    return events


def timeline(
    history: Iterable[MainCommit],
    hosts: Mapping[str, HostData],
    sources: Mapping[str, MainCommit],
) -> list[Event]:
    events = main_events(history) + publish_events(hosts, sources) + apply_events(hosts)
    events.sort(key=lambda e: (e.time, e.kind, e.sha), reverse=True)
    return events[:MAX_EVENTS]
