"""Decide whether the head of ``deploy/<host>`` may be applied. Fail closed.

The chain, not the head: every commit from the *floor* (the commit this host applied, or
what stands in for it when that record is gone, see :class:`Floor`) up to the head, along
first parents, must

- be encoded canonically (one encoding per signed commit, ``commits.check_canonical``),
- be signed by a pinned publisher key valid at its committer date and now (certificates too),
- be addressed to this host (``Gitops-Host``),
- have one parent, unless it is a recovery commit (``Recovers``),
- carry a ``Source-Generation`` no lower than the commit before it (once a commit carries
  one, every later one must): a deploy rendered from an older ``main`` is a stale publish.

A head that does not descend from the floor is accepted only through a recovery commit in
its chain whose ``Recovers`` trailer names the floor exactly (only a publisher can sign
one). Finally the head itself must not be past its ``Expires`` nor older than ``max_age``;
if that is all that is wrong, the publisher is stale (:class:`StaleError`), not an attacker.

Every refusal names the first bad commit and says why, in words an admin can act on.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from enum import StrEnum

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import (
    TRAILER_EXPIRES,
    TRAILER_HOST,
    TRAILER_RECOVERS,
    TRAILER_SOURCE,
    TRAILER_SOURCE_GENERATION,
    format_time,
    parse_time,
)
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners, Verified
from gitops.trust.sshsig import SignatureError

MAX_GENERATION = 2**63


class RejectedError(GitopsError):
    """The deploy head must not be applied; the message is the reason."""


class StaleError(RejectedError):
    """The head is valid but past its Expires or max_age: the publisher stopped renewing."""


class NotDescendingError(RejectedError):
    """The head does not descend from the floor (and no recovery commit names it)."""


class FloorKind(StrEnum):
    """What the head must descend from (docs/operations.md, "Lost or corrupt agent state")."""

    APPLIED = "applied"  # the deploy commit this agent applied (state.json)
    PINNED = "pinned"  # min_commit in the agent configuration
    REVISION = "revision"  # the running system's configurationRevision (state.json lost)
    FIRST_USE = "first-use"  # nothing known and trust_on_first_use: the head alone


@dataclass(frozen=True)
class Floor:
    kind: FloorKind
    commit: str | None = None  # a full commit id; None only for FIRST_USE

    def describe(self) -> str:
        short = (self.commit or "")[:8]
        return {
            FloorKind.APPLIED: f"the applied commit {short}",
            FloorKind.PINNED: f"the pinned min_commit {short}",
            FloorKind.REVISION: f"the running system's configurationRevision {short}",
            FloorKind.FIRST_USE: "nothing (first use)",
        }[self.kind]


@dataclass(frozen=True)
class Policy:
    """What every deploy commit is checked against, from this machine's configuration."""

    host: str
    trust: AllowedSigners
    now: datetime
    max_age: int | None = None


@dataclass(frozen=True)
class AcceptedDeploy:
    commit: str
    source_commit: str | None
    principal: str
    expires: datetime | None
    first_use: bool  # accepted without an applied commit to descend from
    floor: Floor = field(default_factory=lambda: Floor(FloorKind.FIRST_USE))
    recovered: bool = False  # through a recovery commit naming the floor
    chain: int = 1  # commits verified


@dataclass(frozen=True)
class DeployCommit:
    """One commit of a deploy branch, read once: its raw object and its trailers."""

    oid: pygit2.Oid
    raw: bytes
    parents: tuple[pygit2.Oid, ...]
    tree: pygit2.Oid
    trailers: Mapping[str, str]

    @property
    def short(self) -> str:
        return str(self.oid)[:8]

    @property
    def recovers(self) -> str | None:
        return self.trailers.get(TRAILER_RECOVERS)

    def generation(self) -> int | None:
        text = self.trailers.get(TRAILER_SOURCE_GENERATION)
        if text is None:
            return None
        if not text.isdigit() or not 0 < int(text) < MAX_GENERATION:
            raise _BadCommitError(f"has an unreadable {TRAILER_SOURCE_GENERATION} trailer {text!r}")
        return int(text)


class _BadCommitError(Exception):
    """What is wrong with one commit; becomes a RejectedError naming it."""


def read_deploy_commit(repo: pygit2.Repository, oid: pygit2.Oid) -> DeployCommit:
    """Raise RejectedError when the commit is missing (an incomplete history) or unreadable."""
    short = str(oid)[:8]
    try:
        raw = commits.read_raw(repo, oid)
    except (KeyError, ValueError, pygit2.GitError, GitopsError) as err:
        raise RejectedError(
            f"commit {short} of the deploy history is missing or not a commit, so the chain "
            "cannot be checked"
        ) from err
    try:
        commit = repo.get(oid)
    except (ValueError, pygit2.GitError) as err:  # libgit2 cannot parse it
        try:
            commits.check_canonical(raw)
        except SignatureError as problem:
            raise RejectedError(f"commit {short} refused: {problem}") from err
        raise RejectedError(f"commit {short} refused: it is not a well-formed commit") from err
    if not isinstance(commit, pygit2.Commit):
        raise RejectedError(f"{short} in the deploy history is not a commit")
    return DeployCommit(
        oid, raw, tuple(commit.parent_ids), commit.tree_id, commits.trailers(commit.message)
    )


# -- the chain -----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Chain:
    commits: tuple[DeployCommit, ...]  # oldest first; every one is verified
    base_generation: int | None  # Source-Generation of the floor below the chain, if known
    recovered: bool


def _generation_of(repo: pygit2.Repository, commit: str | None) -> int | None:
    """The floor's Source-Generation; the floor was verified before (or is pinned), so an
    unreadable one counts as none."""
    try:
        return read_deploy_commit(repo, pygit2.Oid(hex=commit)).generation() if commit else None
    except (RejectedError, _BadCommitError, ValueError):
        return None


def _floor_payload(repo: pygit2.Repository, floor: Floor) -> bytes | None:
    try:
        return commits.signed_payload(commits.read_raw(repo, floor.commit or ""))
    except (KeyError, ValueError, GitopsError):
        return None


def _chain(repo: pygit2.Repository, head: pygit2.Oid, floor: Floor) -> _Chain:
    """The commits from ``floor`` (exclusive) to ``head`` along first parents.

    The walk stops at the floor, at a twin of it (same signed payload: a re-encoding), at a
    recovery commit naming it (included), or, for a configurationRevision, at the deploy
    commit rendered from it (``Source-Commit``, included: the revision may be a main commit
    when the machine was installed from the fleet repository).
    """
    first = read_deploy_commit(repo, head)
    if floor.kind is FloorKind.FIRST_USE:
        return _Chain((first,), None, False)
    payload = _floor_payload(repo, floor)
    walked: list[DeployCommit] = []
    commit = first
    while True:
        if str(commit.oid) == floor.commit or (
            payload is not None and commits.signed_payload(commit.raw) == payload
        ):
            chain = tuple(reversed(walked)) or (first,)
            return _Chain(chain, _generation_of(repo, floor.commit), False)
        walked.append(commit)
        if commit.recovers is not None and commit.recovers == floor.commit:
            return _Chain(tuple(reversed(walked)), None, True)
        if floor.kind is FloorKind.REVISION and commit.trailers.get(TRAILER_SOURCE) == floor.commit:
            return _Chain(tuple(reversed(walked)), None, False)
        if not commit.parents:
            raise NotDescendingError(_not_descending(first, floor))
        commit = read_deploy_commit(repo, commit.parents[0])


def _not_descending(head: DeployCommit, floor: Floor) -> str:
    prefix = f"deploy commit {head.short} refused: it does not descend from {floor.describe()}"
    if floor.kind is FloorKind.REVISION:
        return (
            f"{prefix}, nor was it rendered from it: either deploy/<host> was rewound past "
            "what this machine runs, or the machine was installed from a commit that was never "
            "published. The agent's record of what it applied (state.json) is gone, so it "
            "cannot tell; pin min_commit to the deploy commit you trust (docs/operations.md)"
        )
    if floor.kind is FloorKind.PINNED:
        return prefix
    return (
        f"{prefix} (a rollback to an older commit, or rewritten history; after a legitimate "
        "rewrite, publish a recovery commit: 'gitops publish --recover', docs/operations.md)"
    )


def _check_commit(
    repo: pygit2.Repository, commit: DeployCommit, policy: Policy, generation: int | None
) -> Verified:
    try:  # the signature first: an unsigned commit is "not signed", not "not canonical"
        verified = commits.verify_commit_now(repo, commit.oid, policy.trust, now=policy.now)
        commits.check_canonical(commit.raw)
    except SignatureError as err:
        raise _BadCommitError(str(err)) from err
    target = commit.trailers.get(TRAILER_HOST)
    if target != policy.host:
        raise _BadCommitError(
            f"it is addressed to {target or 'no host'}, not {policy.host} (Gitops-Host trailer)"
        )
    if len(commit.parents) > 1 and commit.recovers is None:
        raise _BadCommitError(
            f"it is a merge ({len(commit.parents)} parents); deploy commits have one parent, "
            "and only a recovery commit (Recovers trailer) may have more"
        )
    ours = commit.generation()
    if generation is not None and ours is None:
        raise _BadCommitError(
            f"it has no {TRAILER_SOURCE_GENERATION} trailer although the commit before it has "
            f"one ({generation}): published by an outdated or foreign publisher"
        )
    if generation is not None and ours is not None and ours < generation:
        raise _BadCommitError(
            f"it was rendered from an older main ({TRAILER_SOURCE_GENERATION} {ours} < "
            f"{generation} of the commit before it): a stale publish (an old clone or a slow "
            "CI job); publish again from the current main"
        )
    return verified


def _verify_chain(repo: pygit2.Repository, chain: _Chain, policy: Policy, floor: Floor) -> Verified:
    generation = chain.base_generation
    verified: Verified | None = None
    head = chain.commits[-1]
    for index, commit in enumerate(chain.commits, start=1):
        try:
            verified = _check_commit(repo, commit, policy, generation)
            generation = commit.generation()
        except _BadCommitError as problem:
            where = (
                ""
                if commit is head
                else f"commit {commit.short} on the way to it ({index} of {len(chain.commits)} "
                f"after {floor.describe()}) is bad: "
            )
            raise RejectedError(f"deploy commit {head.short} refused: {where}{problem}") from None
    if verified is None:  # _chain always returns the head at least
        raise RejectedError(f"deploy commit {head.short} refused: nothing to verify")
    return verified


# -- freshness -----------------------------------------------------------------------------


def check_fresh(commit: DeployCommit, policy: Policy) -> datetime | None:
    """Raise StaleError if ``commit`` is past its Expires or older than max_age; return
    its expiry. Checked on the applied head every cycle, not only on new heads."""
    expires = None
    text = commit.trailers.get(TRAILER_EXPIRES)
    if text is not None:
        try:
            expires = parse_time(text)
        except ValueError as err:
            raise RejectedError(
                f"deploy commit {commit.short} refused: unreadable Expires trailer ({err})"
            ) from err
        if policy.now >= expires:
            raise StaleError(
                f"deploy commit {commit.short} expired at {text} and nothing newer is "
                "published: the publisher stopped renewing it (CI stopped, or the server "
                "serves a frozen branch); run the publish job"
            )
    if policy.max_age is not None:
        committed = commits.committer_time(commit.raw)
        if policy.now - committed > timedelta(seconds=policy.max_age):
            raise StaleError(
                f"deploy commit {commit.short} was committed {format_time(committed)}, older "
                f"than max_age ({policy.max_age}s), and nothing newer is published: the "
                "publisher stopped renewing it (or the server is frozen); run the publish job"
            )
    return expires


# -- the decision --------------------------------------------------------------------------


def check_deploy_head(
    repo: pygit2.Repository, head: pygit2.Oid, *, floor: Floor, policy: Policy
) -> AcceptedDeploy:
    """Accept ``head`` or raise RejectedError (StaleError when only freshness fails).

    ``repo`` needs the commits from the floor to the head, not their trees: the agent
    calls this before it downloads anything else.
    """
    chain = _chain(repo, head, floor)
    verified = _verify_chain(repo, chain, policy, floor)
    last = chain.commits[-1]
    expires = check_fresh(last, policy)
    return AcceptedDeploy(
        commit=str(head),
        source_commit=last.trailers.get(TRAILER_SOURCE),
        principal=verified.principal,
        expires=expires,
        first_use=floor.kind is FloorKind.FIRST_USE,
        floor=floor,
        recovered=chain.recovered,
        chain=len(chain.commits),
    )
