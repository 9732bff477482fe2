"""Signed commits through pygit2, read and written the way git itself does.

Signatures are taken from the raw commit object's *headers only*, stopping at the first
blank line (git's ``parse_buffer_signed_by_header``); pygit2's ``Commit.gpg_signature``
also scans the message, so a signature block pasted into a message would look signed
to it and unsigned to git. We never use it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import cast

import pygit2

from gitops.errors import GitopsError
from gitops.trust import sshsig
from gitops.trust.allowed_signers import AllowedSigners, Verified
from gitops.trust.sshsig import Refusal, SignatureError, SigningKey

SIGNATURE_HEADER = b"gpgsig"
OTHER_SIGNATURE_HEADER = b"gpgsig-sha256"  # the SHA-256 repos' header; never ours
_TRAILER = re.compile(r"^([A-Za-z0-9][A-Za-z0-9-]*): (.*)$")
_COMMITTER = re.compile(rb"^committer .* (\d+) ([+-])(\d\d)(\d\d)$", re.MULTILINE)


@dataclass(frozen=True)
class SplitCommit:
    payload: bytes  # what was signed: the object without its signature header
    signature: bytes | None


def split_signature(raw: bytes) -> SplitCommit:
    end = raw.find(b"\n\n")
    headers, body = (raw[: end + 1], raw[end + 1 :]) if end >= 0 else (raw, b"")
    payload: list[bytes] = []
    signature: list[bytes] = []
    inside: bytes | None = None
    for line in headers.splitlines(keepends=True):
        if inside is not None and line.startswith(b" "):
            if inside == SIGNATURE_HEADER:
                signature.append(line[1:])
            continue
        inside = None
        name, _, value = line.partition(b" ")
        if name == SIGNATURE_HEADER:
            inside = name
            signature.append(value)
        elif name == OTHER_SIGNATURE_HEADER:
            inside = name
        else:
            payload.append(line)
    return SplitCommit(b"".join(payload) + body, b"".join(signature) or None)


def committer_time(raw: bytes) -> datetime:
    end = raw.find(b"\n\n")
    match = _COMMITTER.search(raw[: end if end >= 0 else len(raw)])
    if match is None:
        raise SignatureError("commit has no committer line")
    seconds, sign, hours, minutes = match.groups()
    # Anyone can write a commit object: an impossible date is a malformed commit, refused
    # before its signature is even looked at, never an exception deeper down.
    try:
        offset = timedelta(hours=int(hours), minutes=int(minutes)) * (-1 if sign == b"-" else 1)
        return datetime.fromtimestamp(int(seconds), timezone(offset))
    except (OverflowError, ValueError, OSError) as err:
        raise SignatureError(
            f"commit has an impossible committer date ({int(seconds)} {sign.decode()}"
            f"{hours.decode()}{minutes.decode()})"
        ) from err


def read_raw(repo: pygit2.Repository, oid: pygit2.Oid | str) -> bytes:
    try:
        obj = repo.odb.read(oid if isinstance(oid, pygit2.Oid) else pygit2.Oid(hex=oid))
    except (KeyError, ValueError, pygit2.GitError) as err:
        raise GitopsError(f"{oid}: no such object in {repo.path}") from err
    if obj[0] != pygit2.enums.ObjectType.COMMIT:
        raise GitopsError(f"{oid}: not a commit")
    return bytes(obj[1])


def verify_commit(
    repo: pygit2.Repository,
    oid: pygit2.Oid | str,
    trust: AllowedSigners,
    *,
    now: datetime | None = None,
) -> Verified:
    """Accept commit ``oid`` only if a key in ``trust`` signed it (namespace ``git``),
    valid at its committer date *and* at ``now`` (the verifier's clock when None).

    git checks only the committer date, which the signer chooses: a commit backdated
    into an expired key's or certificate's validity would pass. Raises SignatureError."""
    raw = read_raw(repo, oid)
    split = split_signature(raw)
    if split.signature is None:
        raise SignatureError("not signed", Refusal.UNSIGNED)
    moments = (committer_time(raw), now or datetime.now(UTC))
    return trust.verify(split.payload, split.signature, at=moments)


def signature_of(name: str, email: str, when: datetime | None = None) -> pygit2.Signature:
    moment = when or datetime.now(UTC)
    offset = moment.utcoffset() or timedelta(0)
    return pygit2.Signature(name, email, int(moment.timestamp()), int(offset.total_seconds() // 60))


def create_signed_commit(
    repo: pygit2.Repository,
    *,
    tree: pygit2.Oid,
    parents: Sequence[pygit2.Oid],
    message: str,
    author: pygit2.Signature,
    committer: pygit2.Signature | None = None,
    key: SigningKey,
) -> pygit2.Oid:
    """Write a commit signed exactly as ``git commit -S`` with ``gpg.format=ssh`` would
    (by a key in memory or one ssh-agent holds); no ref moves."""
    # pygit2's stubs say Oid; it returns the commit object's text.
    content = cast(
        str, repo.create_commit_string(author, committer or author, message, tree, list(parents))
    )
    armored = sshsig.sign(content.encode("utf-8"), key)
    # libgit2 would add a header line holding one space for the armor's final newline.
    return repo.create_commit_with_signature(content, armored.rstrip("\n"))


def format_message(subject: str, body: str = "", trailers: Mapping[str, str] | None = None) -> str:
    parts = [subject.strip()]
    if body.strip():
        parts.append(body.strip())
    if trailers:
        parts.append("\n".join(f"{k}: {v}" for k, v in trailers.items()))
    return "\n\n".join(parts) + "\n"


def trailers(message: str) -> dict[str, str]:
    """The ``Key: value`` lines of the message's last paragraph (git's trailer block)."""
    paragraphs = [p for p in message.strip().split("\n\n") if p.strip()]
    if len(paragraphs) < 2:
        return {}
    found: dict[str, str] = {}
    for line in paragraphs[-1].splitlines():
        match = _TRAILER.match(line.strip())
        if match is None:
            return {}
        found.setdefault(match.group(1), match.group(2).strip())
    return found


def open_repository(path: Path) -> pygit2.Repository:
    try:
        return pygit2.Repository(str(path))
    except pygit2.GitError as err:
        raise GitopsError(
            f"{path}: not a git repository ({err}); run 'git init' or pass --repo"
        ) from err


def resolve_commit(repo: pygit2.Repository, rev: str) -> pygit2.Commit:
    try:
        obj = repo.revparse_single(rev)
    except (KeyError, ValueError, pygit2.GitError) as err:
        raise GitopsError(f"{rev}: no such revision in {repo.path}") from err
    commit = obj.peel(pygit2.Commit)
    assert isinstance(commit, pygit2.Commit)
    return commit


def ref_target(repo: pygit2.Repository, name: str) -> pygit2.Oid | None:
    ref = repo.references.get(name)
    if ref is None:
        return None
    target = ref.resolve().target
    return target if isinstance(target, pygit2.Oid) else None


def update_refs(
    repo: pygit2.Repository,
    updates: Mapping[str, tuple[pygit2.Oid | None, pygit2.Oid]],
    *,
    message: str,
) -> None:
    """Move every ref in ``updates`` from its expected old value to the new one, or none.

    Each ref is locked first; if any lock fails or any ref moved meanwhile, nothing changes.
    """
    if not updates:
        return
    try:
        with repo.transaction() as txn:
            for name in updates:
                txn.lock_ref(name)
            for name, (old, _) in updates.items():
                if ref_target(repo, name) != old:
                    raise GitopsError(f"{name} changed while publishing; run the command again")
            for name, (_, new) in updates.items():
                txn.set_target(name, new, message=message)
    except pygit2.GitError as err:
        raise GitopsError(f"cannot update refs in {repo.path}: {err}") from err


# -- deploy commits: one canonical encoding, checked at "now" ------------------------------
#
# A signature covers the commit without its ``gpgsig`` header, so the header itself can be
# re-encoded (armor re-wrapped, an extra ``gpgsig-sha256`` header, the header moved)
# without breaking the signature: a twin with another commit id that ``git verify-commit``
# accepts. A host that applied the twin would refuse every later real publish as "not a
# descendant". Deploy commits therefore have exactly one encoding, the one git and
# :func:`create_signed_commit` write; anything else is refused (docs/protocol.md).

_CANONICAL_HEADERS = re.compile(rb"^tree (parent )*author committer gpgsig $")
_OBJECT_ID = re.compile(rb"^[0-9a-f]{40}$")
_IDENTITY = re.compile(rb"^[^<>\n]*<[^<>\n]*> [0-9]+ [+-][0-9]{4}$")
_KNOWN_HEADERS = frozenset({"tree", "parent", "author", "committer", "gpgsig"})


def _headers(raw: bytes) -> tuple[list[tuple[bytes, list[bytes]]], bytes]:
    """The header fields (name, value lines) and the rest of the object after the blank line."""
    end = raw.find(b"\n\n")
    if end < 0:
        raise SignatureError("commit is not in canonical form: no blank line after its headers")
    fields: list[tuple[bytes, list[bytes]]] = []
    for line in raw[:end].split(b"\n"):
        if line.startswith(b" ") and fields:
            fields[-1][1].append(line[1:])
            continue
        name, _, value = line.partition(b" ")
        fields.append((name, [value]))
    return fields, raw[end + 2 :]


def check_canonical(raw: bytes) -> None:
    """Raise SignatureError unless ``raw`` is encoded exactly as git (and our signer)
    write a signed commit: headers ``tree``, ``parent``..., ``author``, ``committer``,
    ``gpgsig`` in that order and nothing else, and the signature armored at 70 columns."""
    fields, _ = _headers(raw)
    names = b"".join(name + b" " for name, _ in fields)
    if not _CANONICAL_HEADERS.match(names):
        extra = sorted({n.decode("ascii", "replace") for n, _ in fields} - _KNOWN_HEADERS)
        detail = f"an extra {extra[0]!r} header" if extra else "headers out of order or repeated"
        raise SignatureError(
            f"commit is not in canonical form: {detail} (git writes tree, parent, author, "
            "committer, gpgsig; a re-encoded copy of a signed commit is refused)"
        )
    for name, value in fields:
        if not _canonical_field(name, value):
            armor = " (the signature armor wrapped at 70 columns)" if name == b"gpgsig" else ""
            raise SignatureError(
                f"commit is not in canonical form: its {name.decode()} header is not written "
                f"as git writes it{armor}; a re-encoded copy of a signed commit is refused"
            )


def _canonical_field(name: bytes, value: list[bytes]) -> bool:
    if name in (b"tree", b"parent"):
        return len(value) == 1 and _OBJECT_ID.match(value[0]) is not None
    if name in (b"author", b"committer"):
        return len(value) == 1 and _IDENTITY.match(value[0]) is not None
    armored = b"\n".join(value)
    return armored == sshsig.armor(sshsig.dearmor(armored)).rstrip("\n").encode("ascii")


def signed_payload(raw: bytes) -> bytes:
    """What the signature covers: two encodings of one signed commit share it."""
    return split_signature(raw).payload


def verify_commit_now(
    repo: pygit2.Repository, oid: pygit2.Oid | str, trust: AllowedSigners, *, now: datetime
) -> Verified:
    """:func:`verify_commit` at the committer date and at ``now``, the signing certificate
    (if the key is one) included: its validity is otherwise checked at the committer date
    only, which the signer chooses, so a backdated commit would pass an expired certificate."""
    verified = verify_commit(repo, oid, trust, now=now)
    if verified.key.is_certificate:
        cert = verified.key.certificate()
        if not cert.valid_after <= now.timestamp() < cert.valid_before:
            raise SignatureError(
                f"signed with certificate {verified.key.fingerprint}, which is not valid now "
                f"(valid from {_cert_time(cert.valid_after)} to {_cert_time(cert.valid_before)})",
                Refusal.NOT_ALLOWED,
            )
    return verified


def _cert_time(stamp: int) -> str:
    try:
        return datetime.fromtimestamp(stamp, UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    except (OverflowError, OSError, ValueError):
        return "forever"
