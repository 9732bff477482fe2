"""First-parent walks over git's commit-graph file, where the repository has one.

A host's report branch grows by ~720 commits a month at hourly heartbeats; the site shows
the newest 50 and one a day before that, and looks for the newest SBOM. Reading every
commit object to learn its parent and time costs more than everything else the site does
with a host. ``git gc`` (which ``receive-pack`` runs automatically, ``gc.auto``) and ``git
maintenance`` write ``objects/info/commit-graph`` or a chain of split graphs under
``objects/info/commit-graphs/``: per commit its tree, its parents and its commit time, in
fixed-size records. :func:`walk` follows first parents through them and reads commit
objects only for commits newer than the graph.

The graph is a derived index that whoever controls the repository can rewrite, as they
can rewrite a branch (libgit2's own walks use it too). What the site shows never comes
from it: each report kept is read from its commit object (its tree as the signed commit
names it) and its signature checked. The graph decides which commits are read, and its
tree ids let the SBOM search skip heartbeat trees. A graph that cannot be parsed is
ignored; one that breaks off mid-walk is left for the objects.
"""

from __future__ import annotations

import itertools
import mmap
import struct
from collections.abc import Iterator
from pathlib import Path

import pygit2

NO_PARENT = 0x70000000
_HASH = 20
_RECORD = _HASH + 16


class Step:
    """One commit of a first-parent walk: its id (hex), commit time (seconds since the
    epoch), tree and first parent (hex, None for a root), the last made on demand."""

    __slots__ = ("_graph", "_parent", "_position", "sha", "time", "tree")

    def __init__(
        self,
        sha: str,
        time: int,
        tree: pygit2.Oid,
        parent: str | None,
        graph: CommitGraph | None = None,
        position: int | None = None,
    ) -> None:
        self.sha, self.time, self.tree = sha, time, tree
        self._parent, self._graph, self._position = parent, graph, position

    @property
    def parent(self) -> str | None:
        if self._graph is not None and self._position is not None:
            return self._graph.oid_at(self._position).hex()
        return self._parent


class _Layer:
    def __init__(self, path: Path, offset: int) -> None:
        with path.open("rb") as handle:
            self.data = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
        data = self.data
        if data[:4] != b"CGPH" or data[4] != 1 or data[5] != 1:
            raise ValueError(f"{path}: not a SHA-1 commit-graph version 1")
        chunks = {}
        for index in range(data[6] + 1):
            label, where = struct.unpack_from(">4sQ", data, 8 + 12 * index)
            chunks[label] = where
        self.fanout = chunks[b"OIDF"]
        self.oids = chunks[b"OIDL"]
        self.records = chunks[b"CDAT"]
        self.count = struct.unpack_from(">I", data, self.fanout + 255 * 4)[0]
        self.offset = offset  # graph positions of this layer start here

    def find(self, oid: bytes) -> int | None:
        data, fanout = self.data, self.fanout
        first = oid[0]
        low: int = struct.unpack_from(">I", data, fanout + 4 * (first - 1))[0] if first else 0
        high: int = struct.unpack_from(">I", data, fanout + 4 * first)[0]
        base = self.oids
        while low < high:
            middle = (low + high) // 2
            start = base + _HASH * middle
            found = data[start : start + _HASH]
            if found < oid:
                low = middle + 1
            elif found > oid:
                high = middle
            else:
                return self.offset + middle
        return None


class CommitGraph:
    """The repository's commit-graph layers (base first)."""

    def __init__(self, layers: list[_Layer]) -> None:
        self.layers = layers

    @classmethod
    def open(cls, repo: pygit2.Repository) -> CommitGraph | None:
        """The graph of ``repo``, None when it has none (or one this cannot read)."""
        info = Path(repo.path) / "objects" / "info"
        try:
            chain = info / "commit-graphs" / "commit-graph-chain"
            if chain.is_file():
                names = chain.read_text(encoding="ascii").split()
                paths = [info / "commit-graphs" / f"graph-{name}.graph" for name in names]
            elif (info / "commit-graph").is_file():
                paths = [info / "commit-graph"]
            else:
                return None
            layers: list[_Layer] = []
            offset = 0
            for path in paths:
                layers.append(_Layer(path, offset))
                offset += layers[-1].count
            return cls(layers)
        except (OSError, ValueError, KeyError, struct.error, IndexError):
            return None

    def find(self, oid: bytes) -> int | None:
        for layer in reversed(self.layers):
            position = layer.find(oid)
            if position is not None:
                return position
        return None

    def _at(self, position: int) -> tuple[_Layer, int]:
        for layer in reversed(self.layers):
            if position >= layer.offset:
                if position - layer.offset >= layer.count:
                    break
                return layer, position - layer.offset
        raise IndexError(f"commit-graph position {position} out of range")

    def steps(self, position: int) -> Iterator[tuple[bytes, int, bytes, int | None]]:
        """(commit id, time, tree id, first parent's position) along first parents."""
        at: int | None = position
        unpack = struct.unpack_from
        while at is not None:
            layer, _local = self._at(at)
            data, records, oids = layer.data, layer.records, layer.oids
            first, last = layer.offset, layer.offset + layer.count
            while at is not None and first <= at < last:  # within this layer
                local = at - first
                start = records + _RECORD * local
                parent, _second, high, low = unpack(">IIII", data, start + _HASH)
                name = oids + _HASH * local
                next_at = None if parent == NO_PARENT else parent
                yield (
                    data[name : name + _HASH],
                    ((high & 3) << 32) | low,
                    data[start : start + _HASH],
                    next_at,
                )
                at = next_at

    def oid_at(self, position: int) -> bytes:
        layer, local = self._at(position)
        start = layer.oids + _HASH * local
        return layer.data[start : start + _HASH]


class Walks:
    """One process's walks, the last one remembered: a host's report branch is walked
    for its reports and again for its SBOM, the second time from memory as far as the
    first went."""

    def __init__(self, repo: pygit2.Repository) -> None:
        self.repo = repo
        self.graph = CommitGraph.open(repo)
        self._key: tuple[str, str | None] | None = None
        self._seen: list[Step] = []
        self._rest: Iterator[Step] = iter(())

    def walk(self, head: str, stop: str | None = None) -> Iterator[Step]:
        if self._key != (head, stop):
            self._key, self._seen = (head, stop), []
            self._rest = walk(self.repo, self.graph, head, stop)
        seen, index = self._seen, 0
        while True:
            end = len(seen)
            if index < end:
                yield from seen[index:end]
                index = end
            else:  # read on, a stretch at a time, longer as the walk goes deeper
                seen.extend(itertools.islice(self._rest, max(16, end)))
                if len(seen) == end:
                    return


def walk(
    repo: pygit2.Repository, graph: CommitGraph | None, head: str, stop: str | None = None
) -> Iterator[Step]:
    """``head`` and its first parents, newest first, down to (leaving out) ``stop``;
    from the graph where it has the commits, else from the objects. Nothing when ``head``
    cannot be read."""
    sha: str | None = head
    while sha is not None and sha != stop:
        yielded = False
        try:
            position = graph.find(bytes.fromhex(sha)) if graph is not None else None
            if graph is not None and position is not None:
                for oid, time, tree, parent in graph.steps(position):
                    name = oid.hex()
                    if name == stop:
                        return
                    yield Step(name, time, pygit2.Oid(raw=tree), None, graph, parent)
                    sha, yielded = name, True
                return
        except (IndexError, ValueError, struct.error):
            # A damaged graph: on through the objects, below the last commit it gave.
            graph = None
            if yielded:
                sha = _first_parent(repo, sha)
            continue
        try:
            commit = repo.get(sha)
        except (ValueError, pygit2.GitError):
            return
        if not isinstance(commit, pygit2.Commit):
            return
        parent_ids = commit.parent_ids
        up = str(parent_ids[0]) if parent_ids else None
        yield Step(sha, commit.commit_time, commit.tree_id, up)
        sha = up


def _first_parent(repo: pygit2.Repository, sha: str) -> str | None:
    try:
        commit = repo.get(sha)
    except (ValueError, pygit2.GitError):
        return None
    if not isinstance(commit, pygit2.Commit) or not commit.parent_ids:
        return None
    return str(commit.parent_ids[0])
