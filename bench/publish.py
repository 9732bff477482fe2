"""B2: ``gitops publish`` on generated fleets of 100 and 1,000 hosts.

    .venv/bin/python bench/publish.py [--hosts 100 1000] [--cli-hosts 1000]

For each size, a fleet repository is generated and committed with git: fleet.yaml with a
publisher key, ``hosts/<host>/`` (host.yaml with the host's own real Ed25519 key,
configuration.nix, hardware-configuration.nix), role profiles, shared modules and a
flake.nix. Every tenth host uses the ``kiosk`` profile (10% of the fleet). Then, with the
library functions ``gitops publish`` runs (gitops.publish.plan.make_plan + write_commits):

1. the first publish: every host gets its first signed deploy commit;
2. a plan with nothing changed;
3. a pull request changes profiles/kiosk.nix; plan and publish again: exactly the kiosk
   hosts get a new commit (the script fails otherwise).

The plain-tool comparison: writing the same signed commits (same trees, same parents) with
``git commit-tree -S`` (gpg.format=ssh: one ssh-keygen per commit), as a shell script
around git would.

Then, once, for ``--cli-hosts`` (1,000 by default): the real CLI end to end,
``python -m gitops publish --push`` into a bare repository, for the first publish and for
the kiosk change (fetching deploy/*, verifying the remote heads, planning, signing,
an atomic push).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import machine as bench_machine
import pygit2
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.publish import plan as publish
from gitops.trust import keys

PUBLISHER = "ci@example.org"
CHANGED_PROFILE = "kiosk"
ROLES = ("workstation", "server", "developer")
MODULES = ("default", "security-baseline", "backup", "vpn", "branding")
BASE_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_AUTHOR_NAME": "Alice Admin",
    "GIT_AUTHOR_EMAIL": "alice@example.org",
    "GIT_COMMITTER_NAME": "Alice Admin",
    "GIT_COMMITTER_EMAIL": "alice@example.org",
}


def machine() -> str:
    return bench_machine.describe()


def git(cwd: Path, *args: str | Path) -> str:
    return subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **BASE_ENV},
    ).stdout.strip()


@dataclass(frozen=True)
class Fleet:
    root: Path
    hosts: list[str]
    kiosk_hosts: list[str]
    publisher_key: Path


def profile_text(name: str, packages: list[str]) -> str:
    items = " ".join(f'"{p}"' for p in packages)
    return f"# Profile {name}.\n{{ config, pkgs, ... }}:\n{{\n  environment.systemPackages = [ {items} ];\n}}\n"


def generate_fleet(root: Path, count: int) -> Fleet:
    """A fleet repository with ``count`` hosts, committed on main."""
    root.mkdir(parents=True)
    publisher = ed25519.Ed25519PrivateKey.generate()
    keys.write_keypair(root.parent / f"{root.name}-publisher", publisher, PUBLISHER)
    fleet_yaml = {
        "name": f"Bench fleet ({count} hosts)",
        "publishers": [{"principal": PUBLISHER, "key": keys.public_line(publisher).strip()}],
        "agent": {"poll_interval": "5m", "report_interval": "1h"},
    }
    (root / "fleet.yaml").write_text(yaml.safe_dump(fleet_yaml, sort_keys=False), "utf-8")
    (root / "flake.nix").write_text(
        '{\n  description = "bench fleet";\n  outputs = { self }: { };\n}\n', "utf-8"
    )
    (root / "modules").mkdir()
    for module in MODULES:
        (root / "modules" / f"{module}.nix").write_text(
            f"# Module {module}.\n{{ ... }}:\n{{\n  # settings for {module}\n}}\n", "utf-8"
        )
    (root / "profiles").mkdir()
    for role in (*ROLES, CHANGED_PROFILE):
        (root / "profiles" / f"{role}.nix").write_text(
            profile_text(role, [f"{role}-tools", "htop"]), "utf-8"
        )
    width = max(4, len(str(count)))
    hosts, kiosks = [], []
    for index in range(count):
        name = f"host-{index:0{width}d}"
        hosts.append(name)
        if index % 10 == 0:
            profiles = [CHANGED_PROFILE]
            kiosks.append(name)
        else:
            profiles = [ROLES[index % len(ROLES)]]
            if index % 3 == 1:
                profiles.append("developer")
        directory = root / "hosts" / name
        directory.mkdir(parents=True)
        host_key = ed25519.Ed25519PrivateKey.generate()
        host_yaml = {
            "key": keys.public_line(host_key, f"root@{name}").strip(),
            "profiles": sorted(set(profiles)),
            "owner": f"user{index}@example.org",
            "tags": ["bench", f"site-{index % 7}"],
            "description": f"bench host {index}",
        }
        (directory / "host.yaml").write_text(yaml.safe_dump(host_yaml, sort_keys=False), "utf-8")
        (directory / "configuration.nix").write_text(
            f"{{ ... }}:\n{{\n  imports = [ ./hardware-configuration.nix ];\n"
            f'  networking.hostName = "{name}";\n}}\n',
            "utf-8",
        )
        (directory / "hardware-configuration.nix").write_text(
            f'{{ ... }}:\n{{\n  fileSystems."/".device = "/dev/disk/by-uuid/{index:08x}";\n}}\n',
            "utf-8",
        )
    git(root, "init", "-q", "-b", "main")
    git(root, "add", "-A")
    git(root, "commit", "-q", "-m", f"Initial fleet of {count} hosts")
    return Fleet(root, hosts, kiosks, root.parent / f"{root.name}-publisher")


def change_profile(fleet: Fleet) -> None:
    path = fleet.root / "profiles" / f"{CHANGED_PROFILE}.nix"
    path.write_text(profile_text(CHANGED_PROFILE, [f"{CHANGED_PROFILE}-tools", "htop", "firefox"]))
    git(
        fleet.root,
        "commit",
        "-q",
        "-am",
        f"Merge pull request #2\n\n{CHANGED_PROFILE}: add firefox",
    )


def plain_git_signing(fleet: Fleet, published: publish.Published) -> float:
    """Seconds for git to write the same signed commits (same trees and parents)."""
    started = time.perf_counter()
    for plan in published.plan.changed:
        parents = ["-p", str(plan.old_head)] if plan.old_head is not None else []
        git(
            fleet.root,
            "-c",
            "gpg.format=ssh",
            "-c",
            f"user.signingkey={fleet.publisher_key}",
            "commit-tree",
            "-S",
            *parents,
            "-m",
            f"deploy {plan.host}",
            str(plan.new_tree),
        )
    return time.perf_counter() - started


@dataclass(frozen=True)
class Step:
    name: str
    plan_seconds: float
    write_seconds: float
    commits: int
    git_seconds: float | None = None


def run_library(fleet: Fleet) -> list[Step]:
    key = keys.load_signing_key(fleet.publisher_key)
    steps = []
    repo = pygit2.Repository(str(fleet.root))

    def step(name: str, expected: int, *, baseline: bool) -> Step:
        started = time.perf_counter()
        plan = publish.make_plan(repo, "main")
        planned = time.perf_counter()
        published = publish.write_commits(repo, plan, key)
        written = time.perf_counter()
        if len(published.commits) != expected:
            raise SystemExit(f"{name}: wrote {len(published.commits)} commits, expected {expected}")
        git_seconds = plain_git_signing(fleet, published) if baseline and expected else None
        return Step(name, planned - started, written - planned, len(published.commits), git_seconds)

    steps.append(step("first publish", len(fleet.hosts), baseline=True))
    steps.append(step("publish, nothing changed", 0, baseline=False))
    change_profile(fleet)
    repo = pygit2.Repository(str(fleet.root))
    steps.append(
        step(f"publish after a {CHANGED_PROFILE} change", len(fleet.kiosk_hosts), baseline=True)
    )
    return steps


def run_cli(fleet: Fleet, server: Path) -> list[tuple[str, float, int]]:
    git(server.parent, "init", "-q", "--bare", "-b", "main", server)
    # A named remote, as an admin's clone has.
    git(fleet.root, "remote", "add", "origin", server)
    git(fleet.root, "push", "-q", "origin", "main")
    results = []
    for name in ("first publish", f"publish after a {CHANGED_PROFILE} change"):
        if name != "first publish":
            change_profile(fleet)
            git(fleet.root, "push", "-q", "origin", "main")
        command = [
            sys.executable,
            "-m",
            "gitops",
            "publish",
            "--repo",
            str(fleet.root),
            "--key",
            str(fleet.publisher_key),
            "--push",
            "--remote",
            "origin",
            "--json",
        ]
        started = time.perf_counter()
        result = subprocess.run(command, check=False, capture_output=True, text=True)
        seconds = time.perf_counter() - started
        if result.returncode != 0:
            raise SystemExit(f"gitops publish failed:\n{result.stderr}")
        written = len(json.loads(result.stdout)["commits"])
        expected = len(fleet.hosts) if name == "first publish" else len(fleet.kiosk_hosts)
        if written != expected:
            raise SystemExit(f"CLI {name}: wrote {written} commits, expected {expected}")
        pushed = git(server, "for-each-ref", "--format=%(refname)", "refs/heads/deploy/")
        if len(pushed.splitlines()) != len(fleet.hosts):
            raise SystemExit("CLI: the server does not have every deploy branch")
        results.append((name, seconds, written))
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cli-hosts", type=int, default=1000, help="0 to skip the CLI run")
    args = parser.parse_args(argv)
    print(f"B2 publish; {machine()}")
    with tempfile.TemporaryDirectory(prefix="gitops-bench-publish-") as tmp:
        work = Path(tmp)
        for count in args.hosts:
            started = time.perf_counter()
            fleet = generate_fleet(work / f"fleet-{count}", count)
            print(
                f"\n{count:,} hosts ({len(fleet.kiosk_hosts)} use {CHANGED_PROFILE}); "
                f"fleet generated and committed in {time.perf_counter() - started:.1f} s"
            )
            print(
                f"{'step':<32} {'plan s':>8} {'sign+write s':>13} {'commits':>8} "
                f"{'git commit-tree -S s':>21} {'git / ours':>10}"
            )
            for step in run_library(fleet):
                if step.git_seconds is not None:
                    ratio = f"{step.git_seconds / step.write_seconds:>9.1f}x"
                    plain = f"{step.git_seconds:>21.2f}"
                else:
                    ratio, plain = f"{'-':>10}", f"{'-':>21}"
                print(
                    f"{step.name:<32} {step.plan_seconds:>8.2f} {step.write_seconds:>13.2f} "
                    f"{step.commits:>8,} {plain} {ratio}"
                )
        if args.cli_hosts:
            fleet = generate_fleet(work / f"cli-fleet-{args.cli_hosts}", args.cli_hosts)
            print(f"\nCLI end to end, {args.cli_hosts:,} hosts: python -m gitops publish --push")
            for name, seconds, written in run_cli(fleet, work / "server.git"):
                print(f"  {name:<32} {seconds:>7.2f} s  {written:>6,} commits pushed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
