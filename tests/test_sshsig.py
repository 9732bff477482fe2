"""SSHSIG against OpenSSH's own ssh-keygen, both ways, and its strictness."""

from __future__ import annotations

import base64
import struct
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gitops.trust import sshsig
from gitops.trust.sshsig import PublicKey, SignatureError
from testing.helpers import KEY_TYPES, make_key, public_line, write_key
from testing.ssh import SkPrivate, SkSignature, keygen_verify, sk_public_key, sk_sign

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


# --- FIDO security keys (sk-*): signatures made as a token would, checked by OpenSSH ---

SK_KINDS = ("sk-ed25519", "sk-ecdsa")


def _sk_key(kind: str) -> SkPrivate:
    if kind == "sk-ed25519":
        return ed25519.Ed25519PrivateKey.generate()
    return ec.generate_private_key(ec.SECP256R1())


def _signature_field(armored: str) -> bytes:
    blob = sshsig.dearmor(armored)
    pos = 10
    for _ in range(4):
        (length,) = struct.unpack_from(">I", blob, pos)
        pos += 4 + length
    (length,) = struct.unpack_from(">I", blob, pos)
    return blob[pos + 4 : pos + 4 + length]


def _openssh_verdict(tmp_path: Path, public: PublicKey, armored: str, message: bytes) -> bool:
    (tmp_path / "allowed").write_text(f"signer@example.org {public.openssh()}\n")
    (tmp_path / "m.sig").write_text(armored)
    result = keygen_verify(
        tmp_path / "allowed", tmp_path / "m.sig", message, principal="signer@example.org"
    )
    return result.returncode == 0 and result.stdout.startswith(b"Good")


def _our_verdict(armored: str, message: bytes) -> bool:
    try:
        sshsig.verify(message, armored)
    except SignatureError:
        return False
    return True


@pytest.mark.parametrize("kind", SK_KINDS)
def test_security_key_signatures_verify_here_and_in_ssh_keygen(tmp_path: Path, kind: str) -> None:
    key = _sk_key(kind)
    public = sk_public_key(key)
    armored = sk_sign(MESSAGE, key, token=SkSignature(flags=0x05, counter=42))
    assert _openssh_verdict(tmp_path, public, armored, MESSAGE)
    parsed = sshsig.verify(MESSAGE, armored)
    assert parsed.public_key == public
    assert (parsed.sk_flags, parsed.sk_counter) == (0x05, 42)
    assert public.application == b"ssh:"
    assert PublicKey.parse(public.openssh()) == public  # as read from allowed-signers


def _tampered(kind: str, how: str) -> tuple[PublicKey, str, bytes]:
    """A security key signature spoiled one way; returns (key, armor, message)."""
    key = _sk_key(kind)
    public = sk_public_key(key)
    armored = sk_sign(MESSAGE, key)
    field = _signature_field(armored)
    match how:
        case "message":
            return public, armored, MESSAGE + b"!"
        case "flags":  # the touch flag claimed after the token signed without it
            armored = sk_sign(MESSAGE, key, token=SkSignature(flags=0))
            field = _signature_field(armored)
            return public, _reblob(armored, signature=field[:-5] + b"\x01" + field[-4:]), MESSAGE
        case "counter":
            return public, _reblob(armored, signature=field[:-4] + b"\0\0\0\x08"), MESSAGE
        case "application":  # the token signed for another application (a web site)
            other = sk_sign(MESSAGE, key, token=SkSignature(application=b"https://x.example"))
            return public, other, MESSAGE
        case "key-application":  # the key claims another application than the token's
            public = sk_public_key(key, b"ssh:other")
            return public, sk_sign(MESSAGE, key, public=public), MESSAGE
        case "trailing":
            return public, _reblob(armored, signature=field + b"\0"), MESSAGE
        case "truncated":
            return public, _reblob(armored, signature=field[:-2]), MESSAGE
    raise ValueError(how)


@pytest.mark.parametrize("kind", SK_KINDS)
@pytest.mark.parametrize(
    "how",
    ["message", "flags", "counter", "application", "key-application", "trailing", "truncated"],
)
def test_tampered_security_key_signatures_are_refused_like_ssh_keygen(
    tmp_path: Path, kind: str, how: str
) -> None:
    public, armored, message = _tampered(kind, how)
    assert not _openssh_verdict(tmp_path, public, armored, message)
    assert not _our_verdict(armored, message)


def test_a_plain_ed25519_signature_by_a_security_key_is_refused(tmp_path: Path) -> None:
    """The signature type must be the key's: an sk key never makes ssh-ed25519 ones."""
    key = ed25519.Ed25519PrivateKey.generate()
    public = sk_public_key(key)
    plain = sshsig.sign(MESSAGE, key)
    field = _signature_field(plain)
    armored = _reblob(plain, publickey=public.blob, signature=field)
    assert not _openssh_verdict(tmp_path, public, armored, MESSAGE)
    with pytest.raises(SignatureError, match="changed"):
        sshsig.verify(MESSAGE, armored)


def test_unknown_key_types_are_a_clear_error() -> None:
    blob = struct.pack(">I", 7) + b"ssh-foo" + struct.pack(">I", 1) + b"x"
    with pytest.raises(ValueError, match="unsupported or invalid key"):
        PublicKey.parse("ssh-foo " + base64.b64encode(blob).decode())
