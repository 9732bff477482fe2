"""Publisher keys where admins keep them: signing through a real ``ssh-agent`` (the key
passphrase-protected, never read by gitops), checked by ``git verify-commit``."""

from __future__ import annotations

import os
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.errors import GitopsError
from gitops.trust import commits, keys, ssh_agent, sshsig
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey, SignatureError
from testing.helpers import commit_all, git, git_out, gitops, init_repo, write_fleet
from testing.ssh import Agent, certify, running_agent, ssh_keygen

PASSPHRASE = "correct horse battery staple"
KINDS = {"ed25519": ["-t", "ed25519"], "rsa": ["-t", "rsa", "-b", "3072"], "ecdsa": ["-t", "ecdsa"]}


@pytest.fixture
def agent(tmp_path: Path) -> Iterator[Agent]:
    with running_agent(tmp_path / "agent") as running:
        yield running


def _protected_key(path: Path, kind: str = "ed25519") -> PublicKey:
    """A passphrase-protected key made by ssh-keygen; gitops never sees the passphrase."""
    ssh_keygen(*KINDS[kind], "-q", "-N", PASSPHRASE, "-C", "admin@laptop", "-f", path, check=True)
    return PublicKey.parse(path.with_name(path.name + ".pub").read_text())


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = init_repo(tmp_path / "repo")
    (path / "file").write_text("hello\n")
    commit_all(path, "first")
    return path


def _sign_commit(repo: Path, key: sshsig.SigningKey) -> str:
    repository = pygit2.Repository(str(repo))
    head = repository.head.peel(pygit2.Commit)
    who = commits.signature_of("Pub Lisher", "publisher@example.org", datetime.now(UTC))
    oid = commits.create_signed_commit(
        repository, tree=head.tree_id, parents=[head.id], message="via agent\n", author=who, key=key
    )
    repository.head.set_target(oid)
    return str(oid)


def _git_verify(repo: Path, oid: str, signers: Path) -> tuple[int, str]:
    config = f"gpg.ssh.allowedSignersFile={signers}"
    code = git("-c", config, "verify-commit", oid, cwd=repo, check=False).returncode
    return code, git_out("-c", config, "log", "-1", "--format=%G?", oid, cwd=repo)


@pytest.mark.parametrize("kind", sorted(KINDS))
def test_a_public_key_signs_through_the_agent_and_git_verifies(
    agent: Agent, repo: Path, tmp_path: Path, kind: str
) -> None:
    public = _protected_key(tmp_path / "publisher", kind)
    agent.add(tmp_path / "publisher", passphrase=PASSPHRASE)
    signer = keys.load_signer(tmp_path / "publisher.pub", environ=agent.env)
    assert isinstance(signer, ssh_agent.AgentKey)
    assert sshsig.public_key_of(signer) == public
    oid = _sign_commit(repo, signer)
    signers = tmp_path / "allowed"
    signers.write_text(f'publisher@example.org namespaces="git" {public.openssh()}\n')
    assert _git_verify(repo, oid, signers) == (0, "G")
    trust = AllowedSigners.load(signers)
    assert commits.verify_commit(pygit2.Repository(str(repo)), oid, trust).key == public
    raw = commits.read_raw(pygit2.Repository(str(repo)), oid)
    signature = commits.split_signature(raw).signature
    assert signature is not None
    expected = {"ed25519": "ssh-ed25519", "rsa": "rsa-sha2-512", "ecdsa": "ecdsa-sha2-nistp256"}
    assert sshsig.parse(signature).sig_type == expected[kind]  # never SHA-1 ssh-rsa


def test_a_passphrase_protected_private_key_signs_through_the_agent(
    agent: Agent, repo: Path, tmp_path: Path
) -> None:
    public = _protected_key(tmp_path / "publisher")
    (tmp_path / "publisher.pub").unlink()  # the public half is read from the private file
    agent.add(tmp_path / "publisher", passphrase=PASSPHRASE)
    signer = keys.load_signer(tmp_path / "publisher", environ=agent.env)
    assert sshsig.public_key_of(signer) == public
    signers = tmp_path / "allowed"
    signers.write_text(f"publisher@example.org {public.openssh()}\n")
    assert _git_verify(repo, _sign_commit(repo, signer), signers) == (0, "G")


def test_a_certificate_in_the_agent_signs_and_verifies_against_its_ca(
    agent: Agent, repo: Path, tmp_path: Path
) -> None:
    ssh_keygen("-t", "ed25519", "-q", "-N", "", "-f", tmp_path / "ca", check=True)
    _protected_key(tmp_path / "publisher")
    cert = certify(
        tmp_path / "ca",
        tmp_path / "publisher.pub",
        principals="publisher@example.org",
        validity="-1d:+30d",
    )
    agent.add(tmp_path / "publisher", passphrase=PASSPHRASE)  # adds the certificate too
    signer = keys.load_signer(cert, environ=agent.env)
    assert sshsig.public_key_of(signer).is_certificate
    oid = _sign_commit(repo, signer)
    signers = tmp_path / "allowed"
    ca_line = (tmp_path / "ca.pub").read_text().split()[:2]
    signers.write_text(f'*@example.org cert-authority,namespaces="git" {" ".join(ca_line)}\n')
    assert _git_verify(repo, oid, signers) == (0, "G")
    trust = AllowedSigners.load(signers)
    verified = commits.verify_commit(pygit2.Repository(str(repo)), oid, trust)
    assert verified.principal == "publisher@example.org"


def test_without_an_agent_the_error_says_how_to_start_one(tmp_path: Path) -> None:
    _protected_key(tmp_path / "publisher")
    for path, why in (
        (tmp_path / "publisher.pub", "is a public key"),
        (tmp_path / "publisher", "is passphrase-protected"),
    ):
        with pytest.raises(GitopsError, match=rf"{why}, so ssh-agent must sign.*SSH_AUTH_SOCK"):
            keys.load_signer(path, environ={})


def test_a_key_the_agent_does_not_hold_names_the_ssh_add_to_run(
    agent: Agent, tmp_path: Path
) -> None:
    _protected_key(tmp_path / "publisher")
    with pytest.raises(GitopsError, match=rf"does not hold .*'ssh-add {tmp_path}/publisher'"):
        keys.load_signer(tmp_path / "publisher.pub", environ=agent.env)


def test_a_dead_agent_socket_is_a_clear_error(tmp_path: Path) -> None:
    _protected_key(tmp_path / "publisher")
    environ = {"SSH_AUTH_SOCK": str(tmp_path / "gone.sock")}
    with pytest.raises(GitopsError, match=r"cannot talk to ssh-agent .*is it running"):
        keys.load_signer(tmp_path / "publisher.pub", environ=environ)


def test_a_key_removed_from_the_agent_before_signing_is_a_clear_error(
    agent: Agent, repo: Path, tmp_path: Path
) -> None:
    _protected_key(tmp_path / "publisher")
    agent.add(tmp_path / "publisher", passphrase=PASSPHRASE)
    signer = keys.load_signer(tmp_path / "publisher.pub", environ=agent.env)
    subprocess.run(["ssh-add", "-D"], env=agent.env, capture_output=True, check=True)
    with pytest.raises(GitopsError, match="would not sign"):
        _sign_commit(repo, signer)


def _serve_once(sock_path: Path, reply: bytes) -> threading.Thread:
    """A misbehaving agent: answers any request with ``reply``."""
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(sock_path))
    server.listen(1)

    def serve() -> None:
        with server:
            conn, _ = server.accept()
            with conn:
                (length,) = struct.unpack(">I", conn.recv(4))
                while length > 0:
                    length -= len(conn.recv(length))
                conn.sendall(struct.pack(">I", len(reply)) + reply)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_a_signature_from_the_agent_that_does_not_verify_is_refused(
    repo: Path, tmp_path: Path
) -> None:
    """An agent answering with another key's signature must not produce a commit that
    every host would refuse."""
    wanted = PublicKey.from_crypto(ed25519.Ed25519PrivateKey.generate().public_key())
    other = ed25519.Ed25519PrivateKey.generate()
    bogus = sshsig.ssh_string(b"ssh-ed25519") + sshsig.ssh_string(other.sign(b"x"))
    thread = _serve_once(tmp_path / "fake.sock", bytes([14]) + sshsig.ssh_string(bogus))
    signer = ssh_agent.AgentKey(wanted, tmp_path / "fake.sock")
    with pytest.raises(SignatureError, match="does not verify"):
        _sign_commit(repo, signer)
    thread.join(timeout=5)


# --- `gitops publish --key KEY.pub`: the CLI end to end ---------------------------------


def test_publish_signs_through_the_agent(agent: Agent, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    keys.write_keypair(tmp_path / "publisher", key, "publisher@example.org")
    ssh_keygen("-p", "-q", "-N", PASSPHRASE, "-f", tmp_path / "publisher", check=True)
    hosts = {"web-1": ["server"], "web-2": ["server"]}
    root = init_repo(tmp_path / "fleet")
    write_fleet(
        root,
        publisher=key,
        hosts=hosts,
        host_keys={h: ed25519.Ed25519PrivateKey.generate() for h in hosts},
        machines=tmp_path / "machines",
    )
    commit_all(root, "Initial fleet")

    no_agent = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    refused = gitops(
        "publish", "--repo", root, "--key", tmp_path / "publisher.pub", environ=no_agent
    )
    assert refused.returncode == 1
    (line,) = refused.stderr.splitlines()
    assert "SSH_AUTH_SOCK is not set" in line

    agent.add(tmp_path / "publisher", passphrase=PASSPHRASE)
    done = gitops("publish", "--repo", root, "--key", tmp_path / "publisher.pub", environ=agent.env)
    assert done.returncode == 0, done.stderr
    assert "published 2 deploy commits" in done.stdout
    signers = tmp_path / "publishers"
    listed = gitops("keys", "allowed-signers", "--repo", root, environ=agent.env)
    signers.write_text(listed.stdout)
    for host in hosts:
        head = git_out("rev-parse", f"deploy/{host}", cwd=root)
        assert _git_verify(root, head, signers) == (0, "G")
