"""Render each host's deploy tree from a main commit, and publish the ones that changed.

Rendering works on git objects only (no checkout, no copying): a host's tree reuses the
blob and tree ids of ``hosts/<host>``, its profiles and the shared paths, so planning a
thousand hosts writes a few small tree objects each.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import StrEnum

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import Fleet, Host, deploy_paths, listed_principal, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import (
    SECRETS_MANIFEST,
    TRAILER_EXPIRES,
    TRAILER_HOST,
    TRAILER_RECOVERS,
    TRAILER_SOURCE,
    TRAILER_SOURCE_GENERATION,
    TRAILER_SYSTEM_PATH,
    deploy_ref,
    format_time,
    secrets_manifest,
)
from gitops.publish import heartbeat
from gitops.publish.control import Control
from gitops.publish.lineage import Generations
from gitops.trust import commits, trees
from gitops.trust.sshsig import SigningKey, public_key_of

log = logging.getLogger(__name__)

MAX_LISTED_PATHS = 20

_Entry = tuple[pygit2.Oid, int]  # object id and file mode
_Nested = dict[str, "_Nested | _Entry"]


class Why(StrEnum):
    """Why a host gets a new deploy commit, or that it gets none."""

    UNCHANGED = "unchanged"
    NEW = "new branch"
    CHANGED = "changed"
    RENEW = "renews expiry"  # same tree; the head expires soon (a heartbeat commit)
    RECOVER = "recovery"  # supersedes an applied commit the server lost (Recovers trailer)


@dataclass(frozen=True)
class HostPlan:
    host: str
    old_head: pygit2.Oid | None  # the commit the new one goes on top of
    new_tree: pygit2.Oid
    changed_paths: tuple[str, ...]
    renew: bool = False
    recovers: pygit2.Oid | None = None

    @property
    def changed(self) -> bool:
        """Whether this host gets a new deploy commit."""
        return self.why is not Why.UNCHANGED

    @property
    def why(self) -> Why:
        if self.recovers is not None:
            return Why.RECOVER
        if self.changed_paths:
            return Why.NEW if self.old_head is None else Why.CHANGED
        return Why.RENEW if self.renew else Why.UNCHANGED


@dataclass(frozen=True)
class Plan:
    source: pygit2.Commit
    fleet: Fleet
    hosts: tuple[HostPlan, ...]

    @property
    def changed(self) -> list[HostPlan]:
        return [h for h in self.hosts if h.changed]


def load_fleet_at(repo: pygit2.Repository, commit: pygit2.Commit) -> Fleet:
    problems = Problems()
    fleet = load_fleet(TreeSource(repo, commit.tree, commit.short_id), problems)
    problems.raise_if_any(f"the fleet at {commit.short_id} is invalid (run 'gitops check' on it)")
    return fleet


def _lookup(source: TreeSource, path: str) -> _Entry | None:
    entry = source.entry(path)
    if entry is None or entry is source.tree:
        return None
    return entry.id, int(entry.filemode)


def _insert(root: _Nested, path: str, entry: _Entry) -> None:
    *dirs, name = path.strip("/").split("/")
    node = root
    for part in dirs:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise GitopsError(f"deploy tree: {path} collides with a file named {part}")
        node = child
    node[name] = entry


def _write(repo: pygit2.Repository, node: _Nested) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for name, child in sorted(node.items()):
        if isinstance(child, dict):
            builder.insert(name, _write(repo, child), pygit2.enums.FileMode.TREE)
        else:
            builder.insert(name, child[0], child[1])
    return builder.write()


def render_host_tree(
    repo: pygit2.Repository,
    commit: pygit2.Commit,
    fleet: Fleet,
    host: Host,
    source: TreeSource | None = None,
    control: Control | None = None,
) -> pygit2.Oid:
    """The deploy tree of ``host``; pass one ``source`` for many hosts (its lookups are
    cached), and ``control`` for its ``gitops-control/`` files (commands, settings)."""
    source = source or TreeSource(repo, commit.tree)
    root: _Nested = {}
    for path in deploy_paths(fleet, host, source):
        entry = _lookup(source, path)
        if entry is not None:
            _insert(root, path, entry)
    _insert_secrets(repo, root, fleet, host, source)
    for path, entry in (control.entries(host) if control is not None else {}).items():
        _insert(root, path, entry)
    return _write(repo, root)


def _insert_secrets(
    repo: pygit2.Repository, root: _Nested, fleet: Fleet, host: Host, source: TreeSource
) -> None:
    """Only the host's own age files (ciphertext, as in main) and a manifest of where
    each goes: no other host's secret, nothing at all for a host without secrets."""
    secrets = fleet.secrets_of(host.name)
    if not secrets:
        return
    for secret in secrets:
        entry = _lookup(source, secret.path)
        if entry is None:  # load_fleet reported it already
            raise GitopsError(f"{host.name}: {secret.path} is missing")
        _insert(root, secret.path, entry)
    manifest = secrets_manifest([s.file for s in secrets]).encode()
    _insert(root, SECRETS_MANIFEST, (repo.create_blob(manifest), int(pygit2.enums.FileMode.BLOB)))


def changed_paths(
    repo: pygit2.Repository, old_tree: pygit2.Oid | None, new_tree: pygit2.Oid
) -> tuple[str, ...]:
    if old_tree == new_tree:
        return ()
    new = repo.get(new_tree)
    assert isinstance(new, pygit2.Tree)
    if old_tree is None:
        return tuple(sorted(_all_paths(new)))
    old = repo.get(old_tree)
    assert isinstance(old, pygit2.Tree)
    diff = old.diff_to_tree(new)
    return tuple(sorted({d.new_file.path or d.old_file.path for d in diff.deltas}))


def _all_paths(tree: pygit2.Tree, prefix: str = "") -> Iterable[str]:
    for entry in tree:
        path = f"{prefix}{entry.name}"
        if isinstance(entry, pygit2.Tree):
            yield from _all_paths(entry, path + "/")
        else:
            yield path


def make_plan(
    repo: pygit2.Repository,
    source_rev: str,
    *,
    only: Iterable[str] = (),
    fleet: Fleet | None = None,
    heads: Mapping[str, pygit2.Oid | None] | None = None,
    now: datetime | None = None,
) -> Plan:
    """What publishing ``source_rev`` would write; ``fleet`` when the caller loaded it already.

    Each host's commit goes on top of ``heads[host]`` (the server's deploy heads; None: a
    first commit) or, for a host not in ``heads``, of the local ``deploy/<host>``. With ``deploy.expires_after``
    set, a host whose tree did not change gets a heartbeat commit when its head expires
    within the renewal window at ``now``.
    """
    source = commits.resolve_commit(repo, source_rev)
    fleet = fleet or load_fleet_at(repo, source)
    tree_source = TreeSource(repo, source.tree)
    wanted = set(only)
    unknown = wanted - fleet.hosts.keys()
    if unknown:
        raise GitopsError(
            f"unknown host(s): {', '.join(sorted(unknown))}; hosts are the directories in hosts/"
        )
    expires_after = fleet.settings.expires_after
    moment = now or datetime.now(UTC)
    control = Control(repo, fleet, tree_source, moment)
    plans = []
    for name in sorted(fleet.hosts):
        if wanted and name not in wanted:
            continue
        if heads is not None and name in heads:
            head: pygit2.Oid | None = heads[name]
        else:
            head = commits.ref_target(repo, deploy_ref(name))
        head_commit = _commit(repo, head) if head is not None else None
        old_tree = head_commit.tree_id if head_commit is not None else None
        new_tree = render_host_tree(repo, source, fleet, fleet.hosts[name], tree_source, control)
        paths = changed_paths(repo, old_tree, new_tree)
        renew = (
            not paths
            and head_commit is not None
            and expires_after is not None
            and heartbeat.needs_renewal(head_commit, moment, expires_after)
        )
        plans.append(HostPlan(name, head, new_tree, paths, renew=renew))
    return Plan(source, fleet, tuple(plans))


def _commit(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Commit:
    commit = repo.get(oid)
    if not isinstance(commit, pygit2.Commit):
        raise GitopsError(f"{oid}: not a commit in {repo.path}")
    return commit


@dataclass(frozen=True)
class Source:
    """The main commit a publish renders from, and its generation number."""

    commit: pygit2.Commit
    generation: int


_SUBJECTS = {
    Why.RENEW: "renew expiry",
    Why.RECOVER: "recover after the server's history was rewritten",
}


def deploy_message(
    plan: HostPlan, source: Source, expires: datetime | None, system: str | None = None
) -> str:
    main_subject = (
        source.commit.message.strip().splitlines()[0] if source.commit.message.strip() else ""
    )
    subject = _SUBJECTS.get(plan.why) or main_subject or "update"
    paragraphs = []
    if plan.recovers is not None:
        paragraphs.append(
            f"Supersedes {plan.recovers}, which this host applied and the server's "
            "deploy branch no longer holds (restored from a backup, or rewritten)."
        )
    if plan.changed_paths:
        listed = list(plan.changed_paths[:MAX_LISTED_PATHS])
        more = len(plan.changed_paths) - len(listed)
        paragraphs.append(
            "Changed: " + ", ".join(listed) + (f", and {more} more" if more > 0 else "")
        )
    elif plan.renew:
        paragraphs.append("Nothing changed; a new expiry keeps the host accepting this tree.")
    trailers = {
        TRAILER_SOURCE: str(source.commit.id),
        TRAILER_SOURCE_GENERATION: str(source.generation),
        TRAILER_HOST: plan.host,
    }
    if expires is not None:
        trailers[TRAILER_EXPIRES] = format_time(expires)
    if plan.recovers is not None:
        trailers[TRAILER_RECOVERS] = str(plan.recovers)
    if system is not None:
        trailers[TRAILER_SYSTEM_PATH] = system
    return commits.format_message(
        f"deploy {plan.host}: {subject}", "\n\n".join(paragraphs), trailers
    )


def publisher_principal(fleet: Fleet, key: SigningKey) -> str:
    public = public_key_of(key)
    principal = listed_principal(fleet.settings.publishers, public)
    if principal is not None:
        return principal
    raise GitopsError(
        f"the signing key {public.fingerprint} is not a publisher in fleet.yaml, so hosts would "
        "refuse what it signs; add it to 'publishers' by pull request, or use a listed key"
    )


@dataclass(frozen=True)
class Published:
    plan: Plan
    commits: dict[str, pygit2.Oid]  # host -> new deploy commit

    def ref_updates(self) -> dict[str, tuple[pygit2.Oid | None, pygit2.Oid]]:
        """deploy/<host> -> (the head the new commit goes on, the new commit)."""
        return {
            deploy_ref(h.host): (h.old_head, self.commits[h.host])
            for h in self.plan.changed
            if h.host in self.commits
        }


def write_commits(
    repo: pygit2.Repository,
    plan: Plan,
    key: SigningKey,
    *,
    now: datetime | None = None,
    progress: Callable[[str], None] | None = None,
    generations: Generations | None = None,
    move_refs: bool = True,
    systems: Mapping[str, str] | None = None,
) -> Published:
    """Write a signed commit for every host that gets one and move all their refs at once
    (unless ``move_refs`` is false: a push moves them once the server took the commits).

    ``generations`` caches main's generation numbers for a publish run that calls this
    more than once. ``systems`` (host -> store path) pins each host's centrally built
    system in its commit (``System-Path``)."""
    principal = publisher_principal(plan.fleet, key)
    moment = now or datetime.now(UTC)
    expires = None
    if plan.fleet.settings.expires_after is not None:
        expires = heartbeat.expiry(moment, plan.fleet.settings.expires_after)
    source = Source(plan.source, (generations or Generations(repo)).of(plan.source.id))
    identity = commits.signature_of(principal.split("@")[0] or principal, principal, moment)
    written: dict[str, pygit2.Oid] = {}
    updates: dict[str, tuple[pygit2.Oid | None, pygit2.Oid]] = {}
    changed = plan.changed
    for index, host_plan in enumerate(changed, start=1):
        trees.check_tree(repo, host_plan.new_tree, what=f"the deploy tree of {host_plan.host}")
        oid = commits.create_signed_commit(
            repo,
            tree=host_plan.new_tree,
            parents=[host_plan.old_head] if host_plan.old_head is not None else [],
            message=deploy_message(host_plan, source, expires, (systems or {}).get(host_plan.host)),
            author=identity,
            key=key,
        )
        written[host_plan.host] = oid
        updates[deploy_ref(host_plan.host)] = (host_plan.old_head, oid)
        if progress is not None and (index % 100 == 0 or index == len(changed)):
            progress(f"signed {index}/{len(changed)} deploy commits")
    if move_refs:
        commits.update_refs(repo, updates, message=f"gitops publish {plan.source.short_id}")
    return Published(plan, written)
