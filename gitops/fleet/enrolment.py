"""Enrolment proposals: a new machine's ``enroll/<host>`` branch (docs/enroll-host.md).

A proposal is one commit on top of a commit of ``main``, signed by the new machine's own
host key, that only adds regular files under ``hosts/<host>/``, whose ``host.yaml`` names
that key. It is refused when the name exists in ``main``, the key is another host's, or
the fleet with the proposal added has problems in the new host's files. Links (which
could lead a checkout's readers out of the directory), submodules and dot files (git
reads ``.gitattributes`` and ``.gitmodules``) are refused: whoever can push an
``enroll/`` branch is not trusted yet.
"""

from __future__ import annotations

from dataclasses import dataclass

import pygit2

from gitops.errors import GitopsError, ProblemsError
from gitops.fleet.model import HOST_FILE, HOSTS_DIR, Fleet, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import ENROLL_PREFIX, MAIN_REF, enroll_ref, is_host_name
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey, SigningKey

MAX_PROPOSAL_FILES = 32
MAX_PROPOSALS = 50  # checked per listing; more is a queue to clear (or a flood), not work
_FILE_MODES = frozenset({pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE})


@dataclass(frozen=True)
class Proposal:
    host: str
    commit: pygit2.Oid
    key: PublicKey | None
    problems: tuple[str, ...]

    @property
    def ok(self) -> bool:
        return not self.problems


def pending(repo: pygit2.Repository, main: pygit2.Commit | None = None) -> list[Proposal]:
    """Every ``enroll/<host>`` branch of ``repo``, checked against ``main``."""
    main = main or commits.resolve_commit(repo, MAIN_REF)
    names = sorted(name for name in repo.references if name.startswith(ENROLL_PREFIX))
    found = []
    main_fleet = _fleet(repo, main, Problems()) if names else None
    for name in names[:MAX_PROPOSALS]:
        target = commits.ref_target(repo, name)
        if target is not None:
            host = name.removeprefix(ENROLL_PREFIX)
            found.append(check_proposal(repo, host, target, main, main_fleet))
    return found


def check_proposal(
    repo: pygit2.Repository,
    host: str,
    oid: pygit2.Oid,
    main: pygit2.Commit,
    main_fleet: Fleet | None = None,
) -> Proposal:
    problems: list[str] = []
    if not is_host_name(host):
        return Proposal(host[:80], oid, None, (f"{host[:80]!r} is not a host name",))
    commit = repo.get(oid)
    if not isinstance(commit, pygit2.Commit):
        return Proposal(host, oid, None, ("not a commit",))
    base = _base(repo, commit, main, problems)
    if base is not None:
        _only_adds_the_host(base, commit, host, problems)
    main_fleet = main_fleet or _fleet(repo, main, Problems())
    if host in main_fleet.hosts or TreeSource(repo, main.tree).is_dir(f"{HOSTS_DIR}/{host}"):
        problems.append(f"a host named {host} exists in main; choose another name")
    fleet_problems = Problems()
    proposed = _fleet(repo, commit, fleet_problems)
    mine = f"{HOSTS_DIR}/{host}/"
    problems += [str(p) for p in fleet_problems.items if mine in p.file]
    new = proposed.hosts.get(host)
    key = new.key if new is not None else None
    if new is None and not any(mine in p for p in problems):
        problems.append(f"{mine}{HOST_FILE} is missing")
    if key is not None:
        for other in main_fleet.hosts.values():
            if other.key is not None and other.key.blob == key.blob:
                problems.append(f"its key is host {other.name}'s; a new machine needs its own")
        try:
            commits.verify_commit(repo, oid, AllowedSigners.of([(host, key)]))
        except GitopsError as err:
            problems.append(f"not signed by the key in its host.yaml ({err})")
    return Proposal(host, oid, key, tuple(problems))


def _fleet(repo: pygit2.Repository, commit: pygit2.Commit, problems: Problems) -> Fleet:
    return load_fleet(TreeSource(repo, commit.tree, commit.short_id), problems)


def _base(
    repo: pygit2.Repository, commit: pygit2.Commit, main: pygit2.Commit, problems: list[str]
) -> pygit2.Commit | None:
    if len(commit.parent_ids) != 1:
        problems.append("a proposal is one commit with one parent, a commit of main")
        return None
    parent = commit.parent_ids[0]
    if parent != main.id and not repo.descendant_of(main.id, parent):
        problems.append("its parent is not a commit of main; rebase it on main")
        return None
    base = repo.get(parent)
    assert isinstance(base, pygit2.Commit)
    return base


def _only_adds_the_host(
    base: pygit2.Commit,
    commit: pygit2.Commit,
    host: str,
    problems: list[str],
) -> None:
    diff = base.tree.diff_to_tree(commit.tree)
    mine = f"{HOSTS_DIR}/{host}/"
    if len(diff) > MAX_PROPOSAL_FILES:
        problems.append(f"more than {MAX_PROPOSAL_FILES} files")
        return
    for delta in diff.deltas:
        path = delta.new_file.path or delta.old_file.path
        if not path.startswith(mine):
            problems.append(f"it changes {path[:200]}; a proposal only adds {mine}")
        elif delta.status != pygit2.enums.DeltaStatus.ADDED:
            problems.append(f"it changes {path[:200]}, which exists; a proposal only adds files")
        elif delta.new_file.mode not in _FILE_MODES:
            problems.append(
                f"{path[:200]} is a link or submodule; a proposal adds only regular files"
            )
        elif any(part.startswith(".") for part in path.removeprefix(mine).split("/")):
            problems.append(f"{path[:200]}: a proposal adds no dot files")


def accept(
    repo: pygit2.Repository,
    name: str,
    signer: SigningKey,
    author: pygit2.Signature,
    *,
    target: pygit2.Oid | None = None,
) -> tuple[pygit2.Oid, pygit2.Oid, Proposal]:
    """The signed merge commit of ``enroll/<name>`` into main (its parents: main and the
    proposal; its tree: main's with ``hosts/<name>/`` added), after checking the proposal
    again. Returns main's commit, the merge (no ref moved) and the proposal."""
    ref = enroll_ref(name)
    target = (
        target
        or commits.ref_target(repo, ref)
        or commits.ref_target(repo, f"refs/remotes/origin/{ref.removeprefix('refs/heads/')}")
    )
    if target is None:
        pattern = ENROLL_PREFIX.removeprefix("refs/heads/") + "*"
        raise GitopsError(
            f"no branch enroll/{name} here; fetch it first "
            f"(git fetch origin 'refs/heads/{pattern}:refs/heads/{pattern}')"
        )
    main = commits.resolve_commit(repo, MAIN_REF)
    proposal = check_proposal(repo, name, target, main)
    if not proposal.ok:
        raise ProblemsError(f"enroll/{name} is refused", list(proposal.problems))
    proposed = repo.get(target)
    assert isinstance(proposed, pygit2.Commit)
    host_tree = proposed.tree[f"{HOSTS_DIR}/{name}"]
    hosts = (
        repo.TreeBuilder(main.tree[HOSTS_DIR].peel(pygit2.Tree))
        if HOSTS_DIR in main.tree
        else repo.TreeBuilder()
    )
    hosts.insert(name, host_tree.id, pygit2.enums.FileMode.TREE)
    root = repo.TreeBuilder(main.tree)
    root.insert(HOSTS_DIR, hosts.write(), pygit2.enums.FileMode.TREE)
    fingerprint = proposal.key.fingerprint if proposal.key else "?"
    oid = commits.create_signed_commit(
        repo,
        tree=root.write(),
        parents=[main.id, target],
        message=commits.format_message(
            f"Merge enroll/{name}: add host {name}",
            f"Key {fingerprint}, proposed by the machine itself.",
        ),
        author=author,
        key=signer,
    )
    return main.id, oid, proposal
