"""Signing with a key that ssh-agent holds, as ``ssh-keygen -Y sign`` does for git.

With ``gpg.format=ssh`` and ``user.signingKey`` naming a public key, git's signer asks the
agent at ``SSH_AUTH_SOCK`` to sign; the private key may be passphrase-protected or on a
hardware token and never leaves the agent. This is the client side of the two requests
that needs (draft-miller-ssh-agent): list the keys, sign with one.

Written here rather than taken from a library: paramiko and asyncssh have agent clients,
but each brings a whole SSH stack for two small messages, and neither returns FIDO
signatures untouched. The replies are bounded (256 KiB, OpenSSH's own limit) and every
failure is one line that says how to fix it.
"""

from __future__ import annotations

import socket
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from gitops.errors import GitopsError
from gitops.trust.sshsig import CERT_SUFFIX, PublicKey, SignatureError, WireReader, ssh_string

SSH_AGENT_FAILURE: Final = 5
SSH_AGENTC_REQUEST_IDENTITIES: Final = 11
SSH_AGENT_IDENTITIES_ANSWER: Final = 12
SSH_AGENTC_SIGN_REQUEST: Final = 13
SSH_AGENT_SIGN_RESPONSE: Final = 14
SSH_AGENT_RSA_SHA2_512: Final = 0x04  # sign RSA with rsa-sha2-512, never SHA-1 ssh-rsa

MAX_REPLY: Final = 256 * 1024
LIST_TIMEOUT: Final = 10.0
# A hardware key waits for a touch (and maybe a PIN) before it answers.
SIGN_TIMEOUT: Final = 120.0

_U32 = struct.Struct(">I")


class AgentError(GitopsError):
    """ssh-agent is missing, unreachable, or would not sign."""


@dataclass(frozen=True)
class Identity:
    """A key the agent holds, with the comment ``ssh-add -l`` shows."""

    key: PublicKey
    comment: str


def socket_path(environ: Mapping[str, str], *, why: str) -> Path:
    """The agent's socket from ``SSH_AUTH_SOCK``; ``why`` says what needed it."""
    value = environ.get("SSH_AUTH_SOCK", "")
    if not value:
        raise AgentError(
            f"{why}, so ssh-agent must sign, but SSH_AUTH_SOCK is not set: start an agent "
            '(eval "$(ssh-agent)"), add the key (ssh-add PRIVATE_KEY) and run again'
        )
    return Path(value)


def _receive(conn: socket.socket, size: int) -> bytes:
    chunks: list[bytes] = []
    remaining = size
    while remaining:
        chunk = conn.recv(min(remaining, 65536))
        if not chunk:
            raise ConnectionError("the agent closed the connection")
        chunks.append(chunk)
        remaining -= len(chunk)
    return b"".join(chunks)


def _request(sock: Path, message: bytes, *, timeout: float) -> bytes:
    """One request, one reply (the reply's type byte and body)."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(timeout)
        try:
            conn.connect(str(sock))
            conn.sendall(_U32.pack(len(message)) + message)
            (length,) = _U32.unpack(_receive(conn, 4))
            if not 1 <= length <= MAX_REPLY:
                raise AgentError(
                    f"ssh-agent at {sock} sent a reply of {length} bytes; not an agent?"
                )
            return _receive(conn, length)
        except TimeoutError as err:
            raise AgentError(
                f"ssh-agent at {sock} did not answer within {timeout:.0f} s "
                "(a hardware key waiting for a touch?)"
            ) from err
        except OSError as err:
            raise AgentError(
                f"cannot talk to ssh-agent at {sock} ({err.strerror or err}); is it running, "
                "and is SSH_AUTH_SOCK its socket?"
            ) from err


def list_identities(sock: Path) -> list[Identity]:
    """The keys the agent holds; keys of types we cannot use are left out."""
    reply = _request(sock, bytes([SSH_AGENTC_REQUEST_IDENTITIES]), timeout=LIST_TIMEOUT)
    if reply[0] != SSH_AGENT_IDENTITIES_ANSWER:
        raise AgentError(f"ssh-agent at {sock} refused to list its keys")
    reader = WireReader(reply[1:])
    found: list[Identity] = []
    try:
        for _ in range(reader.uint32()):
            blob, comment = reader.string(), reader.string()
            try:
                key = PublicKey.from_blob(blob)
            except (ValueError, SignatureError):
                continue  # e.g. ssh-dss or an unknown type: not ours to sign with
            found.append(Identity(key, comment.decode("utf-8", "replace")))
    except SignatureError as err:
        raise AgentError(f"ssh-agent at {sock} sent a malformed key list") from err
    return found


def sign(sock: Path, key: PublicKey, data: bytes) -> bytes:
    """The agent's signature of ``data`` with ``key``: the SSH signature encoding."""
    plain_type = key.key_type.removesuffix(CERT_SUFFIX)
    flags = SSH_AGENT_RSA_SHA2_512 if plain_type == "ssh-rsa" else 0
    request = (
        bytes([SSH_AGENTC_SIGN_REQUEST])
        + ssh_string(key.blob)
        + ssh_string(data)
        + _U32.pack(flags)
    )
    reply = _request(sock, request, timeout=SIGN_TIMEOUT)
    if reply[0] == SSH_AGENT_FAILURE:
        raise AgentError(
            f"ssh-agent at {sock} would not sign with {key} (removed from the agent, "
            "a confirmation or touch declined, or the token unplugged?)"
        )
    if reply[0] != SSH_AGENT_SIGN_RESPONSE:
        raise AgentError(f"ssh-agent at {sock} answered a signing request with message {reply[0]}")
    reader = WireReader(reply[1:])
    try:
        signature = reader.string()
    except SignatureError as err:
        raise AgentError(f"ssh-agent at {sock} sent a malformed signature") from err
    if not reader.done():
        raise AgentError(f"ssh-agent at {sock} sent trailing data after the signature")
    return signature


@dataclass(frozen=True)
class AgentKey:
    """A key the agent holds: an :class:`~gitops.trust.sshsig.ExternalSigner`."""

    public: PublicKey
    socket: Path

    def sign_data(self, data: bytes) -> bytes:
        return sign(self.socket, self.public, data)


def agent_key(sock: Path, public: PublicKey, *, add_hint: str) -> AgentKey:
    """``public`` as held by the agent at ``sock``; an error naming the fix otherwise."""
    held = list_identities(sock)
    if any(identity.key.blob == public.blob for identity in held):
        return AgentKey(public, sock)
    raise AgentError(
        f"ssh-agent at {sock} does not hold {public} (it holds {len(held)} keys); "
        f"add it with {add_hint}"
    )
