"""OpenSSH key files: ``gitops keys new`` writes the pair ssh-keygen would, and signing
keys are found the way git finds ``user.signingKey``."""

from __future__ import annotations

import base64
import os
from collections.abc import Mapping
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

from gitops.errors import GitopsError
from gitops.system import atomic
from gitops.trust import ssh_agent
from gitops.trust.sshsig import (
    PrivateKeyTypes,
    PublicKey,
    SignatureError,
    SigningKey,
    WireReader,
    load_private_key,
)

_OPENSSH_PRIVATE_BEGIN = b"-----BEGIN OPENSSH PRIVATE KEY-----"
_OPENSSH_PRIVATE_END = b"-----END OPENSSH PRIVATE KEY-----"
_OPENSSH_MAGIC = b"openssh-key-v1\0"


def public_line(key: PrivateKeyTypes, comment: str = "") -> str:
    line = key.public_key().public_bytes(Encoding.OpenSSH, PublicFormat.OpenSSH).decode()
    return f"{line} {comment}".strip() + "\n"


def write_keypair(
    path: Path, key: PrivateKeyTypes, comment: str = "", *, force: bool = False
) -> PublicKey:
    """Write ``path`` (private, mode 0600, OpenSSH format) and ``path.pub``."""
    pub_path = path.with_name(path.name + ".pub")
    if not force:
        for existing in (path, pub_path):
            if existing.exists():
                raise GitopsError(f"{existing}: already exists; choose another path or remove it")
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic.write_bytes(path, private, mode=0o600)
    atomic.write_bytes(pub_path, public_line(key, comment).encode(), mode=0o644)
    return PublicKey.from_crypto(key.public_key())


def new_keypair(path: Path, comment: str = "") -> PublicKey:
    return write_keypair(path, ed25519.Ed25519PrivateKey.generate(), comment)


def load_signing_key(path: Path) -> PrivateKeyTypes:
    """Load a private key to sign with; a clear error when it is missing or unusable."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise GitopsError(
            f"{path}: cannot read the signing key ({err.strerror}); "
            "create one with 'gitops keys new PATH'"
        ) from err
    try:
        return load_private_key(data, where=str(path))
    except ValueError as err:
        raise GitopsError(str(err)) from err


def _public_key_line(data: bytes) -> PublicKey | None:
    """The key of a ``.pub`` (or ``-cert.pub``) file's first line, or None."""
    for line in data.splitlines():
        if line.strip():
            try:
                return PublicKey.parse(line.decode("ascii"))
            except (ValueError, SignatureError):
                return None
    return None


def _encrypted_public_key(data: bytes) -> PublicKey | None:
    """The public half of a passphrase-protected OpenSSH private key (it is stored in
    clear in the header), or None when ``data`` is not one."""
    text = data.strip()
    if not (text.startswith(_OPENSSH_PRIVATE_BEGIN) and text.endswith(_OPENSSH_PRIVATE_END)):
        return None
    body = text[len(_OPENSSH_PRIVATE_BEGIN) : -len(_OPENSSH_PRIVATE_END)]
    try:
        blob = base64.b64decode(b"".join(body.split()), validate=True)
    except ValueError:
        return None
    if not blob.startswith(_OPENSSH_MAGIC):
        return None
    reader = WireReader(blob[len(_OPENSSH_MAGIC) :])
    try:
        cipher = reader.string()
        reader.string()  # kdf name
        reader.string()  # kdf options
        if reader.uint32() != 1 or cipher == b"none":
            return None
        return PublicKey.from_blob(reader.string())
    except (ValueError, SignatureError):
        return None


def _private_twin(public_path: Path) -> str:
    """Where ssh-keygen would look for the private key of a ``.pub``/``-cert.pub`` file."""
    name = str(public_path)
    for suffix in ("-cert.pub", ".pub"):
        if name.endswith(suffix):
            return name.removesuffix(suffix)
    return "PRIVATE_KEY"


def load_signer(path: Path, *, environ: Mapping[str, str] | None = None) -> SigningKey:
    """The publisher's key, found as git finds ``user.signingKey`` with
    ``gpg.format=ssh``: an unencrypted private key signs in-process; a public key
    (``.pub``, or a certificate ``-cert.pub``) or a passphrase-protected private key
    signs through ssh-agent (``SSH_AUTH_SOCK``), which must hold that key."""
    try:
        data = path.read_bytes()
    except OSError as err:
        raise GitopsError(
            f"{path}: cannot read the signing key ({err.strerror}); "
            "create one with 'gitops keys new PATH'"
        ) from err
    environ = os.environ if environ is None else environ
    public = _public_key_line(data)
    if public is None and path.name.endswith(".pub"):
        raise GitopsError(f"{path}: not an OpenSSH public key ('<type> <base64> [comment]')")
    if public is not None:
        sock = ssh_agent.socket_path(environ, why=f"{path} is a public key")
        return ssh_agent.agent_key(sock, public, add_hint=f"'ssh-add {_private_twin(path)}'")
    try:
        return load_private_key(data, where=str(path))
    except ValueError as err:
        public = _encrypted_public_key(data)
        if public is None:
            raise GitopsError(
                f"{err}; pass an OpenSSH private key, or a public key (.pub) whose private "
                "key ssh-agent holds"
            ) from err
    sock = ssh_agent.socket_path(environ, why=f"{path} is passphrase-protected")
    return ssh_agent.agent_key(sock, public, add_hint=f"'ssh-add {path}'")
