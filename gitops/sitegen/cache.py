"""The build cache: collected hosts (with their signature verdicts) and rendered pages.

A directory next to the output (``.<out>.cache`` beside ``--out``) holding one sqlite
database (every write is one transaction: a killed build leaves the previous state) and
``pages/``, rendered files named by their content hash that builds hard-link into the
output. Keys are commit ids plus the key that checked them, so a changed host key or
publisher list re-verifies exactly what it must. The cache is as trusted as the output
directory itself; delete it at any time to force a full build.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import gc
import hashlib
import os
import pickle
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from gitops.errors import GitopsError
from gitops.sitegen.model import HostData
from gitops.sitegen.verdicts import VerdictStore

SCHEMA = 7
DELTA_LIMIT = 500  # changed derived rows kept apart before the snapshot is rewritten

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID",
    "CREATE TABLE IF NOT EXISTS hosts (name TEXT PRIMARY KEY, data BLOB)",
    "CREATE TABLE IF NOT EXISTS blobs (key TEXT PRIMARY KEY, data BLOB)",
    "CREATE TABLE IF NOT EXISTS derived_delta (name TEXT PRIMARY KEY, data BLOB)",
)


@contextlib.contextmanager
def collector_paused(*, freeze: bool = True) -> Iterator[None]:
    """Unpickling the cache (or workers' results) makes hundreds of thousands of objects
    and no garbage: the cycle collector would only scan them again and again (most of a
    load's time). With ``freeze``, for what lives until the build ends, they stay out of
    its sight until then (:func:`thaw_collector`)."""
    was_on = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if freeze:
            gc.freeze()
        if was_on:
            gc.enable()


def thaw_collector() -> None:
    """At the end of a build: what :func:`collector_paused` froze is collectable again."""
    gc.unfreeze()


def cache_dir_for(out: Path) -> Path:
    return out.parent / f".{out.name}.cache"


class Cache:
    def __init__(self, directory: Path, code_id: str) -> None:
        self.directory = directory
        self.pages_dir = directory / "pages"
        try:
            self.pages_dir.mkdir(parents=True, exist_ok=True)
        except OSError as err:
            raise GitopsError(f"{directory}: cannot create the site cache: {err.strerror}") from err
        self.path = directory / "cache.sqlite"
        self._lock = (directory / "lock").open("a")
        try:
            fcntl.flock(self._lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError as err:
            self._lock.close()
            raise GitopsError(
                f"{directory}: another site build is running with this cache; wait for it"
            ) from err
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_TABLES[0])
        version = f"{SCHEMA}:{code_id}"
        row = self.db.execute("SELECT value FROM meta WHERE key='version'").fetchone()
        with self.db:
            if row is None or row[0] != version:
                for table in ("verdicts", "hosts", "samples", "pages", "blobs", "derived_delta"):
                    self.db.execute(f"DROP TABLE IF EXISTS {table}")
                self.db.execute("INSERT OR REPLACE INTO meta VALUES ('version', ?)", (version,))
            for statement in _TABLES[1:]:
                self.db.execute(statement)
        self.verdicts = VerdictStore(directory)  # kept when the tables above are dropped

    def close(self) -> None:
        self.verdicts.close()
        self.db.close()
        fcntl.flock(self._lock, fcntl.LOCK_UN)
        self._lock.close()

    # -- collected hosts (workers read them with CacheReader) ---------------------------

    def save_host_rows(self, rows: Iterable[tuple[str, bytes]]) -> None:
        """Each host's full data (pickled by the worker that read it)."""
        with self.db:
            self.db.executemany("INSERT OR REPLACE INTO hosts VALUES (?, ?)", rows)

    def forget_hosts(self, names: Iterable[str]) -> None:
        with self.db:
            self.db.executemany("DELETE FROM hosts WHERE name = ?", ((n,) for n in names))

    # -- per-host derived values keyed by their inputs ---------------------------------

    def get_blob(self, key: str) -> Any:
        row = self.db.execute("SELECT data FROM blobs WHERE key = ?", (key,)).fetchone()
        if row is None:
            return None
        try:
            with collector_paused():
                return pickle.loads(row[0])
        except Exception:
            return None

    def put_blob(self, key: str, value: Any, *, prefix: str) -> None:
        """Store ``value`` under ``key``, dropping older entries with the same ``prefix``."""
        with self.db:
            self.db.execute("DELETE FROM blobs WHERE key LIKE ?", (prefix + "%",))
            self.db.execute(
                "INSERT OR REPLACE INTO blobs VALUES (?, ?)",
                (key, pickle.dumps(value, protocol=pickle.HIGHEST_PROTOCOL)),
            )

    # -- derived rows: a snapshot of all, plus the rows changed since ----------------

    def load_derived(self) -> dict[str, Any]:
        snapshot = self.get_blob("derived")
        rows: dict[str, Any] = dict(snapshot) if isinstance(snapshot, dict) else {}
        with collector_paused():
            for name, blob in self.db.execute("SELECT name, data FROM derived_delta"):
                try:
                    rows[name] = pickle.loads(blob)
                except Exception:
                    rows.pop(name, None)  # unreadable: the host is simply refreshed
        return rows

    def save_derived(
        self, every: dict[str, Any], changed: Iterable[str], *, snapshot: bool = False
    ) -> None:
        """Store ``changed`` rows as deltas; rewrite the snapshot once deltas pile up (or
        when asked: after hosts were removed)."""
        names = list(changed)
        (pending,) = self.db.execute("SELECT count(*) FROM derived_delta").fetchone()
        if snapshot or pending + len(names) > max(DELTA_LIMIT, len(every) // 20):
            with self.db:
                self.db.execute("DELETE FROM derived_delta")
            self.put_blob("derived", every, prefix="derived")
            return
        dump = functools.partial(pickle.dumps, protocol=pickle.HIGHEST_PROTOCOL)
        with self.db:
            self.db.executemany(
                "INSERT OR REPLACE INTO derived_delta VALUES (?, ?)",
                ((n, dump(every[n])) for n in names if n in every),
            )

    # -- rendered pages ------------------------------------------------------------------

    def prune_pages(self, keep: set[str], old: set[str], *, sweep: bool) -> None:
        """Drop store files no page uses any more (all unknown ones when ``sweep``)."""
        for digest in old - keep:
            with contextlib.suppress(OSError):
                (self.pages_dir / digest).unlink()
        if sweep:
            for entry in os.scandir(self.pages_dir):
                if entry.name not in keep:
                    with contextlib.suppress(OSError):
                        Path(entry.path).unlink()


def digest_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class CacheReader:
    """A read-only view of the cache for one (worker) process: full host rows."""

    def __init__(self, path: Path) -> None:
        self.db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)

    def load_full(self, names: Sequence[str]) -> dict[str, HostData]:
        found: dict[str, HostData] = {}
        for start in range(0, len(names), 500):
            chunk = list(names[start : start + 500])
            marks = ",".join("?" * len(chunk))
            query = f"SELECT name, data FROM hosts WHERE name IN ({marks})"
            with collector_paused(freeze=False):  # a chunk's rows: short-lived
                for name, blob in self.db.execute(query, chunk):
                    with contextlib.suppress(Exception):
                        value = pickle.loads(blob)
                        if isinstance(value, HostData):
                            found[name] = value
        return found

    def close(self) -> None:
        self.db.close()
