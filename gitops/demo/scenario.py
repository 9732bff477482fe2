"""The demo's fleet on one machine, with real git, real signatures, real Nix.

:class:`DemoFleet` copies this repository's ``hosts/`` inventory into a throw-away fleet
whose systems are stand-ins (real Nix derivations shaped like NixOS, because nixpkgs is
not available offline; see gitops/demo/standin.py), with a plain bare repository as the
git server, keys for a publisher and every host, a publisher and one agent per host.
Tests build small fleets with it; ``gitops demo`` puts the gitops server in front of it
(gitops/demo/served.py) and walks through the story (gitops/demo/walkthrough.py).
"""

from __future__ import annotations

import dataclasses
import grp
import hashlib
import os
import pwd
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
import yaml

import gitops
from gitops import output
from gitops.agent import enrol
from gitops.agent.config import AgentConfig, HealthConfig, Mode
from gitops.agent.cycle import Cycle, CycleResult
from gitops.demo import standin
from gitops.errors import GitopsError
from gitops.fleet import enrolment
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.secrets import SECRETS_FILE
from gitops.fleet.source import DirSource
from gitops.protocol import deploy_ref, enroll_ref
from gitops.publish import build as central
from gitops.publish import plan as publish
from gitops.sitegen import build as site_build
from gitops.system import atomic, memfs, nix, process, transport
from gitops.trust import age, commits, keys
from gitops.trust.sshsig import PrivateKeyTypes

PUBLISHER = "publisher@example.org"
ADMIN = "alice@example.org"
CACHE_KEY_NAME = "demo-fleet-cache-1"


def default_inventory() -> Path:
    """This repository's hosts/ (a checkout), or the copy shipped in the package."""
    package = Path(gitops.__file__).parent
    for candidate in (package.parent, package / "_example"):
        if (candidate / "hosts").is_dir():
            return candidate
    raise GitopsError("no example inventory found; pass --fleet PATH (a repository with hosts/)")


@dataclass(frozen=True)
class InventoryHost:
    name: str
    profiles: tuple[str, ...]
    data: dict[str, Any]  # the original host.yaml, rewritten with a demo key


def read_inventory(fleet_root: Path) -> list[InventoryHost]:
    problems = Problems()
    fleet = load_fleet(DirSource(fleet_root), problems)
    hosts = []
    for name in sorted(fleet.hosts):
        raw = (fleet_root / "hosts" / name / "host.yaml").read_text(encoding="utf-8")
        data = yaml.safe_load(raw) or {}
        hosts.append(InventoryHost(name, fleet.hosts[name].profiles, data))
    if not hosts:
        raise GitopsError(f"{fleet_root}/hosts: no hosts to build a demo fleet from")
    return hosts


def _link(link: Path, target: str) -> None:
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(target)


def write_machine(root: Path, host: str, data: dict[str, Any]) -> None:
    """What the stand-in machine's disk says about it, for the agent's facts: systemd
    units, sshd_config, mounts and device-mapper entries, as a NixOS host has them.

    Most machines meet the example policies; a few do not, as in any real fleet: a kiosk
    without disk encryption (exempt in its host.yaml), a laptop whose owner turned SSH
    password logins back on, a workstation without automatic garbage collection.
    """
    tags = {str(t) for t in data.get("tags") or []}
    profiles = {str(p) for p in data.get("profiles") or []}
    encrypted = "kiosk" not in tags | profiles
    password_login = "laptop" in tags | profiles
    gc = "media" not in profiles
    units = root / "etc" / "systemd" / "system"
    units.mkdir(parents=True)
    wanted = {"firewall.service": "multi-user.target", "sshd.service": "multi-user.target"}
    if gc:
        wanted["nix-gc.timer"] = "timers.target"
    for unit, target in wanted.items():
        (units / unit).write_text(f"[Unit]\nDescription=stand-in {unit}\n")
        _link(units / f"{target}.wants" / unit, f"../{unit}")
    ssh = root / "etc" / "ssh"
    ssh.mkdir(parents=True)
    (ssh / "sshd_config").write_text(
        f"PasswordAuthentication {'yes' if password_login else 'no'}\n"
        "KbdInteractiveAuthentication no\nPermitRootLogin prohibit-password\nUsePAM yes\n"
    )
    (root / "etc" / "machine-id").write_text(hashlib.sha256(host.encode()).hexdigest()[:32] + "\n")
    (root / "etc" / "os-release").write_text(
        'NAME=NixOS\nID=nixos\nVERSION_ID="25.05"\nBUILD_ID="25.05.19700101.standin"\n'
    )
    proc = root / "proc"
    proc.mkdir()
    (proc / "uptime").write_text("86400.00 170000.00\n")
    device = "/dev/mapper/cryptroot" if encrypted else "/dev/mmcblk0p2"
    (proc / "mounts").write_text(
        f"{device} / ext4 rw,relatime 0 0\n{device} /nix ext4 rw,relatime 0 0\n"
    )
    dm = root / "sys" / "block" / "dm-0"
    (dm / "dm").mkdir(parents=True)
    (dm / "slaves").mkdir()
    if encrypted:
        (dm / "dm" / "uuid").write_text(
            f"CRYPT-LUKS2-{hashlib.md5(host.encode()).hexdigest()}-cryptroot\n"
        )
        (dm / "dm" / "name").write_text("cryptroot\n")
    else:
        (dm / "dm" / "uuid").write_text("LVM-standin\n")
        (dm / "dm" / "name").write_text("vg-data\n")
        (root / "sys" / "class" / "block" / "mmcblk0p2").mkdir(parents=True)


def git(*args: str | Path, cwd: Path) -> str:
    return process.run(["git", *args], check=True, cwd=cwd).stdout.strip()


class DemoFleet:
    """A fleet, a git server, keys and one agent per host, all under ``root``."""

    def __init__(
        self,
        root: Path,
        inventory: list[InventoryHost],
        *,
        say: Callable[[str], None] = output.say,
        policies: Path | None = None,
    ) -> None:
        self.root = root
        self.inventory = inventory
        self.policies = policies  # a policies/ directory to copy into the fleet
        self.say = say
        self.repo_dir = root / "fleet"  # the admins' clone
        self.server = root / "server.git"  # the git server
        self.machines = root / "machines"  # one fake machine root per host
        self.keys_dir = root / "keys"
        self.publisher_key_path = self.keys_dir / "publisher"
        self.admin_key_path = self.keys_dir / "admin"  # reads every secret, accepts enrolments
        self.secrets_home: Path | None = None  # a tmpfs directory, once a host has secrets
        self.host_keys: dict[str, PrivateKeyTypes] = {}
        self.publisher_key: PrivateKeyTypes | None = None
        # Central builds (use_central_builds): the cache, its signing key, the last build.
        self.cache = root / "cache"
        self.cache_key_path = self.keys_dir / "cache-signing.secret"
        self.cache_public_key: str | None = None
        self.last_build: central.Outcome | None = None

    def inventory_host(self, name: str) -> InventoryHost:
        return next(h for h in self.inventory if h.name == name)

    @property
    def hosts(self) -> list[str]:
        return [h.name for h in self.inventory]

    # -- set-up ----------------------------------------------------------------------

    def create(self) -> None:
        self.keys_dir.mkdir(parents=True)
        keys.new_keypair(self.publisher_key_path, PUBLISHER)
        self.publisher_key = keys.load_signing_key(self.publisher_key_path)
        for host in self.hosts:
            keys.new_keypair(self.keys_dir / host, f"root@{host}")
            self.host_keys[host] = keys.load_signing_key(self.keys_dir / host)
        (self.keys_dir / "publishers.allowed_signers").write_text(
            f'{PUBLISHER} namespaces="git" {keys.public_line(self.publisher_key).strip()}\n',
            encoding="utf-8",
        )
        self._write_fleet()
        git("init", "-q", "-b", "main", self.repo_dir, cwd=self.root)
        git("add", "-A", cwd=self.repo_dir)
        self.commit("Initial fleet")
        git("init", "-q", "--bare", "-b", "main", self.server, cwd=self.root)
        # Agents fetch commits first and verify before downloading (docs/operations.md).
        git("config", "uploadpack.allowFilter", "true", cwd=self.server)
        git("remote", "add", "origin", self.server, cwd=self.repo_dir)
        git("push", "-q", "origin", "main", cwd=self.repo_dir)

    def _write_fleet(self) -> None:
        assert self.publisher_key is not None
        root = self.repo_dir
        (root / "modules").mkdir(parents=True)
        (root / "profiles").mkdir()
        (root / "flake.nix").write_text(standin.flake(self.machines), encoding="utf-8")
        (root / "modules" / "default.nix").write_text(standin.MODULES, encoding="utf-8")
        fleet_yaml = {
            "name": "Demo fleet",
            "publishers": [
                {"principal": PUBLISHER, "key": keys.public_line(self.publisher_key).strip()}
            ],
            "agent": {"poll_interval": "5m", "report_interval": "1h"},
            "thresholds": {"stale_after": "3h"},
            "site": {"title": "Demo fleet"},
        }
        (root / "fleet.yaml").write_text(
            "# Fleet-wide settings (demo).\n" + yaml.safe_dump(fleet_yaml, sort_keys=False),
            encoding="utf-8",
        )
        if self.policies is not None and self.policies.is_dir():
            shutil.copytree(self.policies, root / "policies")
        for profile in sorted({p for h in self.inventory for p in h.profiles}):
            (root / "profiles" / f"{profile}.nix").write_text(
                standin.profile_file(profile), encoding="utf-8"
            )
        for host in self.inventory:
            directory = root / "hosts" / host.name
            directory.mkdir(parents=True)
            data = dict(host.data)
            data["key"] = keys.public_line(self.host_keys[host.name], f"root@{host.name}").strip()
            (directory / "host.yaml").write_text(
                yaml.safe_dump(data, sort_keys=False), encoding="utf-8"
            )
            (directory / "configuration.nix").write_text(
                standin.host_configuration(host.profiles), encoding="utf-8"
            )

    def admin_key(self) -> PrivateKeyTypes:
        """The admin's key (made on first use): signs merges, reads every secret."""
        if not self.admin_key_path.exists():
            keys.new_keypair(self.admin_key_path, ADMIN)
        return keys.load_signing_key(self.admin_key_path)

    def commit(self, message: str) -> str:
        git("add", "-A", cwd=self.repo_dir)
        git(
            "-c",
            "user.name=Alice Admin",
            "-c",
            "user.email=alice@example.org",
            "commit",
            "-q",
            "-m",
            message,
            cwd=self.repo_dir,
        )
        return git("rev-parse", "HEAD", cwd=self.repo_dir)

    def merge_change(self, files: dict[str, str], message: str) -> str:
        """Commit ``files`` on main as a merged pull request would land, and push."""
        for path, text in files.items():
            (self.repo_dir / path).write_text(text, encoding="utf-8")
        sha = self.commit(message)
        git("push", "-q", "origin", "main", cwd=self.repo_dir)
        return sha

    # -- the loop --------------------------------------------------------------------

    def repository(self) -> pygit2.Repository:
        return pygit2.Repository(str(self.repo_dir))

    def use_central_builds(self) -> str:
        """From now on every publish is ``gitops build`` (sign, copy to the ``file://``
        cache in the demo directory) then ``gitops publish --systems``, and every agent runs
        in substitute mode with that cache and its public key. Returns the public key."""
        secret, public = nix.generate_signing_key(CACHE_KEY_NAME)
        atomic.write_text(self.cache_key_path, secret + "\n", mode=0o600)
        self.cache_public_key = public
        return public

    @property
    def cache_url(self) -> str:
        return f"file://{self.cache}"

    def publish(self, systems: Path | None = None) -> publish.Published:
        """Publish main; with ``systems`` (``gitops build``'s file), pin each host's system.
        With central builds, build the changed hosts first; a host that fails to build is
        held back, as ``gitops publish --systems`` holds it back."""
        assert self.publisher_key is not None
        if systems is None:
            systems = self.build_systems()
        repo = self.repository()
        plan = publish.make_plan(repo, "main")
        built = central.read_systems(systems) if systems is not None else None
        pinned, missing = central.pins(repo, plan, built)
        plan = dataclasses.replace(
            plan, hosts=tuple(h for h in plan.hosts if h.host not in missing)
        )
        published = publish.write_commits(repo, plan, self.publisher_key, systems=pinned)
        if published.commits:
            refspecs = [f"{deploy_ref(h)}:{deploy_ref(h)}" for h in sorted(published.commits)]
            self.push_deploy(Path(repo.path), refspecs)
        return published

    def build_systems(self) -> Path | None:
        """With central builds on, ``gitops build`` the changed hosts into the demo's cache,
        as CI would, and return the systems file; None when hosts build for themselves."""
        if self.cache_public_key is None:
            return None
        systems = self.root / "systems.json"
        self.last_build = central.build(
            central.Request(
                repo=self.repo_dir,
                source="main",
                hosts=(),
                every_host=False,
                signing_key=self.cache_key_path,
                cache=self.cache_url,
                systems=systems,
            )
        )
        return systems

    def push_deploy(self, git_dir: Path, refspecs: list[str]) -> None:
        """The publisher's push of its new deploy commits (to the plain bare repository)."""
        result = transport.push(git_dir, str(self.server), refspecs, atomic=True)
        if not result.ok:
            raise GitopsError(f"demo push refused: {result.message}")

    def agent_config(self, host: str) -> AgentConfig:
        machine = self.machines / host
        if not (machine / "etc").exists():
            write_machine(machine, host, self.inventory_host(host).data)
        (machine / "run").mkdir(parents=True, exist_ok=True)
        config = AgentConfig(
            host=host,
            remote=str(self.server),
            trusted_publishers=self.keys_dir / "publishers.allowed_signers",
            signing_key=self.keys_dir / host,
            state_dir=machine / "var" / "lib" / "gitops-agent",
            system_profile=machine / "nix" / "var" / "nix" / "profiles" / "system",
            root=machine,
            # Never /run: each demo host's own directory on a tmpfs (see use_memory_for_secrets).
            secrets_dir=(self.secrets_home or machine / "run") / f"{host}-secrets",
            health=HealthConfig(
                failed_units=True,
                remote=True,
                commands=(
                    (
                        "/bin/sh",
                        "-c",
                        f'test ! -e "{machine}/run/unhealthy" || {{ echo "stand-in health endpoint says unhealthy" >&2; exit 1; }}',
                    ),
                ),
                grace=0,
            ),
        )
        return self.substitute_config(config)

    def substitute_config(self, config: AgentConfig) -> AgentConfig:
        """With central builds: fetch the pinned system from the demo's cache, never build."""
        if self.cache_public_key is None:
            return config
        return dataclasses.replace(
            config,
            mode=Mode.SUBSTITUTE,
            substituters=(self.cache_url,),
            trusted_public_keys=(self.cache_public_key,),
        )

    def run_agent(self, host: str) -> CycleResult:
        return Cycle(self.agent_config(host)).run()

    def run_agents(self, hosts: list[str] | None = None) -> dict[str, CycleResult]:
        return {host: self.run_agent(host) for host in hosts or self.hosts}

    # -- enrolment and secrets -----------------------------------------------------------

    def propose_host(self, name: str, profile: str) -> enrol.Proposed:
        """A new machine runs ``gitops enroll``: its own key and facts, a proposal signed
        with that key on ``enroll/<name>``, pushed to the forge."""
        machine = self.machines / name
        write_machine(machine, name, {"profiles": [profile]})
        key = self.keys_dir / name
        proposed = enrol.propose(
            str(self.server), name, key, profiles=[profile], owner="dana@example.org", root=machine
        )
        self.host_keys[name] = keys.load_signing_key(key)
        return proposed

    def review_enrolment(self, name: str) -> enrolment.Proposal:
        """The admin fetches the proposals (``gitops enroll list``)."""
        git("fetch", "-q", "origin", f"+{enroll_ref(name)}:{enroll_ref(name)}", cwd=self.repo_dir)
        return next(p for p in enrolment.pending(self.repository()) if p.host == name)

    def accept_enrolment(self, name: str) -> str:
        """``gitops enroll accept``: a merge commit signed by the admin, on main (not pushed)."""
        repo = self.repository()
        who = commits.signature_of("Alice Admin", ADMIN)
        _, merge, _ = enrolment.accept(repo, name, self.admin_key(), who)
        git("merge", "-q", "--ff-only", str(merge), cwd=self.repo_dir)
        return str(merge)

    def declare_secret(self, name: str, host: str, plaintext: bytes) -> str:
        """What ``gitops secrets edit`` leaves: ``secrets/secrets.yaml`` names the secret
        and its reader, ``secrets/<name>.age`` is encrypted to that host's key and the
        admin's (added to ``fleet.yaml`` ``admins``). Owned by whoever runs the demo (the
        agent chowns it, as root would)."""
        fleet_yaml = self.repo_dir / "fleet.yaml"
        settings = yaml.safe_load(fleet_yaml.read_text(encoding="utf-8"))
        admin = {"name": ADMIN, "key": keys.public_line(self.admin_key()).strip()}
        if admin not in settings.setdefault("admins", []):
            settings["admins"].append(admin)  # fleet.yaml is in no deploy tree: no host rebuilds
            text = "# Fleet-wide settings (demo).\n" + yaml.safe_dump(settings, sort_keys=False)
            fleet_yaml.write_text(text, encoding="utf-8")
        owner, group = pwd.getpwuid(os.getuid()).pw_name, grp.getgrgid(os.getgid()).gr_name
        declared = {name: {"hosts": [host], "owner": owner, "group": group, "mode": "0400"}}
        (self.repo_dir / SECRETS_FILE).parent.mkdir(exist_ok=True)
        (self.repo_dir / SECRETS_FILE).write_text(
            "# Who reads which secret (docs/secrets.md).\n" + yaml.safe_dump(declared),
            encoding="utf-8",
        )
        fleet = load_fleet(DirSource(self.repo_dir), Problems())
        secret = next(s for s in fleet.secrets if s.name == name)
        atomic.write_bytes(self.repo_dir / secret.path, age.encrypt(plaintext, secret.recipients))
        return secret.path

    def use_memory_for_secrets(self) -> Path:
        """Where the agents decrypt secrets from now on: the demo's directory if it is on a
        tmpfs, else a private directory on one ($XDG_RUNTIME_DIR or /dev/shm). The agent
        refuses a secrets directory on a disk; call :meth:`forget_secrets` after."""
        if self.secrets_home is None:
            if memfs.in_memory(self.root):
                self.secrets_home = self.root / "secrets"
                self.secrets_home.mkdir(mode=0o700)
            else:
                self.secrets_home = Path(
                    tempfile.mkdtemp(prefix="gitops-demo-secrets-", dir=memfs.memory_dir())
                )
        return self.secrets_home

    def forget_secrets(self) -> None:
        if self.secrets_home is not None:
            shutil.rmtree(self.secrets_home, ignore_errors=True)

    def plaintext_found(self, plaintext: bytes, host: str) -> tuple[list[str], int, int]:
        """Where ``plaintext`` occurs in git (every object of every repository of the demo)
        or in the Nix store (``host``'s system closure): the places, the git objects and
        the store paths searched."""
        found = []
        repos = [self.repo_dir / ".git", self.server, self.record, *self._more_repositories(host)]
        objects = 0
        for path in dict.fromkeys(repos):
            odb = pygit2.Repository(str(path)).odb
            for oid in odb:
                objects += 1
                if plaintext in odb.read(oid)[1]:
                    found.append(f"{path}: object {oid}")
        system = (self.machines / host / "run" / "current-system").resolve()
        closure = process.run(["nix-store", "-qR", str(system)], check=True).stdout.split()
        for store_path in closure:
            for file in [Path(store_path), *Path(store_path).rglob("*")]:
                if file.is_file() and not file.is_symlink() and plaintext in file.read_bytes():
                    found.append(str(file))
        return found, objects, len(closure)

    def _more_repositories(self, host: str) -> list[Path]:
        """The agent's mirror of its repository."""
        state = self.agent_config(host).state_dir
        return [p.parent for p in state.rglob("HEAD") if (p.parent / "objects").is_dir()]

    # -- attacks -----------------------------------------------------------------------

    def push_unsigned(self, host: str) -> str:
        """Someone with push access adds an unsigned commit to deploy/<host>."""
        attacker = self.root / "attacker"
        if not attacker.exists():
            git("clone", "-q", self.server, attacker, cwd=self.root)
        git(
            "fetch",
            "-q",
            "origin",
            f"+{deploy_ref(host)}:refs/remotes/origin/deploy/{host}",
            cwd=attacker,
        )
        base = f"refs/remotes/origin/deploy/{host}"
        tree = git("rev-parse", f"{base}^{{tree}}", cwd=attacker)
        sha = git(
            "-c",
            "user.name=Mallory",
            "-c",
            "user.email=mallory@example.org",
            "commit-tree",
            tree,
            "-p",
            base,
            "-m",
            f"deploy {host}: totally legit\n\nGitops-Host: {host}",
            cwd=attacker,
        )
        git("push", "-q", "origin", f"{sha}:{deploy_ref(host)}", cwd=attacker)
        return sha

    def push_rollback(self, host: str) -> str:
        """Someone force-pushes deploy/<host> back to its first, older, validly signed commit."""
        first = git("rev-list", "--max-parents=0", deploy_ref(host), cwd=self.server)
        git(
            "push",
            "-q",
            "--force",
            str(self.server),
            f"{first}:{deploy_ref(host)}",
            cwd=self.repo_dir,
        )
        return first

    # -- the site --------------------------------------------------------------------

    @property
    def record(self) -> Path:
        """The repository that holds every branch: what the site is built from."""
        return self.server

    def build_site(self, out: Path) -> None:
        stats = site_build.build(
            self.record, out, background_cleanup=True, progress=output.progress
        )
        output.progress(stats.summary())
        output.say(str((out / "index.html").absolute()))
