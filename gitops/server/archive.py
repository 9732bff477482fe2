"""``gitops server archive --before YYYY-MM``: monthly marks in the reports' history, and
the history below them in a pack that maintenance never rewrites.

Signed history is never rewritten: ``reports/<host>`` stays one unbroken chain, so agents
keep fast-forwarding it, the server keeps checking pushes against it, and anyone can
verify it from any commit down. What this adds, in fleet.git:

- for each host and each month before ``before`` in which it reported, the ref
  ``refs/archive/reports/<host>/<YYYY-MM>`` at the last report commit of that month: the
  first commit, walking from the branch's head along first parents, whose commit time is
  before the next month began. Such marks descend from one another month by month. A
  mark is created once and never moved; reports that arrive later dated in an archived
  month sit above it (they are still in the chain). No client sees or pushes
  ``refs/archive/`` (``transfer.hideRefs``, and the pre-receive hook refuses it);
- one pack of every object the new marks reach that older marks do not, marked
  ``.keep``: maintenance (a geometric repack) and git's own gc never rewrite it, so the
  cost of packing stays that of the recent months, however long the fleet runs. The rest
  is repacked once without it, so nothing is stored twice.

Host repositories are not archived: a host's repository holds its own two branches, and
maintenance packs it geometrically. If the command stops after writing the marks and before
the pack, their history stays in the ordinary packs, complete; nothing is lost.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import (
    ARCHIVE_MONTH,
    ARCHIVE_PREFIX,
    REPORTS_PREFIX,
    archive_ref,
    is_host_name,
    parse_archive_ref,
)
from gitops.server.layout import Layout
from gitops.server.maintain import children_cpu, git, locked
from gitops.system import atomic

KEEP_TEXT = "gitops server archive: report history before {month}; never repacked\n"
_PACK_HASH = re.compile(r"^[0-9a-f]{40,64}$")


def parse_month(text: str) -> str:
    if not ARCHIVE_MONTH.match(text):
        raise GitopsError(f"--before {text!r}: give a month as YYYY-MM (e.g. 2026-01)")
    return text


def months_ago(now: datetime, months: int) -> str:
    """The month ``months`` before ``now``'s, as YYYY-MM."""
    index = now.year * 12 + now.month - 1 - months
    return f"{index // 12:04d}-{index % 12 + 1:02d}"


def _month_start(month: str) -> int:
    year, number = (int(part) for part in month.split("-"))
    return int(datetime(year, number, 1, tzinfo=UTC).timestamp())


def _month_of(timestamp: int) -> str:
    return datetime.fromtimestamp(timestamp, UTC).strftime("%Y-%m")


def marks(
    repo: pygit2.Repository, head: pygit2.Oid, before: str, stop: set[pygit2.Oid]
) -> dict[str, pygit2.Oid]:
    """month -> the last report commit of that month, for each month before ``before`` in
    which a commit was made: walking from ``head`` along first parents, the first commit
    dated before the next month began. The walk ends at a commit in ``stop`` (older marks)."""
    found: dict[str, pygit2.Oid] = {}
    boundary = _month_start(before)
    oid: pygit2.Oid | None = head
    while oid is not None and oid not in stop:
        commit = repo.get(oid)
        if not isinstance(commit, pygit2.Commit):
            raise GitopsError(f"{oid} on a reports branch is not a commit")
        if commit.commit_time < boundary:
            month = _month_of(commit.commit_time)
            found[month] = oid
            boundary = _month_start(month)
        oid = commit.parent_ids[0] if commit.parent_ids else None
    return found


@dataclass
class ArchiveResult:
    before: str
    hosts: int = 0
    created: list[str] = field(default_factory=list)  # refs
    pack: str | None = None  # the new kept pack's name
    pack_bytes: int = 0
    cpu_seconds: float = 0.0

    def lines(self) -> list[str]:
        lines = [
            f"{self.hosts} reports branches; {len(self.created)} archive marks created "
            f"for months before {self.before}"
        ]
        if self.pack is not None:
            lines.append(
                f"archive pack {self.pack} ({self.pack_bytes / 1e6:.1f} MB) kept: maintenance "
                f"never rewrites it; took {self.cpu_seconds:.1f} CPU-s in git"
            )
        return lines


def _existing(repo: pygit2.Repository) -> dict[str, dict[str, pygit2.Oid]]:
    """host -> month -> mark."""
    found: dict[str, dict[str, pygit2.Oid]] = {}
    for name in repo.references.iterator(pygit2.enums.ReferenceFilter.ALL):
        ref = str(name.name)
        parsed = parse_archive_ref(ref) if ref.startswith(ARCHIVE_PREFIX) else None
        if parsed is not None and isinstance(name.target, pygit2.Oid):
            found.setdefault(parsed[0], {})[parsed[1]] = name.target
    return found


def _heads(repo: pygit2.Repository) -> dict[str, pygit2.Oid]:
    heads = {}
    for reference in repo.references.iterator(pygit2.enums.ReferenceFilter.ALL):
        ref = str(reference.name)
        host = ref.removeprefix(REPORTS_PREFIX)
        if ref.startswith(REPORTS_PREFIX) and is_host_name(host):
            target = reference.resolve().target
            if isinstance(target, pygit2.Oid):
                heads[host] = target
    return heads


def _write_pack(fleet: Path, new: list[pygit2.Oid], old: list[pygit2.Oid], before: str) -> str:
    """One pack of what ``new`` reaches and ``old`` does not, marked .keep; its name."""
    revs = "".join(f"{oid}\n" for oid in new) + "".join(f"^{oid}\n" for oid in old)
    pack_dir = fleet / "objects" / "pack"
    printed = git(
        fleet, "pack-objects", "--revs", "--honor-pack-keep", "-q", str(pack_dir / "pack"),
        input=revs,
    ).strip()  # fmt: skip
    if not _PACK_HASH.match(printed):
        raise GitopsError(f"git pack-objects printed {printed[:80]!r}, not a pack's name")
    name = f"pack-{printed}"
    atomic.write_text(pack_dir / f"{name}.keep", KEEP_TEXT.format(month=before), mode=0o644)
    # Everything else into one pack without the kept objects: nothing is stored twice.
    git(fleet, "repack", "-a", "-d", "-l", "-q")
    git(fleet, "pack-refs", "--all", "--prune")
    return name


def archive(
    layout: Layout,
    before: str,
    *,
    progress: Callable[[str], None] | None = None,
) -> ArchiveResult:
    """Create the marks for months before ``before`` and pack what they reach (above)."""
    layout.check_initialized()
    parse_month(before)
    this_month = datetime.now(UTC).strftime("%Y-%m")
    if before > this_month:
        raise GitopsError(
            f"--before {before}: give {this_month} (this month) or earlier; a mark is for a "
            "month that has ended, and is never moved"
        )
    say = progress or (lambda _: None)
    result = ArchiveResult(before)
    cpu = children_cpu()
    with locked(layout):
        fleet = pygit2.Repository(str(layout.fleet))
        existing = _existing(fleet)
        heads = _heads(fleet)
        result.hosts = len(heads)
        lines: list[str] = []
        new: list[pygit2.Oid] = []
        for count, (host, head) in enumerate(sorted(heads.items()), start=1):
            have = existing.get(host, {})
            found = marks(fleet, head, before, set(have.values()))
            newest = max(have, default="")
            # Only months after the newest mark: marks stay a chain, each above the last.
            for month, oid in sorted(found.items()):
                if month > newest:
                    lines.append(f"create {archive_ref(host, month)} {oid}\n")
                    result.created.append(archive_ref(host, month))
                    new.append(oid)
            if count % 1000 == 0:
                say(f"  {count} of {len(heads)} hosts")
        if lines:
            git(layout.fleet, "update-ref", "--stdin", input="".join(lines))
        if new:
            old = [oid for months in existing.values() for oid in months.values()]
            result.pack = _write_pack(layout.fleet, new, old, before)
            size = (layout.fleet / "objects" / "pack" / f"{result.pack}.pack").stat().st_size
            result.pack_bytes = size
    result.cpu_seconds = children_cpu() - cpu
    return result
