"""Decide whether the head of ``deploy/<host>`` may be applied. Fail closed.

Accepted only when signed by a pinned publisher key (valid at its committer date and at
our clock), addressed to this host, not expired, not too old, and a descendant of the
last applied commit. Every refusal says why, in words an admin can act on.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import TRAILER_EXPIRES, TRAILER_HOST, TRAILER_SOURCE, parse_time
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError


class RejectedError(GitopsError):
    """The deploy head must not be applied; the message is the reason."""


@dataclass(frozen=True)
class AcceptedDeploy:
    commit: str
    source_commit: str | None
    principal: str
    expires: datetime | None
    first_use: bool  # accepted without an applied commit to descend from


def check_deploy_head(
    repo: pygit2.Repository,
    head: pygit2.Oid,
    *,
    host: str,
    trust: AllowedSigners,
    applied: str | None,
    now: datetime,
    min_commit: str | None = None,
    max_age: int | None = None,
    trust_on_first_use: bool = True,
) -> AcceptedDeploy:
    short = str(head)[:8]
    try:
        verified = commits.verify_commit(repo, head, trust, now=now)
    except SignatureError as err:
        raise RejectedError(f"deploy commit {short} refused: {err}") from err
    commit = repo.get(head)
    assert isinstance(commit, pygit2.Commit)
    found = commits.trailers(commit.message)
    target = found.get(TRAILER_HOST)
    if target != host:
        raise RejectedError(
            f"deploy commit {short} refused: it is addressed to "
            f"{target or 'no host'}, not {host} (Gitops-Host trailer)"
        )
    expires = None
    if TRAILER_EXPIRES in found:
        try:
            expires = parse_time(found[TRAILER_EXPIRES])
        except ValueError as err:
            raise RejectedError(
                f"deploy commit {short} refused: unreadable Expires trailer"
            ) from err
        if now >= expires:
            raise RejectedError(
                f"deploy commit {short} refused: it expired at {found[TRAILER_EXPIRES]}; "
                "the publisher must publish again (stale or frozen branch)"
            )
    if max_age is not None:
        committed = commits.committer_time(commits.read_raw(repo, head))
        if now - committed > timedelta(seconds=max_age):
            raise RejectedError(
                f"deploy commit {short} refused: committed {committed:%Y-%m-%d %H:%M}, older than "
                f"max_age ({max_age}s); the publisher must publish again (stale or frozen branch)"
            )
    first_use = False
    if applied is not None:
        applied_oid = pygit2.Oid(hex=applied)
        if repo.get(applied_oid) is None:
            raise RejectedError(
                f"deploy commit {short} refused: the last applied commit {applied[:8]} is missing "
                "from the local mirror, so ancestry cannot be checked"
            )
        if not repo.descendant_of(head, applied_oid):
            raise RejectedError(
                f"deploy commit {short} refused: it does not descend from the applied commit "
                f"{applied[:8]} (a rollback to an older commit, or rewritten history)"
            )
    elif min_commit is not None:
        try:
            floor = pygit2.Oid(hex=min_commit)
        except ValueError as err:
            raise RejectedError(f"min_commit {min_commit!r} is not a commit id") from err
        if head != floor and (repo.get(floor) is None or not repo.descendant_of(head, floor)):
            raise RejectedError(
                f"deploy commit {short} refused: it does not descend from the pinned min_commit "
                f"{min_commit[:8]}"
            )
    elif trust_on_first_use:
        first_use = True
    else:
        raise RejectedError(
            f"deploy commit {short} refused: no applied commit is recorded and "
            "trust_on_first_use is off; pin min_commit in the agent configuration"
        )
    return AcceptedDeploy(
        commit=str(head),
        source_commit=found.get(TRAILER_SOURCE),
        principal=verified.principal,
        expires=expires,
        first_use=first_use,
    )
