"""B7: what secrets cost. Encrypting one secret to N host keys plus an admin (pyrage,
in-process) vs Debian's ``age`` CLI; checking a file's recipients from its header (what
``gitops check`` and ``publish`` do per secret) vs decrypting it; loading a fleet of H
hosts with S secrets vs the same fleet without; the agent's install of K secrets into a
tmpfs. Asserts only that the work was right.

    .venv/bin/python bench/age_secrets.py --hosts 100 --secrets 20 --readers 10
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import pygit2
import pyrage
import yaml

from gitops.agent import secrets as agent_secrets
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.protocol import SecretFile, secrets_manifest
from gitops.system import memfs
from gitops.trust import age, keys


def timed(work: Callable[[], object], repeat: int) -> float:
    """Median seconds of ``repeat`` runs."""
    runs = []
    for _ in range(repeat):
        start = time.perf_counter()
        work()
        runs.append(time.perf_counter() - start)
    return statistics.median(runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--secrets", type=int, default=20)
    parser.add_argument("--readers", type=int, default=10, help="hosts per secret")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-secrets-"))
    try:
        run(root, args)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run(root: Path, args: argparse.Namespace) -> None:
    admin = pyrage.x25519.Identity.generate()
    host_keys = []
    for index in range(args.hosts):
        path = root / "keys" / f"h{index}"
        host_keys.append((path, keys.new_keypair(path, f"root@h{index}")))
    recipients = [age.parse_recipient(pub.openssh()) for _, pub in host_keys[: args.readers]]
    recipients.append(age.parse_recipient(str(admin.to_public())))
    plaintext = b"x" * 64

    ours = timed(lambda: age.encrypt(plaintext, recipients), args.repeat)
    argv = ["age", "-e", *(a for r in recipients for a in ("-r", r.text))]
    cli = timed(
        lambda: subprocess.run(argv, input=plaintext, capture_output=True, check=True), args.repeat
    )
    print(
        f"encrypt to {len(recipients)} recipients: pyrage {ours * 1e3:.2f} ms, age CLI {cli * 1e3:.2f} ms ({cli / ours:.1f}x)"
    )

    data = age.encrypt(plaintext, recipients)
    assert age.header_problem(data, recipients, "f") is None
    header = timed(lambda: age.header_problem(data, recipients, "f"), args.repeat * 20)
    identity = age.load_identity(host_keys[args.readers - 1][0])
    opened = timed(lambda: age.decrypt(data, identity, "f"), args.repeat)
    print(
        f"recipients of one file: header {header * 1e6:.0f} us, decrypt (last stanza) {opened * 1e3:.2f} ms"
    )

    fleet = root / "fleet"
    (fleet / "hosts").mkdir(parents=True)
    (fleet / "fleet.yaml").write_text(yaml.safe_dump({
        "publishers": [{"principal": "p@example.org", "key": host_keys[0][1].openssh()}],
        "admins": [{"name": "a@example.org", "key": str(admin.to_public())}],
    }))  # fmt: skip
    for index, (_, pub) in enumerate(host_keys):
        (fleet / "hosts" / f"h{index}").mkdir()
        (fleet / "hosts" / f"h{index}" / "host.yaml").write_text(f"key: {pub.openssh()}\n")
    without = timed(lambda: load_fleet(DirSource(fleet), Problems()), args.repeat)
    (fleet / "secrets").mkdir()
    declared = {
        f"s{i}": {"hosts": [f"h{(i + j) % args.hosts}" for j in range(args.readers)]}
        for i in range(args.secrets)
    }
    (fleet / "secrets" / "secrets.yaml").write_text(yaml.safe_dump(declared))
    problems = Problems()
    for secret in load_fleet(DirSource(fleet), problems).secrets:
        (fleet / secret.path).write_bytes(age.encrypt(plaintext, secret.recipients))
    problems = Problems()
    load_fleet(DirSource(fleet), problems)
    assert not problems, problems.lines()
    with_secrets = timed(lambda: load_fleet(DirSource(fleet), Problems()), args.repeat)
    print(
        f"load_fleet, {args.hosts} hosts: {without * 1e3:.1f} ms; with {args.secrets} secrets checked: {with_secrets * 1e3:.1f} ms (+{(with_secrets - without) * 1e3:.1f} ms)"
    )

    repo = pygit2.init_repository(str(root / "deploy.git"), bare=True)
    files = [SecretFile(f"s{i}", mode=0o400) for i in range(args.secrets)]
    inner = repo.TreeBuilder()
    inner.insert(
        "secrets.json",
        repo.create_blob(secrets_manifest(files).encode()),
        pygit2.enums.FileMode.BLOB,
    )
    for file in files:
        inner.insert(
            f"{file.name}.age",
            repo.create_blob(age.encrypt(plaintext, recipients)),
            pygit2.enums.FileMode.BLOB,
        )
    outer = repo.TreeBuilder()
    outer.insert("secrets", inner.write(), pygit2.enums.FileMode.TREE)
    who = pygit2.Signature("b", "b@example.org")
    commit = repo.create_commit(None, who, who, "b", outer.write(), [])
    target = Path(tempfile.mkdtemp(prefix="bench-", dir=memfs.memory_dir()))
    try:
        key = host_keys[0][0]
        install = timed(lambda: agent_secrets.install(repo, commit, target / "s", key), args.repeat)
        assert (target / "s" / "s0").read_bytes() == plaintext
    finally:
        shutil.rmtree(target, ignore_errors=True)
    print(
        f"agent install of {args.secrets} secrets (decrypt, write, swap, retire): {install * 1e3:.1f} ms"
    )


if __name__ == "__main__":
    main()
