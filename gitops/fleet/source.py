"""Read a fleet repository's files from a directory or from a commit's tree, alike.

``gitops check`` reads the working tree (so it can run before a commit); ``publish``,
``plan`` and the site read a commit, so what they render is exactly what was reviewed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import pygit2

from gitops.errors import GitopsError


class Source(Protocol):
    """A read-only view of a fleet repository; paths are POSIX, relative to its root."""

    def read(self, path: str) -> bytes | None:
        """The file's bytes, or None when there is no such file."""
        ...

    def list_dir(self, path: str) -> list[str] | None:
        """Sorted entry names of a directory, or None when there is no such directory."""
        ...

    def is_dir(self, path: str) -> bool: ...

    def describe(self, path: str) -> str:
        """How to name ``path`` in a message."""
        ...


class DirSource:
    """A work tree, read as git will store it: a symbolic link is the text of its target
    (never followed), so what ``check`` accepts is what ``plan`` and the site will read."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def _path(self, path: str) -> Path | None:
        """``root/path``, or None when a directory on the way is a link (git sees a file)."""
        current = self.root
        parts = [part for part in path.split("/") if part]
        for part in parts[:-1]:
            current = current / part
            if current.is_symlink():
                return None
        return current / parts[-1] if parts else current

    def read(self, path: str) -> bytes | None:
        target = self._path(path)
        try:
            if target is None:
                return None
            if target.is_symlink():
                return os.fsencode(target.readlink())
            return target.read_bytes() if target.is_file() else None
        except OSError:
            return None

    def list_dir(self, path: str) -> list[str] | None:
        target = self._path(path) if path else self.root
        if target is None or not self.is_dir(path):
            return None
        try:
            return sorted(entry.name for entry in target.iterdir() if entry.name != ".git")
        except OSError as err:
            raise GitopsError(f"{target}: cannot list it ({err.strerror})") from err

    def is_dir(self, path: str) -> bool:
        target = self._path(path)
        if target is None:
            return False
        if target == self.root:
            return target.is_dir()
        return target.is_dir() and not target.is_symlink()

    def describe(self, path: str) -> str:
        return path


class TreeSource:
    """A commit's tree. Lookups go one directory at a time through cached subtrees:
    ``Tree[path]`` with a slash re-reads every directory on the way (about 3 ms through a
    10,000-entry ``hosts/``), a lookup by one name is a binary search."""

    def __init__(self, repo: pygit2.Repository, tree: pygit2.Tree, label: str = "") -> None:
        self.repo = repo
        self.tree = tree
        self.label = label
        self._dirs: dict[str, pygit2.Tree | None] = {"": tree}

    def _dir(self, path: str) -> pygit2.Tree | None:
        if path in self._dirs:
            return self._dirs[path]
        parent_path, _, name = path.rpartition("/")
        parent = self._dir(parent_path)
        found: pygit2.Tree | None = None
        if parent is not None:
            try:
                entry = parent[name]
            except KeyError:
                entry = None
            if isinstance(entry, pygit2.Tree):
                found = entry
        self._dirs[path] = found
        return found

    def entry(self, path: str) -> pygit2.Object | None:
        """The blob or tree at ``path``, or None."""
        path = path.strip("/")
        if not path:
            return self.tree
        parent_path, _, name = path.rpartition("/")
        parent = self._dir(parent_path)
        if parent is None:
            return None
        try:
            return parent[name]
        except KeyError:
            return None

    def read(self, path: str) -> bytes | None:
        entry = self.entry(path)
        return bytes(entry.data) if isinstance(entry, pygit2.Blob) else None

    def list_dir(self, path: str) -> list[str] | None:
        entry = self.entry(path)
        if not isinstance(entry, pygit2.Tree):
            return None
        return sorted(e.name for e in entry if e.name is not None)

    def is_dir(self, path: str) -> bool:
        return isinstance(self.entry(path), pygit2.Tree)

    def describe(self, path: str) -> str:
        return f"{self.label}:{path}" if self.label else path
