"""The fleet's nixpkgs spread for the overview: how many hosts run a nixpkgs of what age,
and which revisions, from each host's counted report (``facts.nixpkgs_revision`` and
``nixpkgs_date``, kept in its derived row)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

from gitops.fleet.policies import parse_time
from gitops.sitegen.derived import Derived

# Age buckets: (label, upper bound in days, inclusive); the last has none.
BUCKETS: Final = (
    ("30 days or less", 30),
    ("31 to 90 days", 90),
    ("91 to 180 days", 180),
    ("181 to 365 days", 365),
    ("over a year", None),
)
UNDATED: Final = "date unknown"
UNREPORTED: Final = "not reported"
MAX_REVISIONS: Final = 10  # revisions listed on the overview (the JSON has them all)


@dataclass(frozen=True)
class Revision:
    revision: str
    date: str  # "" when no host said
    hosts: int


@dataclass(frozen=True)
class Spread:
    buckets: tuple[tuple[str, int], ...]  # (label, hosts), every bucket, in order
    revisions: tuple[Revision, ...]  # most hosts first, then newest
    oldest: str  # date of the oldest nixpkgs a host runs ("" when none dated)
    newest: str

    @property
    def reported(self) -> int:
        return sum(n for label, n in self.buckets if label != UNREPORTED)

    def to_json(self) -> dict[str, Any]:
        return {
            "by_age": dict(self.buckets),
            "revisions": [
                {"revision": r.revision, "date": r.date or None, "hosts": r.hosts}
                for r in self.revisions
            ],
            "oldest": self.oldest or None,
            "newest": self.newest or None,
        }


def _bucket(day: str, now: datetime) -> str:
    moment = parse_time(day)
    if moment is None:
        return UNDATED
    age = (now - moment).days
    return next(label for label, limit in BUCKETS if limit is None or age <= limit)


def spread(rows: Iterable[Derived], now: datetime) -> Spread:
    by_bucket = Counter[str]()
    by_revision = Counter[tuple[str, str]]()
    for row in rows:
        if row.nixpkgs is None:
            by_bucket[UNREPORTED] += 1
            continue
        revision, day = row.nixpkgs
        by_bucket[_bucket(day, now)] += 1
        by_revision[(revision, day)] += 1
    labels = [label for label, _ in BUCKETS] + [UNDATED, UNREPORTED]
    dates = sorted(day for _r, day in by_revision if parse_time(day) is not None)
    ordered = sorted(
        (Revision(r, d, n) for (r, d), n in by_revision.items()),
        key=lambda r: (r.date, r.revision),
        reverse=True,
    )
    ordered.sort(key=lambda r: -r.hosts)  # stable: most hosts, then newest
    return Spread(
        tuple((label, by_bucket[label]) for label in labels),
        tuple(ordered),
        dates[0] if dates else "",
        dates[-1] if dates else "",
    )
