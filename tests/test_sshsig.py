"""SSHSIG against OpenSSH's own ssh-keygen, both ways, and its strictness."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.trust import sshsig
from gitops.trust.sshsig import PublicKey, SignatureError
from testing.helpers import KEY_TYPES, make_key, public_line, write_key

MESSAGE = b"tree 4b825dc642cb6eb9a060e54bf8d69288fbee4904\nauthor A <a@b> 1 +0000\n\nhello\n"


def ssh_keygen(*args: str | Path, input: bytes | None = None) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ssh-keygen", *map(str, args)], input=input, capture_output=True, check=False
    )


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_roundtrip_every_key_type(kind: str) -> None:
    key = make_key(kind)
    armored = sshsig.sign(MESSAGE, key)
    parsed = sshsig.verify(MESSAGE, armored)
    assert parsed.public_key == PublicKey.from_crypto(key.public_key())
    with pytest.raises(SignatureError, match="changed"):
        sshsig.verify(MESSAGE + b"x", armored)


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_ssh_keygen_verifies_ours(tmp_path: Path, kind: str) -> None:
    key = make_key(kind)
    (tmp_path / "allowed").write_text(f"signer@example.org {public_line(key)}\n")
    (tmp_path / "msg.sig").write_text(sshsig.sign(MESSAGE, key))
    result = ssh_keygen(
        "-Y",
        "verify",
        "-f",
        tmp_path / "allowed",
        "-I",
        "signer@example.org",
        "-n",
        "git",
        "-s",
        tmp_path / "msg.sig",
        input=MESSAGE,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(b"Good")
    bad = ssh_keygen(
        "-Y",
        "verify",
        "-f",
        tmp_path / "allowed",
        "-I",
        "signer@example.org",
        "-n",
        "git",
        "-s",
        tmp_path / "msg.sig",
        input=MESSAGE + b"!",
    )
    assert bad.returncode != 0


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_we_verify_ssh_keygen(tmp_path: Path, kind: str) -> None:
    key = make_key(kind)
    write_key(tmp_path / "key", key)
    (tmp_path / "msg").write_bytes(MESSAGE)
    result = ssh_keygen("-Y", "sign", "-n", "git", "-f", tmp_path / "key", tmp_path / "msg")
    assert result.returncode == 0, result.stderr
    armored = (tmp_path / "msg.sig").read_text()
    assert sshsig.verify(MESSAGE, armored).public_key == PublicKey.from_crypto(key.public_key())
    with pytest.raises(SignatureError):
        sshsig.verify(MESSAGE[:-1], armored)


def test_ed25519_armor_is_byte_identical_to_ssh_keygen(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()  # Ed25519 signatures are deterministic
    write_key(tmp_path / "key", key)
    (tmp_path / "msg").write_bytes(MESSAGE)
    ssh_keygen("-Y", "sign", "-n", "git", "-f", tmp_path / "key", tmp_path / "msg")
    assert sshsig.sign(MESSAGE, key) == (tmp_path / "msg.sig").read_text()


def _reblob(armored: str, **changes: bytes | int) -> str:
    """Rebuild a signature blob with some fields replaced (to test strictness)."""
    blob = sshsig.dearmor(armored)
    fields: list[bytes] = []
    pos = 10
    for _ in range(5):
        (length,) = struct.unpack_from(">I", blob, pos)
        fields.append(blob[pos + 4 : pos + 4 + length])
        pos += 4 + length
    names = ["publickey", "namespace", "reserved", "hash", "signature"]
    values = dict(zip(names, fields, strict=True))
    version = int(changes.pop("version", 1))
    values.update({k: v for k, v in changes.items() if isinstance(v, bytes)})
    out = b"SSHSIG" + struct.pack(">I", version)
    out += b"".join(struct.pack(">I", len(values[n])) + values[n] for n in names)
    out += blob[pos:]
    return sshsig.armor(out)


def test_refuses_what_openssh_refuses() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    armored = sshsig.sign(MESSAGE, key)
    with pytest.raises(SignatureError, match="version"):
        sshsig.verify(MESSAGE, _reblob(armored, version=2))
    with pytest.raises(SignatureError, match="hash algorithm"):
        sshsig.verify(MESSAGE, _reblob(armored, hash=b"sha1"))
    with pytest.raises(SignatureError, match="namespace"):
        sshsig.verify(MESSAGE, armored, namespace="file")
    with pytest.raises(SignatureError, match="trailing"):
        sshsig.verify(MESSAGE, sshsig.armor(sshsig.dearmor(armored) + b"\0"))
    with pytest.raises(SignatureError, match="armor"):
        sshsig.verify(MESSAGE, armored.replace("SSH SIGNATURE", "PGP SIGNATURE"))


def test_refuses_plain_ssh_rsa_sha1_signatures() -> None:
    key = make_key("rsa")
    armored = sshsig.sign(MESSAGE, key)
    parsed = sshsig.parse(armored)
    sig = struct.pack(">I", 7) + b"ssh-rsa" + struct.pack(">I", len(parsed.sig)) + parsed.sig
    with pytest.raises(SignatureError, match="changed"):
        sshsig.verify(MESSAGE, _reblob(armored, signature=sig))


def test_sha256_signatures_verify(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    armored = sshsig.sign(MESSAGE, key, hash_alg="sha256")
    assert sshsig.verify(MESSAGE, armored).hash_alg == "sha256"
    (tmp_path / "allowed").write_text(f"a {public_line(key)}\n")
    (tmp_path / "m.sig").write_text(armored)
    result = ssh_keygen(
        "-Y",
        "verify",
        "-f",
        tmp_path / "allowed",
        "-I",
        "a",
        "-n",
        "git",
        "-s",
        tmp_path / "m.sig",
        input=MESSAGE,
    )
    assert result.returncode == 0


def test_public_key_parsing_and_fingerprint(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path / "k", key)
    line = (tmp_path / "k.pub").read_text()
    public = PublicKey.parse(line)
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", tmp_path / "k.pub"], capture_output=True, text=True, check=True
    )
    assert public.fingerprint in printed.stdout
    with pytest.raises(ValueError, match="base64"):
        PublicKey.parse("ssh-ed25519 not-base64!!")
    with pytest.raises(ValueError, match="expected"):
        PublicKey.parse("ssh-ed25519")
    mismatched = "ssh-rsa " + base64.b64encode(public.blob).decode()
    with pytest.raises(ValueError):
        PublicKey.parse(mismatched)
