"""Move one branch between two repositories on the server, in-process, fast-forward only.

Used to hand each ``deploy/<host>`` from fleet.git to ``hosts/<host>.git`` and to fan each
``reports/<host>`` back into fleet.git. Only the objects reachable from the new head and
missing from the destination are copied, so a host's repository never receives another
host's objects (read isolation), and the cost is the new commits, not the fleet.

Objects are written referenced-before-referencing (blobs and subtrees before their tree,
a tree and parents before the commit): if the process dies half-way, anything present in
the destination is complete, which is what lets the copy stop at the first object the
destination already has.
"""

from __future__ import annotations

from enum import StrEnum

import pygit2

from gitops.errors import GitopsError

_CAS_ATTEMPTS = 3


class _MovedError(Exception):
    """The ref is no longer where we read it."""


class Move(StrEnum):
    UPDATED = "updated"
    UNCHANGED = "unchanged"
    BEHIND = "behind"  # the destination is ahead: nothing to do
    DIVERGED = "diverged"  # neither descends from the other: left alone


def _copy_raw(source: pygit2.Repository, target: pygit2.Repository, oid: pygit2.Oid) -> None:
    kind, data = source.odb.read(oid)
    written = target.odb.write(kind, data)
    if written != oid:  # cannot happen unless an object store is corrupt
        raise GitopsError(f"copying {oid} to {target.path} gave {written}")


def _copy_tree(source: pygit2.Repository, target: pygit2.Repository, oid: pygit2.Oid) -> None:
    if target.odb.exists(oid):
        return
    tree = source.get(oid)
    if not isinstance(tree, pygit2.Tree):
        raise GitopsError(f"{oid} in {source.path} is not a tree")
    for entry in tree:
        if isinstance(entry, pygit2.Tree):
            _copy_tree(source, target, entry.id)
        elif isinstance(entry, pygit2.Blob) and not target.odb.exists(entry.id):
            _copy_raw(source, target, entry.id)
        # a gitlink (submodule commit) is not ours to copy
    _copy_raw(source, target, oid)


def _missing_commits(
    source: pygit2.Repository, target: pygit2.Repository, head: pygit2.Oid
) -> list[pygit2.Commit]:
    """Commits reachable from ``head`` that ``target`` lacks, parents before children."""
    ordered: list[pygit2.Commit] = []
    seen: set[pygit2.Oid] = set()
    stack: list[tuple[pygit2.Oid, bool]] = [(head, False)]
    while stack:
        oid, parents_done = stack.pop()
        if parents_done:
            commit = source.get(oid)
            assert isinstance(commit, pygit2.Commit)
            ordered.append(commit)
            continue
        if oid in seen or target.odb.exists(oid):
            continue
        seen.add(oid)
        commit = source.get(oid)
        if not isinstance(commit, pygit2.Commit):
            raise GitopsError(f"{oid} in {source.path} is not a commit")
        stack.append((oid, True))
        stack.extend((parent, False) for parent in commit.parent_ids)
    return ordered


def copy_history(source: pygit2.Repository, target: pygit2.Repository, head: pygit2.Oid) -> int:
    """Copy ``head`` and whatever ``target`` lacks of its history; the number of commits."""
    missing = _missing_commits(source, target, head)
    for commit in missing:
        _copy_tree(source, target, commit.tree_id)
        _copy_raw(source, target, commit.id)
    return len(missing)


def ref_target(repo: pygit2.Repository, ref: str) -> pygit2.Oid | None:
    reference = repo.references.get(ref)
    if reference is None:
        return None
    target = reference.resolve().target
    return target if isinstance(target, pygit2.Oid) else None


def _swap(repo: pygit2.Repository, ref: str, old: pygit2.Oid | None, new: pygit2.Oid) -> None:
    """Move ``ref`` from ``old`` to ``new`` under its lock; _MovedError if it moved."""
    try:
        with repo.transaction() as txn:
            txn.lock_ref(ref)
            if ref_target(repo, ref) != old:
                raise _MovedError(ref)
            txn.set_target(ref, new, message="gitops server")
    except pygit2.GitError as err:  # locked by someone else right now
        raise _MovedError(ref) from err


def fast_forward(
    source: pygit2.Repository, target: pygit2.Repository, ref: str, new: pygit2.Oid
) -> Move:
    """Make ``ref`` in ``target`` point at ``new`` (from ``source``) if that is a
    fast-forward; compare-and-swap, so a concurrent move is seen, never overwritten."""
    for _ in range(_CAS_ATTEMPTS):
        current = ref_target(target, ref)
        if current == new:
            return Move.UNCHANGED
        copy_history(source, target, new)
        if current is not None and not target.descendant_of(new, current):
            return Move.BEHIND if target.descendant_of(current, new) else Move.DIVERGED
        try:
            _swap(target, ref, current, new)
        except _MovedError:
            continue  # moved meanwhile: look again
        return Move.UPDATED
    raise GitopsError(f"{ref} in {target.path} kept moving; try again")
