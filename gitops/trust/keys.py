"""OpenSSH key files: ``gitops keys new`` writes the pair ssh-keygen would."""

from __future__ import annotations

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
from gitops.trust.sshsig import PrivateKeyTypes, PublicKey, load_private_key


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
