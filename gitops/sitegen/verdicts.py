"""Signature verdicts kept for good: each commit's signature is checked once, ever.

A verdict depends only on the commit's bytes, the trust list it was checked against and
the code that checks it; none of these is site code. So verdicts live in a database of
their own (``verdicts.sqlite`` in the site cache's directory) that survives what clears
the rest of the cache (a new gitops version, changed templates, settings or policies):
the full build after an upgrade reads history again but checks no signature twice.

Keys: the commit id and a hash of the trust list's text (the keys, principals, namespaces
and options). The store is emptied when the verifying code changes (:data:`VERIFIER_ID`).
Only trust lists whose verdicts cannot change with time are stored: a key with
``valid-after``/``valid-before`` or a certificate authority is checked at the verifier's
clock too, so its verdicts are recomputed as before (kept in the cached host rows).

Workers read the store (:class:`VerdictReader`); the main process, which holds the cache's
lock, writes what they checked (:class:`VerdictStore`).
"""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from gitops.sitegen import verify
from gitops.sitegen.model import Trust
from gitops.trust import allowed_signers, commits, sshsig
from gitops.trust.allowed_signers import AllowedSigners

FILE = "verdicts.sqlite"
Verdict = tuple[Trust, str, str]
# (trust list id, commit id, verdict): what a worker sends back for the store
NewVerdict = tuple[bytes, bytes, Verdict]


def _verifier_id() -> str:
    """The code a verdict depends on: its source files, hashed."""
    digest = hashlib.sha256()
    for module in (verify, commits, sshsig, allowed_signers):
        digest.update(Path(module.__file__ or "").read_bytes())
    return digest.hexdigest()


VERIFIER_ID = _verifier_id()

_TABLES = (
    "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT) WITHOUT ROWID",
    # one row per commit and trust list; ``detail`` names a row of ``details``
    "CREATE TABLE IF NOT EXISTS verdicts (trust BLOB, commit_id BLOB, detail INTEGER, "
    "PRIMARY KEY (trust, commit_id)) WITHOUT ROWID",
    # the few distinct outcomes ("verified: alice (SHA256:...)"), stored once each
    "CREATE TABLE IF NOT EXISTS details (id INTEGER PRIMARY KEY, state TEXT, detail TEXT, "
    "principal TEXT, UNIQUE (state, detail, principal))",
)


def storable(trust: AllowedSigners) -> bool:
    """Whether ``trust``'s verdicts are the same at any time (no validity bounds)."""
    return all(
        e.valid_after is None and e.valid_before is None and not e.cert_authority
        for e in trust.entries
    )


def trust_key(trust: AllowedSigners) -> bytes:
    return hashlib.sha256(trust.text().encode()).digest()[:12]


class VerdictStore:
    """The main process's handle: creates the store, adds workers' verdicts."""

    def __init__(self, directory: Path) -> None:
        self.path = directory / FILE
        self.db = sqlite3.connect(self.path)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute(_TABLES[0])
        row = self.db.execute("SELECT value FROM meta WHERE key='verifier'").fetchone()
        with self.db:
            if row is None or row[0] != VERIFIER_ID:
                self.db.execute("DROP TABLE IF EXISTS verdicts")
                self.db.execute("DROP TABLE IF EXISTS details")
                self.db.execute(
                    "INSERT OR REPLACE INTO meta VALUES ('verifier', ?)", (VERIFIER_ID,)
                )
            for statement in _TABLES[1:]:
                self.db.execute(statement)
        self._details: dict[Verdict, int] = {
            (Trust(state), detail, principal): number
            for number, state, detail, principal in self.db.execute(
                "SELECT id, state, detail, principal FROM details"
            )
        }

    def add(self, found: Iterable[NewVerdict]) -> None:
        rows = []
        with self.db:
            for trust, commit, verdict in found:
                number = self._details.get(verdict)
                if number is None:
                    cursor = self.db.execute(
                        "INSERT INTO details (state, detail, principal) VALUES (?, ?, ?)",
                        (str(verdict[0]), verdict[1], verdict[2]),
                    )
                    number = self._details[verdict] = int(cursor.lastrowid or 0)
                rows.append((trust, commit, number))
            self.db.executemany("INSERT OR IGNORE INTO verdicts VALUES (?, ?, ?)", rows)

    def close(self) -> None:
        self.db.close()


class VerdictReader:
    """A worker's read-only view: the stored verdict of a commit, and what it checked
    itself (for :class:`VerdictStore`)."""

    def __init__(self, directory: Path) -> None:
        self.db = sqlite3.connect(f"file:{directory / FILE}?mode=ro", uri=True)
        self.details: dict[int, Verdict] = {
            number: (Trust(state), detail, principal)
            for number, state, detail, principal in self.db.execute(
                "SELECT id, state, detail, principal FROM details"
            )
        }
        self.new: list[NewVerdict] = []
        self._keys: dict[int, tuple[AllowedSigners, bytes | None, bool]] = {}

    def _key(self, trust: AllowedSigners) -> tuple[bytes | None, bool]:
        """(the trust list's key, or None when not storable; whether the store has any
        verdict for it: for a host never seen, no lookup is made per commit)."""
        known = self._keys.get(id(trust))
        if known is None or known[0] is not trust:
            key = trust_key(trust) if storable(trust) else None
            some = key is not None and (
                self.db.execute("SELECT 1 FROM verdicts WHERE trust = ? LIMIT 1", (key,)).fetchone()
                is not None
            )
            known = self._keys[id(trust)] = (trust, key, some)
        return known[1], known[2]

    def get(self, oid: str, trust: AllowedSigners) -> Verdict | None:
        key, some = self._key(trust)
        if key is None or not some:
            return None
        row = self.db.execute(
            "SELECT detail FROM verdicts WHERE trust = ? AND commit_id = ?",
            (key, bytes.fromhex(oid)),
        ).fetchone()
        return self.details.get(row[0]) if row is not None else None

    def note(self, oid: str, trust: AllowedSigners, found: Verdict) -> None:
        key, _some = self._key(trust)
        if key is not None:
            self.new.append((key, bytes.fromhex(oid), found))

    def forget(self) -> None:
        """Between batches: the trust lists seen so far are not looked up again."""
        self._keys.clear()

    def close(self) -> None:
        self.db.close()
