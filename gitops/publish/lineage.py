"""Where a deploy commit's source stands in ``main``'s history.

A deploy commit names the main commit it was rendered from (``Source-Commit``) and that
commit's generation number (``Source-Generation``: 1 for a root, else 1 + the largest of
its parents'). Publishing never moves a host to a source that does not descend from the
one it was last published from, so a stale clone or the slower of two CI jobs cannot roll
hosts back with a valid signature.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import pygit2

from gitops.errors import GitopsError


class Generations:
    """Generation numbers of main commits, each computed once per publish run."""

    def __init__(self, repo: pygit2.Repository) -> None:
        self._repo = repo
        self._known: dict[pygit2.Oid, int] = {}
        self._walked: list[pygit2.Oid] = []  # every ancestor of these is in _known

    def of(self, oid: pygit2.Oid) -> int:
        found = self._known.get(oid)
        if found is not None:
            return found
        require_full_history(self._repo)
        walker = self._repo.walk(
            oid, pygit2.enums.SortMode.TOPOLOGICAL | pygit2.enums.SortMode.REVERSE
        )
        for tip in self._walked:
            walker.hide(tip)
        # Parents come before children, so every parent's number is known when needed.
        for commit in walker:
            self._known[commit.id] = 1 + max(
                (self._known[parent] for parent in commit.parent_ids), default=0
            )
        self._walked.append(oid)
        return self._known[oid]


def require_full_history(repo: pygit2.Repository) -> None:
    if repo.is_shallow:
        raise GitopsError(
            f"{repo.path}: this clone is shallow, but publishing needs main's whole history "
            "(to number the source commit and to check it is not older than what hosts run); "
            "run 'git fetch --unshallow' (in CI: check out with full depth, e.g. fetch-depth: 0)"
        )


class Order(Enum):
    """How the source being published relates to the one a host was last published from."""

    SAME_OR_NEWER = "same or newer"  # it equals or descends from the published source
    OLDER = "older"  # the published source descends from it: publishing would roll back
    UNRELATED = "unrelated"  # neither descends from the other: main was rewritten
    UNKNOWN = "unknown"  # the published source is not in this repository


@dataclass
class SourceOrder:
    """Compares one source with the sources hosts were published from; cached, since
    most hosts share a handful of previous sources."""

    repo: pygit2.Repository
    source: pygit2.Oid

    def __post_init__(self) -> None:
        self._seen: dict[str, Order] = {}

    def of(self, published: str) -> Order:
        found = self._seen.get(published)
        if found is None:
            found = self._compare(published)
            self._seen[published] = found
        return found

    def _compare(self, published: str) -> Order:
        try:
            oid = pygit2.Oid(hex=published)
        except ValueError:
            return Order.UNKNOWN
        if oid == self.source:
            return Order.SAME_OR_NEWER
        if oid not in self.repo:
            return Order.UNKNOWN
        if self.repo.descendant_of(self.source, oid):
            return Order.SAME_OR_NEWER
        if self.repo.descendant_of(oid, self.source):
            return Order.OLDER
        return Order.UNRELATED
