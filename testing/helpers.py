"""Helpers shared by tests: keys on disk, git as an independent peer, small fleets."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path

import pygit2
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa

from gitops.agent.config import AgentConfig
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet, InventoryHost
from gitops.protocol import Report, reports_ref
from gitops.report_commits import read_report_commit, walk_reports
from gitops.trust import commits, keys
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PrivateKeyTypes, PublicKey

KEY_TYPES = ("ed25519", "rsa", "ecdsa-p256", "ecdsa-p384", "ecdsa-p521")


def make_key(kind: str) -> PrivateKeyTypes:
    match kind:
        case "ed25519":
            return ed25519.Ed25519PrivateKey.generate()
        case "rsa":
            return rsa.generate_private_key(public_exponent=65537, key_size=3072)
        case "ecdsa-p256":
            return ec.generate_private_key(ec.SECP256R1())
        case "ecdsa-p384":
            return ec.generate_private_key(ec.SECP384R1())
        case "ecdsa-p521":
            return ec.generate_private_key(ec.SECP521R1())
    raise ValueError(kind)


def write_key(path: Path, key: PrivateKeyTypes, comment: str = "test") -> PublicKey:
    return keys.write_keypair(path, key, comment)


def public_line(key: PrivateKeyTypes) -> str:
    return keys.public_line(key).strip()


def gitops(
    *args: str | Path,
    env: Mapping[str, str] | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    input: str | None = None,
    timeout: float | None = None,
) -> subprocess.CompletedProcess[str]:
    """``python -m gitops ...`` as a user runs it; the caller checks the exit code.

    ``env`` adds variables to the environment; ``environ`` replaces the whole environment
    (``os.environ`` by default), for tests that leave a variable out.
    """
    return subprocess.run(
        [sys.executable, "-m", "gitops", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        cwd=cwd,
        input=input,
        timeout=timeout,
        env={**(os.environ if environ is None else environ), **(env or {})},
    )


def git(
    *args: str | Path, cwd: Path, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        check=check,
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
    )


def git_out(*args: str | Path, cwd: Path) -> str:
    return git(*args, cwd=cwd).stdout.strip()


def init_repo(path: Path) -> Path:
    git("init", "-q", "-b", "main", path, cwd=path.parent)
    return path


def commit_all(repo: Path, message: str) -> str:
    git("add", "-A", cwd=repo)
    git("commit", "-q", "--allow-empty", "-m", message, cwd=repo)
    return git_out("rev-parse", "HEAD", cwd=repo)


def write_fleet(
    root: Path,
    *,
    publisher: PrivateKeyTypes,
    hosts: dict[str, list[str]],
    host_keys: dict[str, PrivateKeyTypes],
    machines: Path,
    extra_fleet: dict[str, object] | None = None,
) -> None:
    """A stand-in fleet repository (see gitops/demo/standin.py) in the work tree ``root``."""
    (root / "modules").mkdir(parents=True, exist_ok=True)
    (root / "profiles").mkdir(exist_ok=True)
    (root / "flake.nix").write_text(standin.flake(machines))
    (root / "modules" / "default.nix").write_text(standin.MODULES)
    fleet: dict[str, object] = {
        "name": "test fleet",
        "publishers": [{"principal": "publisher@example.org", "key": public_line(publisher)}],
    }
    fleet.update(extra_fleet or {})
    (root / "fleet.yaml").write_text(yaml.safe_dump(fleet, sort_keys=False))
    for profile in sorted({p for ps in hosts.values() for p in ps}):
        (root / "profiles" / f"{profile}.nix").write_text(standin.profile_file(profile))
    for name, profiles in hosts.items():
        directory = root / "hosts" / name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "host.yaml").write_text(
            yaml.safe_dump(
                {"profiles": profiles, "key": public_line(host_keys[name])}, sort_keys=False
            )
        )
        (directory / "configuration.nix").write_text(standin.host_configuration(profiles))


def fleet_repo(
    root: Path,
    hosts: dict[str, list[str]],
    *,
    publisher_key: Path,
    machines: Path,
    extra_fleet: dict[str, object] | None = None,
) -> tuple[PrivateKeyTypes, dict[str, PrivateKeyTypes]]:
    """A new git repository ``root`` holding a stand-in fleet (not committed), with a fresh
    publisher key written to ``publisher_key`` (and ``.pub``) and fresh host keys.

    Returns (the publisher key, the host keys)."""
    init_repo(root)
    publisher = ed25519.Ed25519PrivateKey.generate()
    keys.write_keypair(publisher_key, publisher, "publisher@example.org")
    host_keys: dict[str, PrivateKeyTypes] = {h: ed25519.Ed25519PrivateKey.generate() for h in hosts}
    write_fleet(
        root,
        publisher=publisher,
        hosts=hosts,
        host_keys=host_keys,
        machines=machines,
        extra_fleet=extra_fleet,
    )
    return publisher, host_keys


def push_to_bare(root: Path, server: Path) -> Path:
    """A new bare repository ``server``, added as ``origin`` of ``root``, with main pushed."""
    git("init", "-q", "--bare", "-b", "main", server, cwd=server.parent)
    git("remote", "add", "origin", server, cwd=root)
    git("push", "-q", "origin", "main", cwd=root)
    return server


def published_demo(root: Path, hosts: dict[str, list[str]]) -> DemoFleet:
    """A DemoFleet (bare git server, keys, stand-in systems) with every host published."""
    inventory = [InventoryHost(name, tuple(p), {"profiles": p}) for name, p in hosts.items()]
    fleet = DemoFleet(root, inventory, say=lambda _: None)
    fleet.root.mkdir()
    fleet.create()
    fleet.publish()
    return fleet


def agent_settings(config: AgentConfig) -> dict[str, object]:
    """The top-level keys of an agent configuration file that ``config`` was read from
    (``health`` and the optional keys left to the caller)."""
    return {
        "host": config.host,
        "remote": config.remote,
        "trusted_publishers": str(config.trusted_publishers),
        "signing_key": str(config.signing_key),
        "state_dir": str(config.state_dir),
        "system_profile": str(config.system_profile),
        "root": str(config.root),
    }


def agent_config_file(demo: DemoFleet, host: str, **settings: object) -> Path:
    """The host's agent configuration as a file for ``gitops agent --config``: no grace
    period, its first health command; ``settings`` replace top-level keys."""
    config = demo.agent_config(host)
    data: dict[str, object] = {
        **agent_settings(config),
        "health": {"grace": 0, "commands": [list(config.health.commands[0])]},
        **settings,
    }
    path = demo.root / f"{host}.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def remote_reports(demo: DemoFleet, host: str) -> list[Report]:
    """The host's reports on the demo's server, oldest first, each signature-checked."""
    repo = pygit2.Repository(str(demo.server))
    head = commits.ref_target(repo, reports_ref(host))
    if head is None:
        return []
    trust = AllowedSigners.parse(f"{host} {public_line(demo.host_keys[host])}\n")
    found = []
    for oid in walk_reports(repo, head):
        commits.verify_commit(repo, oid, trust)
        status = read_report_commit(repo, oid).status
        assert status is not None
        found.append(Report.from_json(status))
    return list(reversed(found))


def current_system(demo: DemoFleet, host: str) -> Path | None:
    """What the stand-in machine runs: its run/current-system link."""
    link = demo.machines / host / "run" / "current-system"
    return link.resolve() if link.is_symlink() else None
