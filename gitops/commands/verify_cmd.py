"""``gitops verify``: like ``git verify-commit``, in-process, with a clear verdict."""

from __future__ import annotations

from pathlib import Path

from gitops import output
from gitops.errors import GitopsError
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError


def verify(repo: Path, rev: str, allowed_signers: Path) -> int:
    repository = commits.open_repository(repo)
    commit = commits.resolve_commit(repository, rev)
    trust = AllowedSigners.load(allowed_signers)
    try:
        verified = commits.verify_commit(repository, commit.id, trust)
    except SignatureError as err:
        raise GitopsError(f"{rev} ({commit.short_id}): {err}") from err
    output.say(
        f'Good "git" signature for {verified.principal} with {verified.key.key_type} key '
        f"{verified.key.fingerprint} on {commit.short_id}"
    )
    return 0
