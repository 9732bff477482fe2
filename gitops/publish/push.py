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
    nothing landed and no local ref moved: read them again and retry."""


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
    """Push every new deploy commit in one atomic push; then, and only then, move the
    local deploy refs to them (``published`` was written without moving them). If the
    server refuses any, none lands and nothing moves here."""
    updates = published.ref_updates()
    if not updates:
        return
    progress(f"pushing {len(updates)} deploy branches to {remote} (atomic)")
    pushed = transport.push_commits(
        Path(repository.path),
        remote,
        {ref: str(new) for ref, (_, new) in sorted(updates.items())},
        atomic=True,
        outside=str(published.plan.source.id),
    )
    if not pushed.ok:
        refused = pushed.refused()
        details = "; ".join(f"{s.ref}: {s.summary}" for s in refused[:5]) or pushed.message
        if _is_race(refused):
            raise PushRaceError(f"{remote}'s deploy branches moved while publishing: {details}")
        raise GitopsError(
            f"{remote} refused the push, so nothing was published (no local ref moved): {details}"
        )
    try:
        transport.update_local_refs(
            Path(repository.path),
            {ref: (str(old) if old else None, str(new)) for ref, (old, new) in updates.items()},
            message=f"gitops publish {published.plan.source.short_id}: pushed to {remote}",
        )
    except GitopsError as err:
        raise GitopsError(
            f"{remote} has the new deploy commits, but this clone's deploy refs moved "
            f"meanwhile ({err}); the next publish reads them from {remote}"
        ) from err
