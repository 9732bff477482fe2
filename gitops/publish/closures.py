"""``gitops plan --systems FILE``: per host, the system ``gitops build`` built from its new
deploy tree against the system its current deploy commit pins (``System-Path``).

The same store path means the same system, whatever changed in the tree: the host is
"same system", the stronger form of the comment-only check. Two different paths that
are both valid in the local store are compared with ``nix store diff-closures``
(packages added, removed, with other versions, size). Anything less gives one plain line
saying why there is no closure diff; nothing is fetched or built here.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import TRAILER_SYSTEM_PATH
from gitops.publish.build import BuiltSystem
from gitops.publish.plan import HostPlan, Why
from gitops.system import nix
from gitops.system.closure_diff import ClosureDiff, Kind
from gitops.trust import commits

NO_DIFF = "no closure diff"
_COMPARED = (Why.NEW, Why.CHANGED, Why.RECOVER)  # the hosts whose tree changes


@dataclass(frozen=True)
class SystemChange:
    """A host's published system against the one built from its new tree."""

    old: str | None  # the System-Path its current deploy head pins
    new: str | None  # the systems file's system, built from exactly its new tree
    diff: ClosureDiff | None  # when both differ and are in the local store
    note: str | None  # when there is no diff: one line saying why ("no closure diff: ...")

    @property
    def same(self) -> bool:
        """The new tree builds exactly the system already published."""
        return self.old is not None and self.old == self.new

    @property
    def different(self) -> bool:
        return self.old is not None and self.new is not None and self.old != self.new


@dataclass(frozen=True)
class Totals:
    """Package changes summed over the hosts that have a closure diff."""

    diffed: int  # hosts with a closure diff
    same: int  # hosts whose new system is the published one
    without: int  # hosts with no closure diff (a note says why)
    added: int
    removed: int
    versions: int
    sizes: int
    size_delta: int  # bytes, as Nix printed the changes (each at least 8 KiB)


def pinned_system(repository: pygit2.Repository, head: pygit2.Oid | None) -> str | None:
    """The ``System-Path`` of a deploy commit, when it has a well-formed one."""
    if head is None:
        return None
    commit = repository.get(head)
    if not isinstance(commit, pygit2.Commit):
        return None
    system = commits.trailers(commit.message).get(TRAILER_SYSTEM_PATH)
    return system if system is not None and nix.is_store_path(system) else None


def compare(
    repository: pygit2.Repository,
    hosts: Sequence[HostPlan],
    built: Mapping[str, BuiltSystem],
    *,
    diff: Callable[[str, str], ClosureDiff] = nix.closure_changes,
) -> dict[str, SystemChange]:
    """host -> its system change, for every host whose deploy tree changes."""
    found: dict[str, SystemChange] = {}
    pairs: dict[str, tuple[str, str]] = {}
    for host in hosts:
        if host.why not in _COMPARED:
            continue
        change = _pins(repository, host, built)
        if change.different and change.old is not None and change.new is not None:
            pairs[host.host] = (change.old, change.new)
        found[host.host] = change
    if not pairs:
        return found
    missing = nix.invalid_paths(sorted({p for pair in pairs.values() for p in pair}))
    for name, (old, new) in pairs.items():
        if old in missing or new in missing:
            which = "published" if old in missing else "new"
            path = old if old in missing else new
            note = (
                f"{NO_DIFF}: the {which} system {path} is not in this machine's store "
                f"(fetch it with: nix copy --from CACHE {path})"
            )
            found[name] = SystemChange(old, new, None, note)
            continue
        try:
            found[name] = SystemChange(old, new, diff(old, new), None)
        except GitopsError as err:
            found[name] = SystemChange(old, new, None, f"{NO_DIFF}: {err}")
    return found


def _pins(
    repository: pygit2.Repository, host: HostPlan, built: Mapping[str, BuiltSystem]
) -> SystemChange:
    entry = built.get(host.host)
    new = None
    note = None
    if entry is None:
        note = f"{NO_DIFF}: the systems file names no system for {host.host} (not built)"
    elif entry.tree != str(host.new_tree):
        note = (
            f"{NO_DIFF}: the systems file's system for {host.host} was built from another "
            f"deploy tree ({entry.tree[:12]}, this plan's is {str(host.new_tree)[:12]}); "
            "run gitops build on this commit"
        )
    else:
        new = entry.system
    old = pinned_system(repository, host.old_head)
    if old is None and note is None:
        if host.old_head is None:
            note = f"{NO_DIFF}: no published system to compare with (a new host)"
        else:
            note = (
                f"{NO_DIFF}: deploy {str(host.old_head)[:7]} pins no system "
                f"({TRAILER_SYSTEM_PATH}; published without --systems)"
            )
    return SystemChange(old, new, None, note)


def totals(changes: Mapping[str, SystemChange]) -> Totals:
    diffs = [c.diff for c in changes.values() if c.diff is not None]
    return Totals(
        diffed=len(diffs),
        same=sum(1 for c in changes.values() if c.same),
        without=sum(1 for c in changes.values() if c.note is not None),
        added=sum(len(d.of_kind(Kind.ADDED)) for d in diffs),
        removed=sum(len(d.of_kind(Kind.REMOVED)) for d in diffs),
        versions=sum(len(d.of_kind(Kind.VERSION)) for d in diffs),
        sizes=sum(len(d.of_kind(Kind.SIZE)) for d in diffs),
        size_delta=sum(d.size_delta for d in diffs),
    )
