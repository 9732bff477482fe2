"""A plan as a reviewer reads it: where the deploy heads came from, and which hosts'
changes can change their system at all.

``gitops plan`` compares deploy *trees*. Two trees that differ only in the comments or
layout of ``.nix`` files build the same system, so each changed ``.nix`` file is compared
as ``nix-instantiate --parse`` prints it back (the parsed expression: no comments, no
whitespace, attributes in one order); a host whose every changed file is such a file is
"unchanged" for the reviewer. ``publish`` still writes it a deploy commit (its tree is
not the same), which builds the same toplevel.

The stronger check compares the systems themselves: given the systems file of
``gitops build`` (``--systems``), a host whose new tree builds exactly the system its
deploy head pins is "same system", and one whose system differs gets its
``nix store diff-closures`` (:mod:`gitops.publish.closures`).
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, replace
from enum import StrEnum
from pathlib import Path

import pygit2

from gitops.protocol import DEPLOY_PREFIX
from gitops.publish import closures, push
from gitops.publish.build import BuiltSystem
from gitops.publish.closures import SystemChange
from gitops.publish.plan import HostPlan, Plan, Why, load_fleet_at, make_plan
from gitops.system import nix
from gitops.trust import commits


class Verdict(StrEnum):
    """What a host's plan means for its system."""

    NEW = "new"
    CHANGED = "changed"
    FORMATTING = "comments or formatting only"  # the tree changed, the parsed .nix did not
    SAME_SYSTEM = "same system"  # the tree changed, the built system is the published one
    RENEW = "renews expiry"
    RECOVER = "recovery"
    UNCHANGED = "unchanged"

    @property
    def changes_system(self) -> bool:
        return self in (Verdict.NEW, Verdict.CHANGED, Verdict.RECOVER)


@dataclass(frozen=True)
class HostReview:
    plan: HostPlan
    paths: tuple[str, ...]  # changed paths that can change the system
    cosmetic: tuple[str, ...]  # changed .nix files whose parsed expression is the same
    system: SystemChange | None = None  # with a systems file: the built systems compared

    @property
    def host(self) -> str:
        return self.plan.host

    @property
    def verdict(self) -> Verdict:
        if self.plan.why is Why.CHANGED and self.system is not None:
            if self.system.same:
                return Verdict.SAME_SYSTEM
            if self.system.different:  # the built systems are the last word
                return Verdict.CHANGED
        match self.plan.why:
            case Why.NEW:
                return Verdict.NEW
            case Why.RECOVER:
                return Verdict.RECOVER
            case Why.RENEW:
                return Verdict.RENEW
            case Why.UNCHANGED:
                return Verdict.UNCHANGED
            case Why.CHANGED:
                return Verdict.CHANGED if self.paths else Verdict.FORMATTING


@dataclass(frozen=True)
class Review:
    plan: Plan
    hosts: tuple[HostReview, ...]
    heads_from: str  # "this clone's deploy branches", or the remote they were read from
    normalised: bool  # .nix files compared as parsed (nix-instantiate was found)
    fetch_hint: str | None  # one line: what to fetch for a meaningful plan, when needed
    systems_file: str | None = None  # the systems file the built systems came from

    def by_verdict(self, verdict: Verdict) -> list[HostReview]:
        return [h for h in self.hosts if h.verdict is verdict]


LOCAL_HEADS = "this clone's deploy branches"


def review(
    repository: pygit2.Repository,
    source: str,
    *,
    only: Iterable[str] = (),
    remote: str | None = None,
    normalise: bool | None = None,
    progress: push.Progress = push.quiet,
    systems: Mapping[str, BuiltSystem] | None = None,
    systems_file: str | None = None,
) -> Review:
    """Plan ``source`` against the deploy heads of ``remote`` (fetched as ``publish``
    fetches them) or of this clone, and say which changes are comments or layout only.

    ``normalise``: compare ``.nix`` files as parsed (default: when nix-instantiate is
    installed). ``systems`` (read from ``systems_file``, what ``gitops build`` wrote):
    compare each changed host's built system with the one its deploy head pins."""
    commit = commits.resolve_commit(repository, source)
    fleet = load_fleet_at(repository, commit)
    hint = None
    if remote is not None:
        found = push.remote_heads(repository, remote, progress=progress)
        heads: dict[str, pygit2.Oid | None] = {host: found.get(host) for host in fleet.hosts}
        plan = make_plan(repository, str(commit.id), only=only, fleet=fleet, heads=heads)
        heads_from = remote
    else:
        plan = make_plan(repository, str(commit.id), only=only, fleet=fleet)
        heads_from = LOCAL_HEADS
        if not any(name.startswith(DEPLOY_PREFIX) for name in repository.references):
            hint = fetch_hint(repository)
    use_nix = nix.has_nix_instantiate() if normalise is None else normalise
    with _Normaliser.open(enabled=use_nix) as normaliser:
        hosts = tuple(_review_host(repository, host, normaliser) for host in plan.hosts)
    if systems is not None:
        compared = closures.compare(repository, plan.hosts, systems)
        hosts = tuple(replace(h, system=compared.get(h.host)) for h in hosts)
    return Review(plan, hosts, heads_from, use_nix, hint, systems_file)


def fetch_hint(repository: pygit2.Repository) -> str:
    """The one line that makes a clone with no deploy branches (a CI checkout of main)
    plan against the server's."""
    names = list(repository.remotes.names())
    remote = "origin" if "origin" in names or not names else names[0]
    return (
        "this clone has no deploy branches, so every host counts as new: pass "
        f"--remote {remote}, or run: git fetch {remote} "
        f"'+{DEPLOY_PREFIX}*:{DEPLOY_PREFIX}*'"
    )


def _review_host(
    repository: pygit2.Repository, host: HostPlan, normaliser: _Normaliser
) -> HostReview:
    if host.why is not Why.CHANGED:
        return HostReview(host, host.changed_paths, ())
    assert host.old_head is not None
    old_tree = repository[host.old_head].peel(pygit2.Tree)
    new_tree = repository[host.new_tree].peel(pygit2.Tree)
    paths, cosmetic = [], []
    for path in host.changed_paths:
        if normaliser.same(_blob(old_tree, path), _blob(new_tree, path), path):
            cosmetic.append(path)
        else:
            paths.append(path)
    return HostReview(host, tuple(paths), tuple(cosmetic))


def _blob(tree: pygit2.Tree, path: str) -> pygit2.Blob | None:
    try:
        entry = tree[path]
    except KeyError:
        return None
    return entry if isinstance(entry, pygit2.Blob) else None


class _Normaliser:
    """Parsed forms of ``.nix`` blobs, each blob parsed once (profiles are shared)."""

    def __init__(self, workdir: Path | None) -> None:
        self._workdir = workdir
        self._parsed: dict[pygit2.Oid, str | None] = {}

    @classmethod
    @contextmanager
    def open(cls, *, enabled: bool) -> Iterator[_Normaliser]:
        if not enabled:
            yield cls(None)
            return
        # Relative paths print resolved against the working directory: one for every file.
        with tempfile.TemporaryDirectory(prefix="gitops-plan-") as tmp:
            yield cls(Path(tmp))

    def same(self, old: pygit2.Blob | None, new: pygit2.Blob | None, path: str) -> bool:
        if self._workdir is None or old is None or new is None or not path.endswith(".nix"):
            return False
        before, after = self._parse(old), self._parse(new)
        return before is not None and before == after

    def _parse(self, blob: pygit2.Blob) -> str | None:
        if blob.id not in self._parsed:
            assert self._workdir is not None
            try:
                text = blob.data.decode("utf-8")
            except UnicodeDecodeError:
                self._parsed[blob.id] = None
            else:
                self._parsed[blob.id] = nix.normalised_source(text, cwd=self._workdir)
        return self._parsed[blob.id]
