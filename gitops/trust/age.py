"""age encryption (https://age-encryption.org/v1) through pyrage, the maintained Rust
implementation: no hand-written crypto here, only the recipient bookkeeping around it.

Files are binary age files, as agenix and ``age -R`` write them: the ``age`` CLI and
agenix decrypt them with the host's SSH key or an admin's identity, and we decrypt theirs.

A file's header names its recipients without decrypting anything: an ``ssh-ed25519`` or
``ssh-rsa`` stanza carries a tag (the first 4 bytes of the SHA-256 of the key's wire
blob), an ``X25519`` stanza only a one-time share (so X25519 recipients can be counted,
not named). :func:`header_problem` compares a header with the recipients it should have.
"""

from __future__ import annotations

import base64
import hashlib
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pyrage

from gitops.errors import GitopsError

MAGIC: Final = b"age-encryption.org/v1\n"
SSH_TYPES: Final = ("ssh-ed25519", "ssh-rsa")
X25519: Final = "X25519"
_AGE_RECIPIENT: Final = re.compile(r"^age1[02-9ac-hj-np-z]{58}$")
_MAX_HEADER: Final = 64 * 1024  # a header larger than this is not one we wrote
_AGE_SECRET_PREFIX: Final = "AGE-SECRET-KEY-1"


class AgeError(GitopsError):
    """Encrypting, decrypting or reading an age file failed."""


@dataclass(frozen=True)
class Recipient:
    """Who a file is encrypted to: an SSH public key line or an ``age1...`` key."""

    text: str  # "ssh-ed25519 AAAA..." (no comment) or "age1..."
    kind: str  # ssh-ed25519, ssh-rsa or X25519: the stanza type it produces

    @property
    def tag(self) -> str | None:
        """The stanza tag of an SSH recipient (None for X25519, whose stanzas name nobody)."""
        if self.kind == X25519:
            return None
        blob = base64.b64decode(self.text.split()[1])
        return base64.b64encode(hashlib.sha256(blob).digest()[:4]).decode().rstrip("=")

    def _pyrage(self) -> Any:
        try:
            if self.kind == X25519:
                return pyrage.x25519.Recipient.from_str(self.text)
            return pyrage.ssh.Recipient.from_str(self.text)
        except pyrage.RecipientError as err:
            raise AgeError(f"{self.text[:40]}...: not a usable age recipient ({err})") from err


def parse_recipient(text: str) -> Recipient:
    """``ssh-ed25519 AAAA... [comment]``, ``ssh-rsa ...`` or ``age1...``; ValueError says why not."""
    parts = text.strip().split()
    if len(parts) == 1 and _AGE_RECIPIENT.match(parts[0]):
        recipient = Recipient(parts[0], X25519)
    elif len(parts) >= 2 and parts[0] in SSH_TYPES:
        recipient = Recipient(f"{parts[0]} {parts[1]}", parts[0])
    elif parts and parts[0].startswith(("ssh-", "ecdsa-", "sk-")):
        raise ValueError(
            f"{parts[0]} keys cannot receive age files (age knows ssh-ed25519 and ssh-rsa)"
        )
    else:
        raise ValueError("expected an age1... key or an 'ssh-ed25519 AAAA...' line")
    try:
        recipient._pyrage()
    except AgeError as err:
        raise ValueError(str(err)) from err
    return recipient


def encrypt(plaintext: bytes, recipients: Sequence[Recipient]) -> bytes:
    """A binary age file of ``plaintext`` for ``recipients`` (at least one)."""
    if not recipients:
        raise AgeError("no recipients to encrypt to")
    unique = list(dict.fromkeys(recipients))
    try:
        return bytes(pyrage.encrypt(plaintext, [r._pyrage() for r in unique]))
    except pyrage.EncryptError as err:
        raise AgeError(f"cannot encrypt: {err}") from err


@dataclass(frozen=True)
class Identity:
    """A private key that can open age files: an OpenSSH private key or an age identity."""

    where: str
    keys: tuple[Any, ...]


def load_identity(path: Path) -> Identity:
    """Read an unencrypted OpenSSH private key (ed25519 or RSA) or an age identity file
    (``AGE-SECRET-KEY-1...`` lines, as ``age-keygen`` writes)."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise AgeError(f"{path}: cannot read the identity ({err.strerror})") from err
    text = data.decode("utf-8", "replace")
    if _AGE_SECRET_PREFIX in text:
        keys = []
        for line in text.splitlines():
            line = line.strip()
            if line.startswith(_AGE_SECRET_PREFIX):
                try:
                    keys.append(pyrage.x25519.Identity.from_str(line))
                except pyrage.IdentityError as err:
                    raise AgeError(f"{path}: not an age identity ({err})") from err
        return Identity(str(path), tuple(keys))
    try:
        return Identity(str(path), (pyrage.ssh.Identity.from_buffer(data),))
    except (pyrage.IdentityError, ValueError) as err:
        raise AgeError(
            f"{path}: not an unencrypted OpenSSH private key nor an age identity ({err}); "
            "pass --identity with one"
        ) from err


def decrypt(ciphertext: bytes, identity: Identity, what: str) -> bytes:
    """The plaintext of ``ciphertext`` (named ``what`` in errors)."""
    try:
        return bytes(pyrage.decrypt(ciphertext, list(identity.keys)))
    except pyrage.DecryptError as err:
        why = " ".join(str(err).split())  # pyrage's messages span lines
        raise AgeError(f"{what}: {identity.where} cannot decrypt it ({why})") from err


@dataclass(frozen=True)
class Stanza:
    kind: str
    args: tuple[str, ...]


def read_header(ciphertext: bytes, what: str) -> tuple[Stanza, ...]:
    """The recipient stanzas of a binary age file, without decrypting it; grease stanzas
    (random ones an implementation adds so parsers stay lenient) are left out."""
    if not ciphertext.startswith(MAGIC):
        raise AgeError(f"{what}: not a binary age file (armored or plain text?)")
    end = ciphertext.find(b"\n---", 0, _MAX_HEADER)
    if end < 0:
        raise AgeError(f"{what}: the age header has no end")
    stanzas = []
    for line in ciphertext[len(MAGIC) : end].split(b"\n"):
        if line.startswith(b"-> "):
            kind, *args = line[3:].decode("ascii", "replace").split(" ")
            if not kind.endswith("-grease"):
                stanzas.append(Stanza(kind, tuple(args)))
    return tuple(stanzas)


def header_problem(ciphertext: bytes, recipients: Iterable[Recipient], what: str) -> str | None:
    """Why the header does not list exactly ``recipients``, or None when it does: the
    SSH stanzas' tags must be the recipients' tags, and there must be as many X25519
    stanzas as X25519 recipients (an X25519 stanza does not say whose it is)."""
    try:
        stanzas = read_header(ciphertext, what)
    except AgeError as err:
        return str(err)
    wanted = list(dict.fromkeys(recipients))
    want_tags = Counter((r.kind, r.tag or "") for r in wanted if r.kind != X25519)
    have_tags = Counter(
        (s.kind, s.args[0] if s.args else "") for s in stanzas if s.kind in SSH_TYPES
    )
    problems = []
    missing = want_tags - have_tags
    extra = have_tags - want_tags
    if missing:
        problems.append(f"not encrypted to {len(missing)} declared SSH key(s)")
    if extra:
        problems.append(f"encrypted to {len(extra)} SSH key(s) no longer declared")
    want_x = sum(1 for r in wanted if r.kind == X25519)
    have_x = sum(1 for s in stanzas if s.kind == X25519)
    if want_x != have_x:
        problems.append(f"{have_x} age (X25519) recipient(s), {want_x} declared")
    others = sorted({s.kind for s in stanzas if s.kind not in (*SSH_TYPES, X25519)})
    if others:
        problems.append(f"unexpected recipient types {', '.join(others)}")
    if not problems:
        return None
    return f"{what}: {'; '.join(problems)}; run 'gitops secrets rekey'"
