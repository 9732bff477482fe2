"""Benchmark ``gitops site build`` on a generated fleet; prints figures, asserts nothing.

    .venv/bin/python bench/site_build.py --hosts 10000 --reports 30 [--cache /var/tmp/gitops-bench]

The fleet repository (main with ``hosts/<host>/host.yaml`` and one Ed25519 key per host,
signed ``deploy/<host>`` chains, ``reports/<host>`` with ``--reports`` signed reports each)
is generated with pygit2 and cached under ``--cache`` (generating 300k signed commits
takes minutes); a later run with the same size reuses it. Then it measures:

1. a full build (no site cache),
2. an incremental build after one new report on one host,
3. a rebuild with nothing new.

Each build runs the real CLI (``python -m gitops site build``) in a child process; peak
memory is the largest sum of RSS over the build's whole process tree (workers included),
sampled every 20 ms. Figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import sys
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.protocol import (
    TRAILER_HOST,
    TRAILER_SOURCE,
    Report,
    Result,
    SystemInfo,
    deploy_ref,
    reports_ref,
)
from gitops.report_commits import create_report_commit
from gitops.system import process
from gitops.trust import commits
from gitops.trust.keys import public_line

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("workstation", "developer", "server", "kiosk")
# (days ago, profile touched or None for all, NixOS release the deploy brings)
PUBLISHES = (
    (30.0, None, "24.11.20241201.aaaaaaa"),
    (24.0, "workstation", "24.11.20250110.bbbbbbb"),
    (16.0, None, "25.05.20250601.ccccccc"),
    (7.0, "server", "25.05.20250701.ddddddd"),
    (0.7, "developer", "25.05.20250801.eeeeeee"),
)
PUBLISHER = "ci@example.org"
GENERATION_SEED = "gitops-bench"


def _key_for(name: str) -> ed25519.Ed25519PrivateKey:
    seed = hashlib.sha256(f"{GENERATION_SEED}:{name}".encode()).digest()
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def host_name(index: int) -> str:
    return f"host-{index:05d}"


def profile_of(index: int) -> str:
    return PROFILES[index % len(PROFILES)]


@dataclass(frozen=True)
class Scenario:
    kind: str  # healthy pending failed rolled-back rejected stale never unverified offline
    drift: bool
    reboot: bool


def scenario_of(index: int) -> Scenario:
    bucket = (index * 7919) % 1000
    kind = "healthy"
    for limit, name in (
        (50, "pending"),
        (80, "failed"),
        (95, "rolled-back"),
        (105, "rejected"),
        (135, "stale"),
        (145, "never"),
        (150, "unverified"),
        (160, "offline"),
    ):
        if bucket < limit:
            kind = name
            break
    return Scenario(kind, drift=bucket % 53 == 7, reboot=bucket % 19 == 3)


def _fleet_yaml(publisher_key: ed25519.Ed25519PrivateKey) -> str:
    return (
        "name: bench\n"
        "publishers:\n"
        f"  - principal: {PUBLISHER}\n"
        f"    key: {public_line(publisher_key).strip()}\n"
        "agent:\n  report_interval: 1h\n"
        "thresholds:\n  stale_after: 1d\n"
        "site:\n"
        "  title: Bench fleet\n"
        "  commit_url: https://git.example.org/org/fleet/commit/{sha}\n"
        "  pull_request_url: https://git.example.org/org/fleet/pulls/{number}\n"
    )


def _blob(repo: pygit2.Repository, text: str) -> pygit2.Oid:
    return repo.create_blob(text.encode())


def _tree(repo: pygit2.Repository, entries: Mapping[str, Any]) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for name, value in sorted(entries.items()):
        if isinstance(value, dict):
            builder.insert(name, _tree(repo, value), pygit2.enums.FileMode.TREE)
        else:
            builder.insert(name, value, pygit2.enums.FileMode.BLOB)
    return builder.write()


def _main_history(
    repo: pygit2.Repository, hosts: int, now: datetime, publisher: ed25519.Ed25519PrivateKey
) -> list[pygit2.Oid]:
    """One main commit per publish (the first a plain import, the rest merged pull requests)."""
    host_dirs: dict[str, object] = {}
    for index in range(hosts):
        name = host_name(index)
        key = public_line(_key_for(name)).strip()
        host_yaml = (
            f"key: {key}\nprofiles: [{profile_of(index)}]\n"
            f"tags: [{'laptop' if index % 3 else 'rack'}, site-{index % 5}]\n"
            f"owner: team-{index % 12}@example.org\n"
        )
        if index % 97 == 0:
            host_yaml += (
                "exemptions:\n  - policy: disk-encryption\n    reason: lab machine, no secrets\n"
                "    expires: 2099-01-01\n"
            )
        host_dirs[name] = {
            "host.yaml": _blob(repo, host_yaml),
            "configuration.nix": _blob(repo, f"{{ ... }}: {{ networking.hostName = {name!r}; }}\n"),
        }
    policies = {
        p.name: _blob(repo, p.read_text()) for p in sorted((ROOT / "policies").glob("*.yaml"))
    }
    parents: list[pygit2.Oid] = []
    result = []
    for number, (days, profile, release) in enumerate(PUBLISHES):
        profiles = {
            f"{p}.nix": _blob(repo, f"# {p}\n{{ ... }}: {{ system.stateVersion = {release!r}; }}\n")
            for p in PROFILES
        }
        tree = _tree(
            repo,
            {
                "fleet.yaml": _blob(repo, _fleet_yaml(publisher)),
                "flake.nix": _blob(repo, f"# nixpkgs {release}\n{{ outputs = _: {{ }}; }}\n"),
                "hosts": host_dirs,
                "profiles": profiles,
                "policies": policies,
            },
        )
        when = now - timedelta(days=days)
        author = commits.signature_of("Alice Admin", "alice@example.org", when)
        if number == 0:
            message = "Import the fleet\n"
        else:
            message = (
                f"Merge pull request #{10 + number} from alice/update-{profile or 'all'}\n\n"
                f"Update {profile or 'every profile'} to {release}\n"
            )
        oid = repo.create_commit(None, author, author, message, tree, parents)
        parents = [oid]
        result.append(oid)
    repo.references.create("refs/heads/main", parents[0], force=True)
    return result


def _touches(index: int, profile: str | None) -> bool:
    return profile is None or profile_of(index) == profile


def _generate_hosts(args: tuple[str, list[int], int, list[str], float]) -> dict[str, str]:
    """Worker: deploy chain and reports for some hosts; returns ref name -> head."""
    path, indexes, reports, main_commits, now_ts = args
    repo = pygit2.Repository(path)
    now = datetime.fromtimestamp(now_ts, UTC)
    publisher = _key_for("publisher")
    heads: dict[str, str] = {}
    for index in indexes:
        name = host_name(index)
        scenario = scenario_of(index)
        # -- deploy chain: (time, oid, release) for each publish touching this host
        chain: list[tuple[datetime, pygit2.Oid, str, str]] = []
        parent: pygit2.Oid | None = None
        for number, (days, profile, release) in enumerate(PUBLISHES):
            if not _touches(index, profile):
                continue
            when = now - timedelta(days=days, seconds=index % 600)
            tree = _tree(
                repo,
                {"hosts": {name: {"configuration.nix": _blob(repo, f"# {name} {release}\n")}}},
            )
            message = commits.format_message(
                f"deploy {name}: publish {number}",
                f"Changed: hosts/{name}/configuration.nix",
                {TRAILER_SOURCE: main_commits[number], TRAILER_HOST: name},
            )
            identity = commits.signature_of("ci", PUBLISHER, when)
            parent = commits.create_signed_commit(
                repo,
                tree=tree,
                parents=[parent] if parent is not None else [],
                message=message,
                author=identity,
                key=publisher,
            )
            chain.append((when, parent, release, main_commits[number]))
        assert parent is not None
        heads[deploy_ref(name)] = str(parent)
        if scenario.kind == "never":
            continue
        # -- reports, oldest first, one a day, the last about an hour ago
        key = _key_for(f"intruder-{name}") if scenario.kind == "unverified" else _key_for(name)
        end = now - timedelta(hours=1 + index % 5)
        if scenario.kind == "stale":
            end = now - timedelta(days=3)
        step = timedelta(days=30) / reports
        previous: pygit2.Oid | None = None
        generation = 0
        applied: tuple[datetime, pygit2.Oid, str, str] | None = None
        for number in range(reports):
            when = end - step * (reports - 1 - number)
            visible = [c for c in chain if c[0] <= when]
            head = visible[-1] if visible else None
            last = number == reports - 1
            result = Result.UNCHANGED
            if head is not None and (applied is None or applied[1] != head[1]):
                hold_back = scenario.kind == "pending" and head is chain[-1]
                if not hold_back:
                    applied = head
                    generation += 1
                    result = Result.APPLIED
            if last and scenario.kind in ("failed", "rolled-back", "rejected", "offline"):
                result = {
                    "failed": Result.BUILD_FAILED,
                    "rolled-back": Result.ROLLED_BACK,
                    "rejected": Result.REJECTED,
                    "offline": Result.FETCH_FAILED,
                }[scenario.kind]
            release = applied[2] if applied else "unknown"
            store = f"/nix/store/{hashlib.sha1(f'{name}{release}'.encode()).hexdigest()[:32]}"
            store += f"-nixos-system-{name}-{release}"
            current = (
                store
                if not (scenario.drift and last)
                else store.replace("/nix/store/", "/nix/store/0")
            )
            report = Report(
                host=name,
                time=when,
                agent_version="0.1.0",
                result=result,
                reason=f"{result} at generation {generation}",
                report_id=uuid.UUID(int=(index << 32) + number).hex,
                deploy_seen=str(head[1]) if head else None,
                deploy_applied=str(applied[1]) if applied else None,
                source_commit=applied[3] if applied else None,
                system=SystemInfo(
                    store_path=store,
                    generation=generation,
                    current_system=current,
                    booted_system=store,
                    nixos_version=release,
                    configuration_revision=None,
                    current_kernel="/nix/store/k-linux-6.6.30/bzImage",
                    booted_kernel="/nix/store/k-linux-6.6.30/bzImage",
                    reboot_required=scenario.reboot and last,
                ),
                facts=_facts(index, name),
                durations={"fetch": 0.4, "build": 31.2, "activate": 4.1, "total": 36.0},
                log_tail=(
                    "error: builder for '/nix/store/x-foo.drv' failed with exit code 1\n"
                    if result in (Result.BUILD_FAILED, Result.ROLLED_BACK)
                    else ""
                ),
            )
            previous = create_report_commit(repo, report, parent=previous, key=key)
        assert previous is not None
        heads[reports_ref(name)] = str(previous)
    return heads


def _facts(index: int, name: str) -> dict[str, object]:
    gib = 1 << 30
    server = profile_of(index) == "server"
    return {
        "firewall": "inactive" if index % 31 == 5 else "active",
        "ssh_password_login": "enabled" if index % 23 == 4 else "disabled",
        "ssh_root_login": "prohibit-password",
        "disk_encryption": "none" if server and index % 2 else "luks",
        "luks_devices": ["cryptroot"],
        "gc_timer": "absent" if index % 41 == 9 else "enabled",
        "auto_upgrade_timer": "enabled" if index % 59 == 11 else "absent",
        "failed_units": ["backup.service"] if index % 29 == 6 else [],
        "uptime_seconds": 86400 * (index % 20),
        "disk_free_bytes": {"/": (index % 50) * gib, "/nix": (index % 70) * gib},
        "disk_total_bytes": {"/": 100 * gib, "/nix": 100 * gib},
        "machine_id": hashlib.md5(name.encode()).hexdigest(),
        "nixos_version": "unknown",
    }


def generate(path: Path, hosts: int, reports: int) -> float:
    """Create the fleet repository at ``path``; returns seconds taken."""
    started = time.monotonic()
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    repo = pygit2.init_repository(str(tmp), bare=True)
    now = datetime.now(UTC).replace(microsecond=0)
    publisher = _key_for("publisher")
    main_commits = [str(o) for o in _main_history(repo, hosts, now, publisher)]
    workers = os.cpu_count() or 2
    chunks = [list(range(i, hosts, workers * 8)) for i in range(workers * 8)]
    jobs = [(str(tmp), chunk, reports, main_commits, now.timestamp()) for chunk in chunks]
    heads: dict[str, str] = {}
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for done, part in enumerate(pool.imap_unordered(_generate_hosts, jobs), start=1):
            heads.update(part)
            print(f"  generated {done}/{len(jobs)} host groups", file=sys.stderr, flush=True)
    for name, target in heads.items():
        repo.references.create(name, pygit2.Oid(hex=target), force=True)
    print("  packing objects (git repack)", file=sys.stderr, flush=True)
    process.run(["git", "-C", str(tmp), "repack", "-a", "-d", "-q"], check=True)
    process.run(["git", "-C", str(tmp), "pack-refs", "--all"], check=True)
    (tmp / "bench-generated.json").write_text(
        json.dumps({"hosts": hosts, "reports": reports, "now": now.isoformat()})
    )
    tmp.rename(path)
    return time.monotonic() - started


def add_one_report(path: Path) -> str:
    """Append one new signed report to the first healthy host's branch (the incremental case)."""
    repo = pygit2.Repository(str(path))
    index = next(i for i in range(10**6) if scenario_of(i).kind == "healthy")
    name = host_name(index)
    ref = repo.references[reports_ref(name)]
    head = repo.get(ref.target)
    assert isinstance(head, pygit2.Commit)
    blob = head.tree["status.json"]
    assert isinstance(blob, pygit2.Blob)
    old = Report.from_json(bytes(blob.data))
    report = Report(
        host=name,
        time=datetime.now(UTC).replace(microsecond=0),
        agent_version=old.agent_version,
        result=Result.UNCHANGED,
        reason="heartbeat",
        report_id=uuid.uuid4().hex,
        deploy_seen=old.deploy_seen,
        deploy_applied=old.deploy_applied,
        system=old.system,
        facts=old.facts,
    )
    oid = create_report_commit(repo, report, parent=head.id, key=_key_for(name))
    ref.set_target(oid)
    return name


class TreeMemory:
    """Sample the memory of this process's descendants until stopped: the sum of their
    PSS (proportional set size: pages shared after fork counted once, not per process)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.02):
            parents: dict[int, int] = {}
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat") as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
            total = 0
            for pid in parents:
                ancestor = parents.get(pid)
                while ancestor and ancestor != me:
                    ancestor = parents.get(ancestor)
                if ancestor == me:
                    total += self._pss(pid)
            self.peak = max(self.peak, total)


def timed_build(repo: Path, out: Path) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user + system, workers included), peak memory of the
    process tree, and the build's phases line."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    with TreeMemory() as memory:
        result = process.run(
            [
                sys.executable,
                "-m",
                "gitops",
                "-v",
                "site",
                "build",
                "--repo",
                str(repo),
                "--out",
                str(out),
            ],
            check=True,
        )
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    phases = next((line for line in result.stderr.splitlines() if "phases" in line), "")
    return wall, cpu, memory.peak, phases.removeprefix("site: ")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/var/tmp/gitops-bench"),
        help="where generated repositories are kept between runs (default /var/tmp/gitops-bench)",
    )
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=10)
    args = parser.parse_args(argv)
    args.cache.mkdir(parents=True, exist_ok=True)
    repo = args.cache / f"fleet-{args.hosts}x{args.reports}.git"
    if not (repo / "bench-generated.json").exists():
        print(f"generating {repo} ...", file=sys.stderr, flush=True)
        seconds = generate(repo, args.hosts, args.reports)
        print(f"generated {args.hosts} hosts x {args.reports} reports in {seconds:.0f} s")
    work = args.cache / f"site-{args.hosts}x{args.reports}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir()
    out = work / "out"
    mib = 1 << 20
    host = ""
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; other work slows wall times)")
    for label, action in (("full build", None), ("nothing new", None), ("one new report", "add")):
        if action == "add":
            host = add_one_report(repo)
        wall, cpu, peak, phases = timed_build(repo, out)
        print(
            f"{label + ':':16} {wall:7.2f} s wall {cpu:8.2f} s CPU  peak {peak / mib:6.0f} MiB"
            f"  {phases}"
        )
    print(f"  (the new report is on {host})")
    pages = sum(1 for _ in out.rglob("*.html"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"site: {pages} pages, {size / mib:.0f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
