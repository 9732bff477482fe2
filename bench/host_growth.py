"""B7: the agent's state directory after a year of reports, today's code path vs compaction.

    .venv/bin/python bench/host_growth.py [--reports 35040] [--checkpoints 8760]

A year of reports every 15 minutes is 35,040 signed report commits. Both contenders write
them the way the agent does (``Reporter.add``: a signed commit of the report's
``status.json`` on ``reports/<host>`` in the mirror ``<state>/repo.git``), in process and
without waiting, into a state directory that also holds an applied deploy commit
(``refs/gitops/applied``, with its tree) as a real host's does:

- ``before``: today's code path before this change: reports are committed and pushed, and
  nothing ever packs or prunes the mirror. Pushing writes nothing locally, so this
  contender does not push (the directory is the same either way);
- ``after``: the cycle's ``compact.compact_if_due`` after every report. Reports are pushed
  (``Reporter.push``: git push to a local bare repository standing in for the server)
  whenever compaction is due, right before it, so each compaction sees what a host that
  pushes every report would see: everything pushed. ``--push-every N`` also pushes every N
  reports (slower, the same outcome).

Printed at each checkpoint: the state directory's size on disk (blocks, what ``du``
says) and apparent size, loose objects and packs, for both, and the ratio. Checked
afterwards: the server holds every report once, in order (by Report-Id); the applied deploy
commit and its tree are still in the mirror; one more report is written and pushed from
the compacted mirror; ``git fsck`` finds the mirror sound.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.agent import compact, facts
from gitops.agent.mirror import APPLIED_REF, Mirror
from gitops.agent.reporter import Reporter
from gitops.protocol import Report, Result, SystemInfo, reports_ref
from gitops.report_commits import read_report_commit
from gitops.system import transport

HOST = "laptop-017"
DEPLOY = "3" * 40
START = datetime(2026, 1, 1, tzinfo=UTC)
STEP = timedelta(minutes=15)


@dataclass(frozen=True)
class Size:
    disk: int  # bytes of blocks allocated (du)
    apparent: int
    loose: int
    packs: int


def measure(state_dir: Path) -> Size:
    disk = apparent = 0
    for directory, _, files in os.walk(state_dir):
        for name in files:
            stat = os.lstat(os.path.join(directory, name))
            disk += stat.st_blocks * 512
            apparent += stat.st_size
    repo = state_dir / "repo.git"
    return Size(disk, apparent, compact.loose_objects(repo), compact.packs(repo))


def sample_facts() -> dict[str, object]:
    try:
        return facts.collect_facts(Path("/"))
    except Exception:
        return {}


def report(number: int, base_facts: dict[str, object]) -> Report:
    when = START + number * STEP
    system = SystemInfo(
        store_path="/nix/store/" + "a" * 32 + "-nixos-system-laptop-017-25.05",
        generation=41,
        current_system="/nix/store/" + "a" * 32 + "-nixos-system-laptop-017-25.05",
        booted_system="/nix/store/" + "a" * 32 + "-nixos-system-laptop-017-25.05",
        nixos_version="25.05.20260101.abcdef0",
        configuration_revision=DEPLOY,
        current_kernel="6.12.8",
        booted_kernel="6.12.8",
        reboot_required=False,
    )
    varying = dict(base_facts, uptime_seconds=900 * number, disk_free_bytes=10**11 - number * 4096)
    return Report(
        host=HOST,
        time=when,
        agent_version="0.9.0",
        result=Result.UNCHANGED,
        reason=f"up to date with deploy {DEPLOY[:8]}",
        report_id=str(uuid.uuid4()),
        deploy_seen=DEPLOY,
        deploy_applied=DEPLOY,
        source_commit="4" * 40,
        system=system,
        facts=varying,
        durations={"fetch": 0.21, "verify": 0.0, "total": 0.25},
    )


def applied_deploy(mirror: Mirror) -> pygit2.Oid:
    """A deploy commit with a small tree at refs/gitops/applied, as on a real host."""
    repo = mirror.repo
    builder = repo.TreeBuilder()
    for name in ("flake.nix", "flake.lock", "configuration.nix"):
        builder.insert(name, repo.create_blob(f"# {name}\n".encode() * 200), 0o100644)
    who = pygit2.Signature("publisher", "publisher@example.org", 1767225600, 0)
    oid = repo.create_commit(None, who, who, "deploy laptop-017\n", builder.write(), [])
    mirror.set_ref(APPLIED_REF, oid, "applied")
    return oid


@dataclass
class Contender:
    name: str
    state_dir: Path
    reporter: Reporter
    compacting: bool
    pushes: int = 0
    compactions: int = 0
    seconds: float = 0.0
    compact_seconds: float = 0.0


def contender(name: str, root: Path, key: ed25519.Ed25519PrivateKey, compacting: bool) -> Contender:
    state_dir = root / name / "state"
    mirror = Mirror(state_dir, HOST)
    applied_deploy(mirror)
    server = root / name / "server.git"
    subprocess.run(["git", "init", "-q", "--bare", server], check=True)
    reporter = Reporter(mirror, key, str(server), transport.Credentials())
    return Contender(name, state_dir, reporter, compacting)


def step(c: Contender, number: int, base_facts: dict[str, object], push_every: int) -> None:
    started = time.perf_counter()
    c.reporter.add(report(number, base_facts))
    if c.compacting:
        path = c.reporter.mirror.path
        due = compact.loose_objects(path, compact.LOOSE_LIMIT) >= compact.LOOSE_LIMIT
        if due or (push_every and number % push_every == 0):
            outcome = c.reporter.push()
            assert outcome.pushed, outcome
            c.pushes += 1
        if due:
            before = time.perf_counter()
            done = compact.compact_if_due(c.reporter.mirror, c.reporter.key)
            assert done is not None
            c.compactions += 1
            c.compact_seconds += time.perf_counter() - before
    c.seconds += time.perf_counter() - started


def check_after(c: Contender, total: int, base_facts: dict[str, object]) -> None:
    """Everything on the server once and in order; the deploy kept; one more report goes."""
    c.reporter.add(report(total, base_facts))
    outcome = c.reporter.push()
    assert outcome.pushed and outcome.pending == 0, outcome
    server = pygit2.Repository(c.reporter.remote)
    head = server.references[reports_ref(HOST)].target
    assert isinstance(head, pygit2.Oid)
    ids = [
        read_report_commit(server, commit.id).report_id
        for commit in server.walk(head, pygit2.enums.SortMode.TOPOLOGICAL)
    ]
    assert len(ids) == len(set(ids)) == total + 1, (len(ids), len(set(ids)), total + 1)
    mirror = c.reporter.mirror
    applied = mirror.target(APPLIED_REF)
    assert applied is not None and mirror.applied_file("flake.lock") is not None
    subprocess.run(
        ["git", "--git-dir", mirror.path, "fsck", "--no-progress", "--no-dangling"],
        check=True,
        capture_output=True,
        env={**os.environ, **transport.HERMETIC_ENV},
    )


def mb(n: int) -> str:
    return f"{n / 1e6:.1f} MB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reports", type=int, default=35_040)
    parser.add_argument("--checkpoints", type=int, default=8_760, help="print every N reports")
    parser.add_argument("--push-every", type=int, default=0)
    args = parser.parse_args()
    key = ed25519.Ed25519PrivateKey.generate()
    base_facts = sample_facts()
    with tempfile.TemporaryDirectory(prefix="gitops-host-growth-") as tmp:
        root = Path(tmp)
        contenders = [
            contender("before", root, key, compacting=False),
            contender("after", root, key, compacting=True),
        ]
        print(f"{args.reports:,} reports, one every 15 minutes ({args.reports / 35_040:.2f} years)")
        print(
            f"{'reports':>8} | {'before: disk':>12} {'apparent':>10} {'loose':>8} {'packs':>5} "
            f"| {'after: disk':>11} {'apparent':>10} {'loose':>6} {'packs':>5} | ratio"
        )
        for number in range(1, args.reports + 1):
            for c in contenders:
                step(c, number, base_facts, args.push_every)
            if number % args.checkpoints == 0 or number == args.reports:
                old, new = (measure(c.state_dir) for c in contenders)
                print(
                    f"{number:>8,} | {mb(old.disk):>12} {mb(old.apparent):>10} {old.loose:>8,} "
                    f"{old.packs:>5} | {mb(new.disk):>11} {mb(new.apparent):>10} "
                    f"{new.loose:>6,} {new.packs:>5} | {old.disk / new.disk:.0f}x",
                    flush=True,
                )
        after = contenders[1]
        check_after(after, args.reports, base_facts)
        final = measure(after.state_dir)
        print(f"after one more report, pushed from the compacted mirror: {mb(final.disk)} on disk")
        for c in contenders:
            extra = (
                f", {c.pushes:,} pushes, {c.compactions} compactions taking "
                f"{c.compact_seconds:.1f} s ({c.compact_seconds / max(c.compactions, 1) * 1000:.0f} ms each)"
                if c.compacting
                else ""
            )
            print(f"{c.name}: {c.seconds:.1f} s writing reports{extra}")
        print("checked: every report on the server once, deploy kept, git fsck clean")
        server_size(Path(after.reporter.remote), args.reports + 1)


def server_size(server: Path, reports: int) -> None:
    """The server's side: one host's report branch, packed as ``git gc`` would."""
    started = time.perf_counter()
    subprocess.run(
        ["git", "--git-dir", server, "repack", "-a", "-d", "-q"],
        check=True,
        env={**os.environ, **transport.HERMETIC_ENV},
    )
    seconds = time.perf_counter() - started
    size = sum(p.stat().st_size for p in (server / "objects" / "pack").iterdir())
    per_report = size / reports
    print(
        f"server: {reports:,} reports of one host packed in {mb(size)} ({per_report:.0f} B a "
        f"report; repack {seconds:.1f} s); per 1,000 hosts a year: "
        f"{per_report * 8_760 * 1000 / 1e9:.1f} GB at hourly heartbeats, "
        f"{per_report * 35_040 * 1000 / 1e9:.1f} GB every 15 minutes"
    )


if __name__ == "__main__":
    main()
