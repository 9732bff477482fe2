"""Publishing against the git server: read its deploy heads, push atomically, and put
the local refs back when the server refuses."""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import DEPLOY_PREFIX, deploy_ref
from gitops.publish.plan import Published
from gitops.system import transport
from gitops.trust import commits

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


def adopt(
    repository: pygit2.Repository, heads: Mapping[str, pygit2.Oid | None], *, remote: str
) -> None:
    """Make the local deploy refs of ``heads``' hosts point where the server's do (after
    those were checked): what this clone knows next time. None deletes the local ref."""
    updates: dict[str, tuple[pygit2.Oid | None, pygit2.Oid]] = {}
    for host, head in heads.items():
        local = commits.ref_target(repository, deploy_ref(host))
        if local == head:
            continue
        if head is None:
            repository.references.delete(deploy_ref(host))
        else:
            updates[deploy_ref(host)] = (local, head)
    commits.update_refs(repository, updates, message=f"gitops publish: as on {remote}")


class PushRaceError(GitopsError):
    """The server's deploy branches moved between reading and pushing (another publish);
    nothing landed and the local refs are rolled back: read them again and retry."""


# How git says a ref moved under us: on the client "fetch first" or "non-fast-forward";
# on the server, when a ref's value changed between the advertisement and the locked
# update, "failed to update ref" or, for an atomic push, "atomic transaction failed" on
# every ref. The client marks the others of an atomic push "atomic push failed".
_RACE = (
    "fetch first",
    "non-fast-forward",
    "stale info",
    "failed to update ref",
    "cannot lock",
    "atomic transaction failed",
)
_ATOMIC = "atomic push failed"


def _is_race(refused: Sequence[transport.RefStatus]) -> bool:
    raced = [s for s in refused if any(marker in s.summary for marker in _RACE)]
    return bool(raced) and all(s in raced or _ATOMIC in s.summary for s in refused)


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
        pushed = transport.push_commits(
            Path(repository.path),
            remote,
            updates,
            atomic=True,
            outside=str(published.plan.source.id),
        )
    except GitopsError:
        rollback_refs(repository, published)
        raise
    if not pushed.ok:
        rollback_refs(repository, published)
        refused = pushed.refused()
        details = "; ".join(f"{s.ref}: {s.summary}" for s in refused[:5]) or pushed.message
        if _is_race(refused):
            raise PushRaceError(f"{remote}'s deploy branches moved while publishing: {details}")
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
