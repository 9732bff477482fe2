"""OpenSSH as an independent peer: ssh-keygen, certificates, a real ssh-agent, and FIDO
(security key) signatures made without hardware, byte for byte as PROTOCOL.u2f says."""

from __future__ import annotations

import hashlib
import os
import signal
import stat
import struct
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from gitops.trust import sshsig
from gitops.trust.sshsig import PublicKey, ssh_string


def ssh_keygen(
    *args: str | Path, input: bytes | None = None, check: bool = False
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        ["ssh-keygen", *map(str, args)], input=input, capture_output=True, check=check
    )


def keygen_verify(
    allowed: Path, signature: Path, message: bytes, *, principal: str, namespace: str = "git"
) -> subprocess.CompletedProcess[bytes]:
    """``ssh-keygen -Y verify``: OpenSSH's own verdict on a signature."""
    return ssh_keygen(
        "-Y",
        "verify",
        "-f",
        allowed,
        "-I",
        principal,
        "-n",
        namespace,
        "-s",
        signature,
        input=message,
    )


def certify(
    ca: Path,
    public: Path,
    *,
    principals: str,
    validity: str,
    identity: str = "publisher",
    host: bool = False,
) -> Path:
    """Sign ``public`` (a ``.pub``) with the CA key ``ca``; returns the ``-cert.pub``."""
    extra = ["-h"] if host else []
    ssh_keygen(
        "-q", "-s", ca, "-I", identity, "-n", principals, "-V", validity, *extra, public, check=True
    )
    return public.with_name(public.name.removesuffix(".pub") + "-cert.pub")


# --- FIDO keys, without a token --------------------------------------------------------


SkPrivate = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey


def sk_public_key(key: SkPrivate, application: bytes = b"ssh:") -> PublicKey:
    """The ``sk-*`` public key a token holding ``key`` would report."""
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        blob = ssh_string(sshsig.SK_ED25519.encode()) + ssh_string(raw) + ssh_string(application)
    else:
        point = key.public_key().public_bytes(Encoding.X962, PublicFormat.UncompressedPoint)
        blob = (
            ssh_string(sshsig.SK_ECDSA.encode())
            + ssh_string(b"nistp256")
            + ssh_string(point)
            + ssh_string(application)
        )
    return PublicKey.from_blob(blob)


def _mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return ssh_string(b"\0" + raw if raw[0] & 0x80 else raw)


@dataclass(frozen=True)
class SkSignature:
    """What a token would return, before it is wrapped into SSHSIG."""

    flags: int = sshsig.SK_USER_PRESENT
    counter: int = 7
    application: bytes = b"ssh:"  # what the token hashes (a lying token could differ)


def sk_sign(
    message: bytes,
    key: SkPrivate,
    *,
    public: PublicKey | None = None,
    token: SkSignature = SkSignature(),
    namespace: str = "git",
) -> str:
    """An armored SSHSIG by a FIDO key, as ``ssh-keygen -Y sign`` with a token makes."""
    public = public or sk_public_key(key)
    digest = hashlib.sha512(message).digest()
    data = (
        b"SSHSIG"
        + ssh_string(namespace.encode())
        + ssh_string(b"")
        + ssh_string(b"sha512")
        + ssh_string(digest)
    )
    signed = (
        hashlib.sha256(token.application).digest()
        + bytes([token.flags])
        + struct.pack(">I", token.counter)
        + hashlib.sha256(data).digest()
    )
    if isinstance(key, ed25519.Ed25519PrivateKey):
        raw = ssh_string(key.sign(signed))
    else:
        r, s = decode_dss_signature(key.sign(signed, ec.ECDSA(hashes.SHA256())))
        raw = ssh_string(_mpint(r) + _mpint(s))
    signature = (
        ssh_string(public.key_type.encode())
        + raw
        + bytes([token.flags])
        + struct.pack(">I", token.counter)
    )
    blob = (
        b"SSHSIG"
        + struct.pack(">I", 1)
        + ssh_string(public.blob)
        + ssh_string(namespace.encode())
        + ssh_string(b"")
        + ssh_string(b"sha512")
        + ssh_string(signature)
    )
    return sshsig.armor(blob)


# --- a real ssh-agent ---------------------------------------------------------------


@dataclass(frozen=True)
class Agent:
    socket: Path
    pid: int
    workdir: Path

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, "SSH_AUTH_SOCK": str(self.socket)}

    def add(self, key: Path, *, passphrase: str | None = None) -> None:
        """``ssh-add KEY``, answering the passphrase prompt through SSH_ASKPASS."""
        env = {**self.env, "DISPLAY": ""}
        if passphrase is not None:
            askpass = self.workdir / "askpass"
            askpass.write_text(f"#!/bin/sh\nprintf '%s\\n' '{passphrase}'\n")
            askpass.chmod(stat.S_IRWXU)
            env.update(SSH_ASKPASS=str(askpass), SSH_ASKPASS_REQUIRE="force")
        subprocess.run(
            ["ssh-add", str(key)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            check=True,
        )

    def listed(self) -> str:
        result = subprocess.run(
            ["ssh-add", "-L"], env=self.env, capture_output=True, text=True, check=False
        )
        return result.stdout


@contextmanager
def running_agent(workdir: Path) -> Iterator[Agent]:
    """A real ``ssh-agent -D -a SOCKET`` for the duration of the block."""
    workdir.mkdir(parents=True, exist_ok=True)
    sock = workdir / "agent.sock"
    process = subprocess.Popen(
        ["ssh-agent", "-D", "-a", str(sock)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while not sock.exists():
            if process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("ssh-agent did not start")
            time.sleep(0.01)
        yield Agent(sock, process.pid, workdir)
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=10)
