"""``gitops demo``: the whole loop on one machine, with real git, real signatures, real Nix.

It copies this repository's ``hosts/`` inventory into a throw-away fleet whose systems are
stand-ins (real Nix derivations shaped like NixOS, because nixpkgs is not available
offline; see gitops/standin.py), runs a bare repository as the git server, makes keys for
a publisher and every host, and then: publishes, runs every agent, changes one profile
and publishes again (only its hosts rebuild), breaks a build and a health check, pushes an
unsigned commit and a rolled-back head (both refused and reported), and builds the site.

The scenario is a library too: the end-to-end test drives :class:`DemoFleet` and checks
every step.
"""

from __future__ import annotations

import hashlib
import logging
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
from gitops.agent.config import AgentConfig, HealthConfig
from gitops.agent.cycle import Cycle, CycleResult
from gitops.demo import standin
from gitops.errors import GitopsError
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.protocol import deploy_ref
from gitops.publish import build as central
from gitops.publish import plan as publish
from gitops.sitegen import build as site_build
from gitops.sitegen.serve import serve_site
from gitops.system import process, transport
from gitops.trust import keys
from gitops.trust.sshsig import PrivateKeyTypes

PUBLISHER = "publisher@example.org"


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
        self.host_keys: dict[str, PrivateKeyTypes] = {}
        self.publisher_key: PrivateKeyTypes | None = None

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

    def publish(self, systems: Path | None = None) -> publish.Published:
        """Publish main; with ``systems`` (``gitops build``'s file), pin each host's system."""
        assert self.publisher_key is not None
        repo = self.repository()
        plan = publish.make_plan(repo, "main")
        built = central.read_systems(systems) if systems is not None else None
        pinned, missing = central.pins(repo, plan, built)
        if missing:
            raise GitopsError(f"demo: no system built for {', '.join(missing)}")
        published = publish.write_commits(repo, plan, self.publisher_key, systems=pinned)
        if published.commits:
            refspecs = [f"{deploy_ref(h)}:{deploy_ref(h)}" for h in sorted(published.commits)]
            result = transport.push(Path(repo.path), str(self.server), refspecs, atomic=True)
            if not result.ok:
                raise GitopsError(f"demo push refused: {result.message}")
        return published

    def agent_config(self, host: str) -> AgentConfig:
        machine = self.machines / host
        if not (machine / "etc").exists():
            write_machine(machine, host, self.inventory_host(host).data)
        (machine / "run").mkdir(parents=True, exist_ok=True)
        return AgentConfig(
            host=host,
            remote=str(self.server),
            trusted_publishers=self.keys_dir / "publishers.allowed_signers",
            signing_key=self.keys_dir / host,
            state_dir=machine / "var" / "lib" / "gitops-agent",
            system_profile=machine / "nix" / "var" / "nix" / "profiles" / "system",
            root=machine,
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

    def run_agent(self, host: str) -> CycleResult:
        return Cycle(self.agent_config(host)).run()

    def run_agents(self, hosts: list[str] | None = None) -> dict[str, CycleResult]:
        return {host: self.run_agent(host) for host in hosts or self.hosts}

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

    def build_site(self, out: Path) -> None:
        stats = site_build.build(
            self.server, out, background_cleanup=True, progress=output.progress
        )
        output.progress(stats.summary())
        output.say(str((out / "index.html").absolute()))


def _pick_profile(inventory: list[InventoryHost]) -> str:
    """The profile used by the fewest hosts (but at least two when possible)."""
    counts: dict[str, int] = {}
    for host in inventory:
        for profile in host.profiles:
            counts[profile] = counts.get(profile, 0) + 1
    if not counts:
        raise GitopsError("the inventory's hosts use no profiles")
    several = {p: n for p, n in counts.items() if n >= 2 and n < len(inventory)}
    pool = several or counts
    return min(sorted(pool), key=lambda p: pool[p])


def _summary(results: dict[str, CycleResult]) -> str:
    return "\n".join(f"    {host:<16} {r.result:<13} {r.reason}" for host, r in results.items())


@dataclass(frozen=True)
class DemoOutcome:
    """What each step of the scenario did (the end-to-end test checks all of it)."""

    first_publish: tuple[str, ...]
    first_run: dict[str, CycleResult]
    changed_profile: str
    profile_users: tuple[str, ...]
    second_publish: tuple[str, ...]
    second_run: dict[str, CycleResult]
    broken: str
    unhealthy: str
    failures: dict[str, CycleResult]
    unsigned_victim: str
    rollback_victim: str
    attacks: dict[str, CycleResult]
    site: Path


def play(demo: DemoFleet, say: Callable[[str], None] = output.say) -> DemoOutcome:
    """The scenario, step by step, telling ``say`` what happens."""
    inventory = demo.inventory
    if len(inventory) < 4:
        raise GitopsError("the demo needs at least 4 hosts in the inventory")
    say(
        f"1. Keys for a publisher and {len(inventory)} hosts; a fleet repository from hosts/; a bare git server"
    )
    demo.create()
    say(f"   fleet: {demo.repo_dir}\n   server: {demo.server}\n")

    say("2. Publish: one signed commit on deploy/<host> per host")
    first = demo.publish()
    say(f"   {len(first.commits)} deploy branches written and pushed\n")

    say("3. Every agent runs once: fetch its branch, verify, nix build, switch, report")
    first_run = demo.run_agents()
    say(_summary(first_run) + "\n")

    profile = _pick_profile(inventory)
    users = tuple(h.name for h in inventory if profile in h.profiles)
    say(
        f"4. A pull request changes profile '{profile}' (used by {', '.join(users)}): a package and a new kernel"
    )
    demo.merge_change(
        {
            f"profiles/{profile}.nix": standin.profile_file(
                profile, ["ripgrep"], {"kernel": '"6.12.9"'}
            )
        },
        f"Merge pull request #2 from alice/{profile}-ripgrep\n\n{profile}: add ripgrep, kernel 6.12",
    )
    plan = publish.make_plan(demo.repository(), "main")
    say(
        f"   plan: {len(plan.changed)} of {len(plan.hosts)} hosts change: {', '.join(h.host for h in plan.changed)}"
    )
    second = demo.publish()
    say(f"   published {len(second.commits)} commits; the other hosts' branches did not move")
    second_run = demo.run_agents()
    say(_summary(second_run) + "\n")

    # The rollback victim must have moved on (two deploy commits): one of the profile's users.
    by_name = {h.name: h for h in inventory}
    victim_rollback = users[-1]
    others = [h.name for h in inventory if h.name not in users] + [
        u for u in users if u != victim_rollback
    ]
    broken, unhealthy, victim_unsigned = by_name[others[0]], by_name[others[1]], others[2]
    say(
        f"5. A change that does not build for {broken.name}, and one that builds but is unhealthy on {unhealthy.name}"
    )
    demo.merge_change(
        {
            f"hosts/{broken.name}/configuration.nix": standin.host_configuration(
                broken.profiles, {"buildFails": "true"}
            ),
            f"hosts/{unhealthy.name}/configuration.nix": standin.host_configuration(
                unhealthy.profiles, {"unhealthy": "true"}
            ),
        },
        f"Merge pull request #3 from bob/tuning\n\n{broken.name}, {unhealthy.name}: tuning",
    )
    demo.publish()
    failures = demo.run_agents([broken.name, unhealthy.name])
    say(_summary(failures) + "\n")

    say(
        f"6. Attacks: an unsigned commit on deploy/{victim_unsigned}, and deploy/{victim_rollback} "
        "forced back to an older, validly signed commit"
    )
    demo.push_unsigned(victim_unsigned)
    demo.push_rollback(victim_rollback)
    attacks = demo.run_agents([victim_unsigned, victim_rollback])
    say(_summary(attacks) + "\n")

    site = demo.root / "site"
    say("7. The site, built from the git server alone (every report's signature checked)")
    demo.build_site(site)
    say(
        f"   check any report with git: git --git-dir {demo.server} log --show-signature reports/{inventory[0].name}"
    )
    return DemoOutcome(
        first_publish=tuple(sorted(first.commits)),
        first_run=first_run,
        changed_profile=profile,
        profile_users=users,
        second_publish=tuple(sorted(second.commits)),
        second_run=second_run,
        broken=broken.name,
        unhealthy=unhealthy.name,
        failures=failures,
        unsigned_victim=victim_unsigned,
        rollback_victim=victim_rollback,
        attacks=attacks,
        site=site,
    )


def run(directory: Path | None, *, fleet: Path | None, serve: bool, port: int) -> int:
    root = directory or Path(tempfile.mkdtemp(prefix="gitops-demo-"))
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise GitopsError(f"{directory}: not empty; choose a new directory for the demo")
    if shutil.which("nix") is None:
        raise GitopsError("nix is not installed; run the README's demo command, which installs it")
    source = fleet or default_inventory()
    inventory = read_inventory(source)
    say = output.say
    say("nixos-gitops demo: a whole fleet on this machine")
    say("  Real git, real SSH signatures, real Nix builds and profiles. The systems are stand-ins:")
    say("  nixpkgs is not available offline, so each host's system is a small real derivation")
    say("  shaped like a NixOS toplevel (bin/switch-to-configuration, kernel, nixos-version).")
    say(f"  Working directory: {root}\n")
    root.mkdir(parents=True, exist_ok=True)
    # The summary lines say what each agent did; its own warnings would repeat them.
    agent_log = logging.getLogger("gitops.agent")
    if not agent_log.isEnabledFor(logging.INFO):
        agent_log.setLevel(logging.ERROR)
    outcome = play(DemoFleet(root, inventory, policies=source / "policies"), say)
    if serve:
        serve_site(outcome.site, port)
    return 0
