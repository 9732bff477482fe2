"""``gitops verify``: like ``git verify-commit``, in-process, with a clear verdict.

Unlike git, the signing key (or certificate) must be valid now as well as at the
committer date, which the signer chooses."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from gitops import output, protocol
from gitops.errors import GitopsError
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners, Verified
from gitops.trust.sshsig import SignatureError


def _verdict(
    rev: str,
    commit: str,
    moments: tuple[datetime | None, datetime],
    verified: Verified | None,
    refused: SignatureError | None,
) -> dict[str, object]:
    """The ``--json`` object (documented in docs/keys.md)."""
    committed, now = moments
    return {
        "rev": rev,
        "commit": commit,
        "good": verified is not None,
        "principal": None if verified is None else verified.principal,
        "key_type": None if verified is None else verified.key.key_type,
        "fingerprint": None if verified is None else verified.key.fingerprint,
        "refusal": None if refused is None else str(refused.refusal),
        "reason": None if refused is None else str(refused),
        "committer_time": None if committed is None else protocol.format_time(committed),
        "checked_at": protocol.format_time(now),
    }


def verify(repo: Path, rev: str, allowed_signers: Path, *, as_json: bool = False) -> int:
    repository = commits.open_repository(repo)
    commit = commits.resolve_commit(repository, rev)
    trust = AllowedSigners.load(allowed_signers)
    now = datetime.now(UTC)
    committed: datetime | None = None
    verified: Verified | None = None
    refused: SignatureError | None = None
    try:
        committed = commits.committer_time(commits.read_raw(repository, commit.id))
        verified = commits.verify_commit(repository, commit.id, trust, now=now)
    except SignatureError as err:
        refused = err
    if as_json:
        output.emit_json(_verdict(rev, str(commit.id), (committed, now), verified, refused))
    if refused is not None:
        raise GitopsError(f"{rev} ({commit.short_id}): {refused}") from refused
    assert verified is not None
    if not as_json:
        output.say(
            f'Good "git" signature for {verified.principal} with {verified.key.key_type} key '
            f"{verified.key.fingerprint} on {commit.short_id}"
        )
    return 0
