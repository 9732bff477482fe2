"""Each host's software on the site: the newest SBOM its report commits carry.

In a worker, for each host it refreshes (:class:`SbomFinder`):

* the newest ``sbom.cdx.json`` on ``reports/<host>`` whose commit is signed by the host
  key in main and that parses and names the host, as ``gitops sbom`` takes it; only the
  commits above the head searched before are read (an SBOM comes with a change of
  system, heartbeats carry none), each signature checked once (the build's verdict
  cache);
* a newer SBOM that is refused (bad signature, malformed, naming another host) is kept
  with why, shown on the host page, and never breaks anything else;
* ``hosts/<host>.cdx.json``: the accepted SBOM as the host wrote it, for download; keyed
  by its commit, so it is hard-linked from the page store until the host sends another.

The aggregate pages (which hosts run what, known vulnerabilities) are
:mod:`gitops.sitegen.software_pages`; they read the hosts' package sets, which are the
same for every host running the same packages, once per set.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from dataclasses import dataclass

import pygit2

from gitops.fleet.model import Host
from gitops.inventory.reports import MAX_WALK
from gitops.inventory.sbom import (
    MAX_SBOM_BYTES,
    PackageQuery,
    Sbom,
    parse_packages,
    read_sbom,
)
from gitops.protocol import SBOM_FILE
from gitops.sitegen import commitgraph
from gitops.sitegen.derived import Derived, PageFile
from gitops.sitegen.model import HostData, RefusedSbom, SbomRef, SbomState, Trust
from gitops.sitegen.outdir import PageStore
from gitops.trust.allowed_signers import AllowedSigners

_SBOM_ENTRY = f" {SBOM_FILE}\0".encode()  # in a tree's raw bytes: "<mode> <name>\0<id>"
_SBOM_ENTRY_SIZE = len(f"100644 {SBOM_FILE}\0") + 20  # the smallest tree that can hold it
MAX_REFUSED = 5  # refused SBOMs remembered per host, newest first
MAX_WHY = 300  # characters of why an SBOM is refused

Verdict = tuple[Trust, str, str]
VerdictOf = Callable[[str, AllowedSigners, str], Verdict]


def sbom_path(name: str) -> str:
    return f"hosts/{name}.cdx.json"


def packages_text(sbom: Sbom) -> str:
    """The distinct (name, version) pairs, sorted, one ``name<TAB>version`` line each:
    hosts running the same packages have the same text, whatever their store paths."""
    pairs = sorted({(p.name, p.version) for p in sbom.packages})
    return "".join(f"{name}\t{version}\n" for name, version in pairs)


def packages_id(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def matching(query: PackageQuery, text: str) -> tuple[tuple[str, str], ...]:
    """The (name, version) pairs of a package set (:func:`packages_text`) ``query`` finds."""
    return tuple(pair for pair in parse_packages(text) if query.matches(*pair))


@dataclass(frozen=True)
class Update:
    state: SbomState
    packages: tuple[str, str] | None  # (id, text) of a newly accepted SBOM's package set


@dataclass
class SbomFinder:
    """Finds hosts' SBOMs in one worker process."""

    repo: pygit2.Repository
    verdict: VerdictOf
    walks: commitgraph.Walks | None = None  # shared with the report reader

    def update(
        self, data: HostData, host: Host, previous: HostData | None, quick: bool = False
    ) -> Update:
        """``data`` with its SBOM state brought up to date from ``previous``'s. ``quick``:
        a first search looks only as far as the quick read of the reports went
        (``data.older``), and a later build searches on (``SbomState.pending``)."""
        head = data.reports_head
        old = previous.sbom if previous is not None else None
        if old is not None and old.key_id != data.key_id:
            old = None  # another host key: every commit is checked again
        if head is None:
            return Update(SbomState(None, data.key_id, None), None)
        if old is not None and old.head == head:
            return self._search_on(old, host, quick)
        stop = old.head if old is not None else None
        limit = len(data.reports) if quick and old is None and data.older else None
        found, refused, reached, pending = self._search(head, stop, host, data.key_id, limit)
        if stop is not None and not reached:  # the branch was rewritten: search it all
            found, refused, _, pending = self._search(head, None, host, data.key_id, limit)
            old = None
        if found is None and old is not None:
            state = SbomState(
                head, data.key_id, old.found, (*refused, *old.refused)[:MAX_REFUSED], old.pending
            )
            return self._search_on(state, host, quick)
        ref, text = found if found is not None else (None, None)
        state = SbomState(head, data.key_id, ref, tuple(refused[:MAX_REFUSED]), pending)
        return Update(state, (ref.packages_id, text) if ref is not None and text else None)

    def _search_on(self, state: SbomState, host: Host, quick: bool) -> Update:
        """``state``, searched on below where a quick first search stopped (unless quick)."""
        if state.pending is None or quick:
            return Update(state, None)
        found, refused, _, _ = self._search(state.pending, None, host, state.key_id)
        ref, text = found if found is not None else (None, None)
        both = (*state.refused, *refused)[:MAX_REFUSED]
        new = SbomState(state.head, state.key_id, ref, both)
        return Update(new, (ref.packages_id, text) if ref is not None and text else None)

    def _search(
        self, head: str, stop: str | None, host: Host, key_id: str, limit: int | None = None
    ) -> tuple[tuple[SbomRef, str] | None, list[RefusedSbom], bool, str | None]:
        """The newest acceptable SBOM above ``stop``, the newer ones refused, whether the
        walk ended on ``stop``, and (after ``limit`` commits) where to search on."""
        trust = host.trust()
        refused: list[RefusedSbom] = []
        last: commitgraph.Step | None = None
        odb = self.repo.odb
        walks = self.walks or commitgraph.Walks(self.repo)
        for count, step in enumerate(walks.walk(head, stop)):
            if limit is not None and count >= limit:
                return None, refused, True, step.sha
            if count >= MAX_WALK:
                return None, refused, True, None
            last = step
            # Most reports are heartbeats without an SBOM: their tree's size (a tree
            # holding status.json alone is smaller than any entry naming the SBOM) or its
            # raw bytes say so, without making a tree object.
            try:
                if odb.read_header(step.tree)[1] < _SBOM_ENTRY_SIZE:
                    continue
                if _SBOM_ENTRY not in odb.read(step.tree)[1]:
                    continue
                # A candidate: its tree as the signed commit object names it.
                commit = self.repo.get(step.sha)
                entry = commit.tree[SBOM_FILE] if isinstance(commit, pygit2.Commit) else None
            except (KeyError, ValueError, pygit2.GitError):
                continue
            if entry is None:
                continue
            oid = step.sha
            state, detail, _principal = self.verdict(oid, trust, key_id)
            if state is not Trust.VERIFIED:
                refused.append(RefusedSbom(oid, f"not counted: {state} ({detail})"[:MAX_WHY]))
                continue
            accepted = _accept(host.name, oid, entry)
            if isinstance(accepted, RefusedSbom):
                refused.append(accepted)
                continue
            return accepted, refused, True, None
        reached = stop is None or (last is not None and last.parent == stop)
        return None, refused, reached, None


def _accept(host: str, oid: str, entry: pygit2.Object) -> tuple[SbomRef, str] | RefusedSbom:
    if not isinstance(entry, pygit2.Blob):
        return RefusedSbom(oid, f"{SBOM_FILE} is not a file")
    if entry.size > MAX_SBOM_BYTES:
        return RefusedSbom(oid, f"larger than {MAX_SBOM_BYTES >> 20} MiB")
    raw = bytes(entry.data)
    try:
        sbom = read_sbom(raw)
    except ValueError as err:
        return RefusedSbom(oid, str(err)[:MAX_WHY])
    if sbom.host != host:
        return RefusedSbom(oid, f"it names host {sbom.host[:60]!r}")
    text = packages_text(sbom)
    ref = SbomRef(
        commit=oid,
        system=sbom.system,
        nixos_version=sbom.nixos_version,
        time=sbom.time,
        components=len(sbom.packages),
        packages=text.count("\n"),
        packages_id=packages_id(text),
        size=len(raw),
    )
    return ref, text


def sbom_key(global_id: str, name: str, ref: SbomRef) -> str:
    return hashlib.sha256(f"{global_id}:{name}:{ref.commit}".encode()).hexdigest()


def sbom_file(
    repo: pygit2.Repository,
    store: PageStore,
    name: str,
    ref: SbomRef | None,
    global_id: str,
    old_pages: Mapping[str, PageFile],
) -> tuple[PageFile, ...]:
    """``hosts/<name>.cdx.json``, linked from the page store when it is the same commit."""
    if ref is None:
        return ()
    key = sbom_key(global_id, name, ref)
    path = sbom_path(name)
    linked = store.link((path,), key, old_pages)
    if linked is not None:
        return linked
    commit = repo.get(ref.commit)
    assert isinstance(commit, pygit2.Commit)
    blob = commit.tree[SBOM_FILE]
    assert isinstance(blob, pygit2.Blob)
    return (store.write(path, key, bytes(blob.data)),)


def relink(store: PageStore, row: Derived, old_pages: Mapping[str, PageFile]) -> bool:
    """Hard-link every file of a host's still-valid row into the new site (grouped by the
    key each was written for); False when one is missing."""
    by_key: dict[str, list[str]] = {}
    for page in row.pages:
        by_key.setdefault(page.key, []).append(page.path)
    return bool(row.pages) and all(
        store.link(tuple(paths), key, old_pages) is not None for key, paths in by_key.items()
    )
