"""Signature verdicts for report and deploy commits: verified, unverified or unknown key.

Uses :func:`gitops.trust.commits.verify_commit` (git-exact signature extraction, the same trust
rules as the agent) and, only when that fails, a second look to tell a bad signature
("unverified") from a good signature by a key nobody trusts here ("unknown key").
"""

from __future__ import annotations

import hashlib

import pygit2

from gitops.sitegen.model import Trust
from gitops.trust import commits, sshsig
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError


def trust_id(trust: AllowedSigners) -> str:
    """A short id of a trust list, part of every cache key a verdict depends on."""
    return hashlib.sha256(trust.text().encode()).hexdigest()[:16]


def verdict(repo: pygit2.Repository, oid: str, trust: AllowedSigners) -> tuple[Trust, str, str]:
    """(trust, detail, principal): detail says why not, or who signed."""
    try:
        verified = commits.verify_commit(repo, oid, trust)
    except SignatureError as err:
        return _classify_failure(repo, oid, str(err)), str(err), ""
    return Trust.VERIFIED, f"{verified.principal} ({verified.key.fingerprint})", verified.principal


def _classify_failure(repo: pygit2.Repository, oid: str, message: str) -> Trust:
    split = commits.split_signature(commits.read_raw(repo, oid))
    if split.signature is None:
        return Trust.UNVERIFIED
    try:
        sshsig.verify(split.payload, split.signature, namespace=sshsig.GIT_NAMESPACE)
    except SignatureError:
        return Trust.UNVERIFIED
    # A valid signature that the trust list refused: by a key it does not list at all
    # (unknown), or by a listed key outside its validity or namespace (unverified).
    return Trust.UNKNOWN_KEY if message.startswith("signed by unknown key") else Trust.UNVERIFIED
