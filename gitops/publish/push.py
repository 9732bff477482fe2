"""Publishing against the git server: start from its deploy heads, push atomically, and
put the local refs back when the server refuses."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import DEPLOY_PREFIX, branch_name, deploy_ref
from gitops.publish.plan import Published
from gitops.system import transport
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    """A :data:`Progress` that says nothing."""


def tracking_prefix(remote: str) -> str:
    """Where the remote's deploy heads are fetched to (one namespace per remote)."""
    return f"refs/gitops/publish/{hashlib.sha256(remote.encode()).hexdigest()[:16]}/"


def remote_heads(
    repository: pygit2.Repository, remote: str, *, progress: Progress = quiet
) -> dict[str, pygit2.Oid]:
    """The server's deploy heads (host -> commit), with their history in ``repository``.

    One ``ls-remote`` says where they are; the fetch, which writes a tracking ref per
    host, runs only when some head is not here yet (a fresh clone, another publisher).
    """
    git_dir = Path(repository.path)
    listed = transport.list_refs(git_dir, remote, f"{DEPLOY_PREFIX}*")
    heads = {
        name.removeprefix(DEPLOY_PREFIX): pygit2.Oid(hex=sha)
        for name, sha in listed.items()
        if name.startswith(DEPLOY_PREFIX)
    }
    if all(oid in repository for oid in heads.values()):
        return heads
    tracking = tracking_prefix(remote)
    progress(f"fetching deploy branches from {remote}")
    transport.fetch(git_dir, remote, [f"+{DEPLOY_PREFIX}*:{tracking}*"], prune=True)
    fetched = {}
    for name in repository.references:
        if name.startswith(tracking):
            target = commits.ref_target(repository, name)
            assert target is not None
            fetched[name.removeprefix(tracking)] = target
    return fetched


def sync_from_remote(
    repository: pygit2.Repository,
    remote: str,
    trust: AllowedSigners,
    *,
    progress: Progress = quiet,
) -> None:
    """Start from the remote's deploy heads, refusing any that were rewound or that a
    publisher did not sign (someone pushed to a deploy branch by hand)."""
    updates: dict[str, tuple[pygit2.Oid | None, pygit2.Oid]] = {}
    for host, remote_head in sorted(remote_heads(repository, remote, progress=progress).items()):
        local_name = deploy_ref(host)
        local_head = commits.ref_target(repository, local_name)
        if local_head == remote_head:
            continue
        _check_remote_head(repository, remote, host, remote_head, local_head, trust)
        updates[local_name] = (local_head, remote_head)
    commits.update_refs(repository, updates, message=f"gitops publish: sync from {remote}")


def _check_remote_head(
    repository: pygit2.Repository,
    remote: str,
    host: str,
    remote_head: pygit2.Oid,
    local_head: pygit2.Oid | None,
    trust: AllowedSigners,
) -> None:
    branch = branch_name(deploy_ref(host))
    try:
        commits.verify_commit(repository, remote_head, trust)
    except SignatureError as err:
        raise GitopsError(
            f"{branch} on {remote} has a head {str(remote_head)[:8]} that no publisher "
            f"signed ({err}): someone pushed to it by hand. Investigate, then put the last "
            f"good commit back with 'git push --force {remote} <good>:{deploy_ref(host)}'"
        ) from err
    if local_head is not None and not repository.descendant_of(remote_head, local_head):
        raise GitopsError(
            f"{branch} on {remote} does not descend from the local one "
            f"({str(remote_head)[:8]} vs {str(local_head)[:8]}): it was rewound or rewritten; "
            "hosts will refuse it. Investigate before publishing"
        )


def push_published(
    repository: pygit2.Repository,
    remote: str,
    published: Published,
    *,
    progress: Progress = quiet,
) -> None:
    """Push every new deploy commit in one atomic push; if the server refuses any, none
    lands and the local refs go back to where they were."""
    if not published.commits:
        return
    updates = {deploy_ref(host): str(oid) for host, oid in sorted(published.commits.items())}
    progress(f"pushing {len(updates)} deploy branches to {remote} (atomic)")
    try:
        pushed = transport.push_commits(Path(repository.path), remote, updates, atomic=True)
    except GitopsError:
        rollback_refs(repository, published)
        raise
    if not pushed.ok:
        rollback_refs(repository, published)
        refused = pushed.refused()
        details = "; ".join(f"{s.ref}: {s.summary}" for s in refused[:5]) or pushed.message
        raise GitopsError(
            f"{remote} refused the push, so nothing was published (local refs rolled back): {details}"
        )


def rollback_refs(repository: pygit2.Repository, published: Published) -> None:
    """Put the local deploy refs back where they were (after a refused push)."""
    updates: dict[str, tuple[pygit2.Oid | None, pygit2.Oid]] = {}
    deletes: list[tuple[str, pygit2.Oid]] = []
    for plan in published.plan.changed:
        new = published.commits[plan.host]
        if plan.old_head is None:
            deletes.append((deploy_ref(plan.host), new))
        else:
            updates[deploy_ref(plan.host)] = (new, plan.old_head)
    commits.update_refs(repository, updates, message="gitops publish: push refused, rolled back")
    for name, new in deletes:
        ref = repository.references.get(name)
        if ref is not None and ref.target == new:
            ref.delete()
