"""B2: ``gitops publish`` on generated fleets of 100 and 1,000 hosts.

    .venv/bin/python bench/publish.py [--hosts 100 1000] [--cli-hosts 1000] [--repeat N]
        [--before REV]

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

Then, for ``--cli-hosts`` hosts (1,000 by default), one generated fleet copied once per
contender, the same two steps (first publish; the kiosk change, 10 % of the hosts) through:

* the library path: ``make_plan`` + ``write_commits`` in this process;
* the real CLI end to end, ``python -m gitops publish --push --json`` into a bare
  repository (checks the server's deploy heads, plans, signs, one atomic push);
* with ``--before REV``, the CLI of an older commit (its ``gitops/`` extracted with
  ``git archive``), to show a change's effect measured in the same run.

Wall seconds are printed with CPU seconds (of the process and every child it waited for,
so the git processes and the receiving server are counted): on a shared machine wall time
varies with the load, CPU time much less.

    .venv/bin/python bench/publish.py --hosts 1000 --cli-hosts 10000 --repeat 3 --before 0ea409c
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
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

REPOSITORY = Path(__file__).resolve().parent.parent
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
    # No background gc: it would repack while a contender runs (or while the fleet is copied).
    git(root, "config", "gc.auto", "0")
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


@dataclass(frozen=True)
class Timed:
    wall: float
    cpu: float  # of this process and every child it waited for (git, the server side)


def _timed_run(command: list[str], env: dict[str, str], cwd: Path) -> tuple[Timed, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    result = subprocess.run(command, check=False, capture_output=True, text=True, env=env, cwd=cwd)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    if result.returncode != 0:
        raise SystemExit(f"gitops publish failed:\n{result.stderr}")
    return Timed(wall, cpu), result.stdout


STEPS = ("first publish", f"{CHANGED_PROFILE} changed (10 %)")


def _copy_fleet(pristine: Fleet, into: Path) -> tuple[Fleet, Path]:
    """A copy of the generated fleet with its own empty bare server, pushed main."""
    into.mkdir()
    root = into / "fleet"
    shutil.copytree(pristine.root, root, symlinks=True)
    server = into / "server.git"
    git(into, "init", "-q", "--bare", "-b", "main", server)
    git(server, "config", "gc.auto", "0")
    git(root, "remote", "add", "origin", server)  # a named remote, as an admin's clone has
    git(root, "push", "-q", "origin", "main")
    return Fleet(root, pristine.hosts, pristine.kiosk_hosts, pristine.publisher_key), server


def _expected(fleet: Fleet, step: str) -> int:
    return len(fleet.hosts) if step == STEPS[0] else len(fleet.kiosk_hosts)


def run_cli(fleet: Fleet, server: Path, code: Path) -> list[Timed]:
    """``python -m gitops publish --push`` with the package found in ``code``."""
    env = {**os.environ, "PYTHONPATH": str(code)}
    results = []
    for step in STEPS:
        if step != STEPS[0]:
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
        # In ``code``: ``python -m`` looks in the working directory before PYTHONPATH.
        timed, stdout = _timed_run(command, env, code)
        written = len(json.loads(stdout)["commits"])
        if written != _expected(fleet, step):
            raise SystemExit(
                f"CLI {step}: wrote {written} commits, expected {_expected(fleet, step)}"
            )
        pushed = git(server, "for-each-ref", "--format=%(refname)", "refs/heads/deploy/")
        if len(pushed.splitlines()) != len(fleet.hosts):
            raise SystemExit("CLI: the server does not have every deploy branch")
        results.append(timed)
    return results


def run_library_path(fleet: Fleet) -> list[Timed]:
    """What the CLI is compared with: make_plan + write_commits in this process."""
    key = keys.load_signing_key(fleet.publisher_key)
    results = []
    for step in STEPS:
        if step != STEPS[0]:
            change_profile(fleet)
        started, cpu = time.perf_counter(), time.process_time()
        repo = pygit2.Repository(str(fleet.root))
        published = publish.write_commits(repo, publish.make_plan(repo, "main"), key)
        results.append(Timed(time.perf_counter() - started, time.process_time() - cpu))
        if len(published.commits) != _expected(fleet, step):
            raise SystemExit(f"library {step}: wrote {len(published.commits)} commits")
    return results


def _old_code(rev: str, into: Path) -> Path:
    """The gitops package as of ``rev``, extracted from this repository."""
    into.mkdir()
    archive = subprocess.run(
        ["git", "-C", str(REPOSITORY), "archive", rev, "gitops"], check=True, capture_output=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(into)], input=archive, check=True)
    return into


def compare_cli(work: Path, count: int, before: str | None, repeat: int) -> None:
    """Every contender ``repeat`` times, interleaved, each on its own copy of one fleet:
    on a shared machine the load moves, and a contender measured alone at a bad moment
    would look slower than it is."""
    pristine = generate_fleet(work / "pristine" / "fleet", count)
    variants: list[tuple[str, Path | None]] = [("library", None), ("CLI", REPOSITORY)]
    if before:
        variants.append((f"CLI {before}", _old_code(before, work / "before")))
    figures: dict[str, list[list[Timed]]] = {name: [] for name, _ in variants}
    for round_ in range(repeat):
        for name, code in variants:
            place = work / f"{name.replace(' ', '-')}-{round_}"
            fleet, server = _copy_fleet(pristine, place)
            figures[name].append(
                run_library_path(fleet) if code is None else run_cli(fleet, server, code)
            )
            shutil.rmtree(place)
    print(
        f"\nCLI vs library path, {count:,} hosts, {repeat} run(s) each: median wall s "
        "(range; median CPU s, git and the receiving server included)"
    )
    for index, step in enumerate(STEPS):
        library = statistics.median(run[index].wall for run in figures["library"])
        print(f"  {step}")
        for name, _ in variants:
            walls = [run[index].wall for run in figures[name]]
            cpu = statistics.median(run[index].cpu for run in figures[name])
            wall = statistics.median(walls)
            ratio = "" if name == "library" else f"  {wall / library:5.2f}x the library"
            print(
                f"    {name:<14} {wall:7.2f} s ({min(walls):.2f}-{max(walls):.2f}; "
                f"CPU {cpu:5.1f} s){ratio}"
            )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--hosts", type=int, nargs="+", default=[100, 1000])
    parser.add_argument("--cli-hosts", type=int, default=1000, help="0 to skip the CLI run")
    parser.add_argument("--repeat", type=int, default=1, help="runs of each CLI contender")
    parser.add_argument(
        "--before",
        metavar="REV",
        help="also run the CLI of this commit (e.g. the last one before a change), same fleet",
    )
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
            compare_cli(work / "cli", args.cli_hosts, args.before, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
