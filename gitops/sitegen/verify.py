"""Signature verdicts for report and deploy commits: verified, unverified or unknown key.

Uses :func:`gitops.trust.commits.verify_commit` (git-exact signature extraction, the same trust
rules as the agent); the error's refusal kind tells a bad signature ("unverified") from a
good signature by a key nobody trusts here ("unknown key").
"""

from __future__ import annotations

import hashlib

import pygit2

from gitops.sitegen.model import Trust
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import Refusal, SignatureError


def trust_id(trust: AllowedSigners) -> str:
    """A short id of a trust list, part of every cache key a verdict depends on."""
    return hashlib.sha256(trust.text().encode()).hexdigest()[:16]


def verdict(repo: pygit2.Repository, oid: str, trust: AllowedSigners) -> tuple[Trust, str, str]:
    """(trust, detail, principal): detail says why not, or who signed."""
    try:
        verified = commits.verify_commit(repo, oid, trust)
    except SignatureError as err:
        # A valid signature by a key the trust list does not name at all is "unknown
        # key"; every other refusal (bad, malformed, unsigned, a listed key outside its
        # validity or namespace) is "unverified".
        kind = Trust.UNKNOWN_KEY if err.refusal is Refusal.UNKNOWN_KEY else Trust.UNVERIFIED
        return kind, str(err), ""
    return Trust.VERIFIED, f"{verified.principal} ({verified.key.fingerprint})", verified.principal
