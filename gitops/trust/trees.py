"""Deploy trees that are safe to write to disk and build: every entry checked, recursively.

git stores trees that no checkout should ever write: entries named ``..`` or ``.git``, two
entries of one name (a symlink, then a directory written through it), gitlinks, symlinks
that point out of the tree. ``git fsck`` calls them errors; libgit2 reads them without a
word, and a publisher would sign one. So the publisher refuses to sign such a tree and the
agent refuses to apply one (docs/protocol.md, "Deploy trees").

The raw tree objects are parsed here rather than read through pygit2, because libgit2
normalises what it reads (file modes) and looks names up by binary search, which hides a
duplicate entry.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from enum import Enum
from pathlib import Path
from typing import Final

import pygit2

from gitops.errors import GitopsError


class Kind(Enum):
    FILE = "file"
    EXECUTABLE = "executable"
    TREE = "tree"
    SYMLINK = "symlink"


# The only modes git itself writes for these kinds ("40000" without a leading zero: git
# writes trees so, and fsck calls a zero-padded mode an error).
MODES: Final = {
    b"100644": Kind.FILE,
    b"100755": Kind.EXECUTABLE,
    b"40000": Kind.TREE,
    b"120000": Kind.SYMLINK,
}
MAX_DEPTH: Final = 64  # directories below the root; deploy trees are a few levels deep
MAX_LINK_TARGET: Final = 4096  # PATH_MAX
_OID_SIZE: Final = 20
_DIR_FLAGS: Final = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_FILE_FLAGS: Final = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC


class TreeError(GitopsError):
    """A tree that must not be written to disk or built; the message names the entry."""


@dataclass(frozen=True)
class Entry:
    name: str
    kind: Kind
    oid: pygit2.Oid


def check_tree(repo: pygit2.Repository, tree: pygit2.Oid, *, what: str = "tree") -> None:
    """Raise TreeError unless every entry under ``tree`` is safe (see the module docstring).

    ``what`` names the tree in the message ("deploy commit 1a2b3c4d's tree").
    """
    pending: list[tuple[pygit2.Oid, str, int]] = [(tree, "", 0)]
    checked: set[tuple[pygit2.Oid, int]] = set()  # a subtree's links depend on its depth
    while pending:
        oid, prefix, depth = pending.pop()
        if (oid, depth) in checked:
            continue
        checked.add((oid, depth))
        for entry in read_tree(repo, oid, what=what, prefix=prefix):
            path = f"{prefix}{entry.name}"
            if entry.kind is Kind.TREE:
                if depth + 1 > MAX_DEPTH:
                    raise TreeError(f"{what}: {path} is nested deeper than {MAX_DEPTH} directories")
                pending.append((entry.oid, f"{path}/", depth + 1))
            else:
                _check_object(repo, entry, path, what)
            if entry.kind is Kind.SYMLINK:
                _check_link(repo, entry, path, depth, what)


def read_tree(
    repo: pygit2.Repository, oid: pygit2.Oid, *, what: str = "tree", prefix: str = ""
) -> list[Entry]:
    """The entries of one tree object, each name and mode checked; TreeError otherwise."""
    where = f"{what}: {prefix or '/'}"
    data = _read(repo, oid, pygit2.enums.ObjectType.TREE, where)
    entries: list[Entry] = []
    previous: bytes | None = None
    names: set[bytes] = set()
    pos = 0
    while pos < len(data):
        space = data.find(b" ", pos)
        nul = data.find(b"\0", space + 1) if space >= 0 else -1
        if space < 0 or nul < 0 or nul + 1 + _OID_SIZE > len(data):
            raise TreeError(f"{where} is not a well-formed tree object")
        mode, raw_name = data[pos:space], data[space + 1 : nul]
        entry_oid = pygit2.Oid(raw=data[nul + 1 : nul + 1 + _OID_SIZE])
        pos = nul + 1 + _OID_SIZE
        name = _check_name(raw_name, where)
        kind = _kind(mode, f"{prefix}{name}", what)
        if raw_name in names:
            raise TreeError(f"{what}: {prefix}{name} appears twice in one directory")
        names.add(raw_name)
        key = raw_name + b"/" if kind is Kind.TREE else raw_name  # git's order
        if previous is not None and key <= previous:
            raise TreeError(f"{where} is not sorted as git sorts trees (at {name!r})")
        previous = key
        entries.append(Entry(name, kind, entry_oid))
    return entries


def _read(
    repo: pygit2.Repository, oid: pygit2.Oid, kind: pygit2.enums.ObjectType, where: str
) -> bytes:
    try:
        found, data = repo.odb.read(oid)
    except (KeyError, ValueError, pygit2.GitError) as err:
        raise TreeError(f"{where}: object {str(oid)[:8]} is missing") from err
    if found != kind:
        raise TreeError(f"{where}: object {str(oid)[:8]} is not a {kind.name.lower()}")
    return bytes(data)


def _check_name(raw: bytes, where: str) -> str:
    if not raw:
        raise TreeError(f"{where} has an entry with an empty name")
    try:
        name = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        raise TreeError(f"{where} has an entry whose name is not UTF-8: {raw!r}") from err
    if "/" in name or name in (".", ".."):
        raise TreeError(f"{where} has an entry named {name!r}")
    # Case-insensitive file systems, and Windows' trailing dots and spaces, make these .git.
    if name.rstrip(". ").lower() == ".git":
        raise TreeError(f"{where} has an entry named {name!r} (a git directory)")
    return name


def _kind(mode: bytes, path: str, what: str) -> Kind:
    kind = MODES.get(mode)
    if kind is not None:
        return kind
    if mode == b"160000":
        raise TreeError(f"{what}: {path} is a gitlink (a submodule); deploy trees hold files only")
    text = mode.decode("ascii", "replace")
    raise TreeError(
        f"{what}: {path} has mode {text}; allowed are 100644, 100755 (files), 040000 "
        "(directories) and 120000 (symlinks)"
    )


def _check_object(repo: pygit2.Repository, entry: Entry, path: str, what: str) -> None:
    try:
        found, _ = repo.odb.read_header(entry.oid)
    except (KeyError, ValueError, pygit2.GitError) as err:
        raise TreeError(f"{what}: {path}: object {str(entry.oid)[:8]} is missing") from err
    if found != pygit2.enums.ObjectType.BLOB:
        raise TreeError(f"{what}: {path} is a {entry.kind.value} whose object is not a blob")


def _check_link(repo: pygit2.Repository, entry: Entry, path: str, depth: int, what: str) -> None:
    """A symlink's target must be relative and stay inside the tree however it resolves:
    ``..`` only as leading components (they climb real directories, this link's parents),
    then plain names, each of which is a file, a directory or a link checked the same way."""
    raw = _read(repo, entry.oid, pygit2.enums.ObjectType.BLOB, f"{what}: {path}")
    problem = _link_problem(raw, depth)
    if problem is not None:
        shown = raw[:200].decode("utf-8", "replace")
        raise TreeError(f"{what}: symlink {path} -> {shown!r} {problem}")


def _link_problem(target: bytes, depth: int) -> str | None:
    if not target or len(target) > MAX_LINK_TARGET or b"\0" in target:
        return "is empty, too long or holds a NUL byte"
    if target.startswith(b"/"):
        return "is absolute; links must be relative and stay inside the deploy tree"
    parts = target.split(b"/")
    ups = 0
    while ups < len(parts) and parts[ups] == b"..":
        ups += 1
    rest = parts[ups:]
    if ups > depth:
        return "points out of the deploy tree"
    if (not rest and not ups) or any(part in (b"", b".", b"..") for part in rest):
        return "must be '../' components, then names (no '.', '..' or '//' after a name)"
    return None


def write_tree(repo: pygit2.Repository, tree: pygit2.Oid, directory: int) -> None:
    """Create the checked tree's entries in ``directory`` (a descriptor): never through a
    link, never over an existing name (O_EXCL; mkdir fails on an existing name too)."""
    for entry in read_tree(repo, tree):
        match entry.kind:
            case Kind.TREE:
                os.mkdir(entry.name, 0o755, dir_fd=directory)
                child = os.open(entry.name, _DIR_FLAGS, dir_fd=directory)
                try:
                    write_tree(repo, entry.oid, child)
                finally:
                    os.close(child)
            case Kind.SYMLINK:
                target = bytes(repo.odb.read(entry.oid)[1])
                os.symlink(target, os.fsencode(entry.name), dir_fd=directory)
            case Kind.FILE | Kind.EXECUTABLE:
                mode = 0o755 if entry.kind is Kind.EXECUTABLE else 0o644
                fd = os.open(entry.name, _FILE_FLAGS, mode, dir_fd=directory)
                with os.fdopen(fd, "wb") as out:
                    out.write(bytes(repo.odb.read(entry.oid)[1]))


def export(
    repo: pygit2.Repository, tree: pygit2.Oid, directory: Path, *, what: str = "tree"
) -> None:
    """Check ``tree`` (:func:`check_tree`) and write it into the new, empty ``directory``."""
    check_tree(repo, tree, what=what)
    directory.mkdir(parents=True)
    fd = os.open(directory, _DIR_FLAGS)
    try:
        write_tree(repo, tree, fd)
    finally:
        os.close(fd)
