"""B11: the server's repositories under a stream of reports, git's defaults vs the
maintenance settings with ``gitops server maintain``, side by side in the same run.

    .venv/bin/python bench/server_maintenance.py [--pushes 1500] [--hosts 10] [--every 24]

Reports are written once (signed, as ``Reporter.add`` writes them: bench/host_growth.py's
``status.json``, one an hour from 2026-01-01) and delivered to two server directories:

- ``before``: the repository config ``gitops server sync`` wrote before this change (git's
  defaults: automatic gc after a push at 6,700 loose objects, nothing else);
- ``after``: the config it writes now (``MAINTENANCE_CONFIG``) and ``maintain_repo`` on
  every repository after every ``--every`` pushes (24: a daily timer at hourly reports).

Host 0's repository receives ``--pushes`` pushes of one report each (``git push`` to a
local bare repository: receive-pack explodes a small push into loose objects, as on the
server; the automatic gc runs in the foreground, ``gc.autoDetach=false``, so its CPU is
counted). fleet.git receives every report of ``--hosts`` hosts through the server's
fan-in (``gitops.server.transfer.fast_forward``, what post-receive runs), one host after
the other at each hour.

Printed at checkpoints: loose objects, packs and bytes on disk (blocks under objects/) of
both repositories, for both; the CPU of pushes (receive-pack, and any automatic gc) and of
maintenance. At the end, for ``after``: ``gitops server archive`` marks every month but the
last and keeps their history in a pack; then a full ``git gc`` of fleet.git in both shows
what a full repack costs with and without the kept archive pack, and the packed size per
report gives the server's size per 1,000 hosts a year. Checked: both fleet.git hold the same
heads, ``git fsck`` is clean.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import tempfile
from dataclasses import dataclass, field, replace
from datetime import timedelta
from pathlib import Path

import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import host_growth

from gitops.protocol import reports_ref
from gitops.report_commits import create_report_commit
from gitops.server import maintain
from gitops.server.archive import archive
from gitops.server.layout import Layout
from gitops.server.sync import MAINTENANCE_CONFIG, repo_config
from gitops.server.transfer import fast_forward
from gitops.system import process

HOUR = timedelta(hours=1)
PUSH_ENV = {**maintain.GIT_ENV, "GIT_CONFIG_COUNT": "1"}
PUSH_ENV |= {"GIT_CONFIG_KEY_0": "gc.autoDetach", "GIT_CONFIG_VALUE_0": "false"}


def cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass
class Server:
    name: str
    layout: Layout
    maintained: bool
    push_cpu: float = 0.0
    maintain_cpu: float = 0.0
    maintain_runs: int = 0
    maintain_split: list[float] = field(default_factory=lambda: [0.0, 0.0])  # host, fleet
    opened: pygit2.Repository | None = None

    def fleet(self) -> pygit2.Repository:
        if self.opened is None:
            self.opened = pygit2.Repository(str(self.layout.fleet))
        return self.opened

    @property
    def host_repo(self) -> Path:
        return self.layout.host_repo(host(0))

    def repos(self) -> tuple[Path, Path]:
        return self.host_repo, self.layout.fleet


def host(n: int) -> str:
    return f"host-{n:03d}"


def make_server(root: Path, name: str, maintained: bool) -> Server:
    layout = Layout(root / name)
    layout.hosts_dir.mkdir(parents=True)
    layout.hooks_dir.mkdir()  # empty: the bench measures storage, not the checks
    layout.config_file.write_text("")  # enough for check_initialized (archive)
    config = repo_config(layout)
    if not maintained:
        config = config.replace(MAINTENANCE_CONFIG, "")
    for path in (layout.fleet, layout.host_repo(host(0))):
        pygit2.init_repository(str(path), bare=True)
        (path / "config").write_text(config)
    return Server(name, layout, maintained)


def push(server: Server, client: Path, tip: pygit2.Oid) -> None:
    started = cpu()
    process.run(
        ["git", "--git-dir", client, "push", "-q", server.host_repo,
         f"{tip}:{reports_ref(host(0))}"],
        check=True, env=PUSH_ENV,
    )  # fmt: skip
    server.push_cpu += cpu() - started


def maintain_all(server: Server) -> None:
    for index, repo in enumerate(server.repos()):
        started = cpu()
        done = maintain.maintain_repo(repo)
        assert done.problem is None, done.problem
        spent = cpu() - started
        server.maintain_cpu += spent
        server.maintain_split[index] += spent
    server.maintain_runs += 1
    server.opened = None  # packs were replaced: open afresh


def mb(n: float) -> str:
    return f"{n / 1e6:.1f} MB"


def row(number: int, servers: list[Server]) -> str:
    cells = []
    for s in servers:
        for repo in s.repos():
            o = maintain.objects(repo)
            cells.append(f"{o.loose:>7,} {o.packs:>3} {mb(o.disk):>9}")
    spent = " ".join(f"{s.push_cpu:>6.1f} {s.maintain_cpu:>6.1f}" for s in servers)
    return f"{number:>6,} | " + " | ".join(cells) + f" | {spent}"


def full_gc(repo: Path) -> tuple[float, int]:
    started = cpu()
    maintain.git(repo, "gc", "-q", "--prune=now")
    size = sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))
    return cpu() - started, size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pushes", type=int, default=1500, help="reports per host")
    parser.add_argument("--hosts", type=int, default=10, help="hosts fanned into fleet.git")
    parser.add_argument("--every", type=int, default=24, help="pushes between maintenance")
    parser.add_argument("--checkpoints", type=int, default=500)
    args = parser.parse_args()
    key = ed25519.Ed25519PrivateKey.generate()
    facts = host_growth.sample_facts()
    with tempfile.TemporaryDirectory(prefix="gitops-server-maint-") as tmp:
        root = Path(tmp)
        client_path = root / "client.git"
        client = pygit2.init_repository(str(client_path), bare=True)
        servers = [make_server(root, "before", False), make_server(root, "after", True)]
        tips: dict[str, pygit2.Oid | None] = {host(n): None for n in range(args.hosts)}
        print(
            f"{args.pushes:,} hourly reports from each of {args.hosts} hosts; maintenance "
            f"every {args.every} pushes (after)"
        )
        print(
            f"{'pushes':>6} | before: host repo loose/packs/disk | fleet.git | after: host repo"
            " | fleet.git | CPU-s pushes, maintain: before, after"
        )
        for number in range(1, args.pushes + 1):
            for n in range(args.hosts):
                name = host(n)
                report = replace(
                    host_growth.report(number, facts),
                    host=name,
                    time=host_growth.START + number * HOUR,
                )
                tip = create_report_commit(client, report, parent=tips[name], key=key)
                tips[name] = tip
                for s in servers:
                    fleet = s.fleet()
                    if n == 0:
                        push(s, client_path, tip)
                        source = pygit2.Repository(str(s.host_repo))
                    else:
                        source = client
                    fast_forward(source, fleet, reports_ref(name), tip)
            for s in servers:
                if s.maintained and number % args.every == 0:
                    maintain_all(s)
            if number % args.checkpoints == 0 or number == args.pushes:
                print(row(number, servers), flush=True)
        after = servers[1]
        started = cpu()
        last = (host_growth.START + args.pushes * HOUR).strftime("%Y-%m")
        archived = archive(after.layout, last)
        print(
            f"archive --before {last}: {len(archived.created):,} marks, kept pack "
            f"{mb(archived.pack_bytes)}, {cpu() - started:.1f} CPU-s"
        )
        heads = [
            {h: pygit2.Repository(str(s.layout.fleet)).references[reports_ref(h)].target
             for h in tips}
            for s in servers
        ]  # fmt: skip
        assert heads[0] == heads[1] == tips
        for attempt in ("first", "second"):
            for s in servers:
                seconds, size = full_gc(s.layout.fleet)
                print(
                    f"{s.name}: {attempt} full git gc of fleet.git {seconds:.2f} CPU-s, all packs "
                    f"{mb(size)}"
                    + (" (the kept archive pack included, not rewritten)" if s.maintained else "")
                )
                maintain.git(s.layout.fleet, "fsck", "--no-progress", "--no-dangling")
        for s in servers:
            print(
                f"{s.name}: pushes {s.push_cpu:.1f} CPU-s; maintenance {s.maintain_cpu:.1f} "
                f"CPU-s in {s.maintain_runs} runs (host repository "
                f"{s.maintain_split[0]:.1f}, fleet.git {s.maintain_split[1]:.1f})"
                + (
                    f" ({s.maintain_cpu / s.maintain_runs * 1000:.0f} ms a run)"
                    if s.maintain_runs
                    else ""
                )
            )
        per_report(servers[0], args)


def per_report(server: Server, args: argparse.Namespace) -> None:
    """Packed bytes per report, both copies (the host's repository and fleet.git)."""
    maintain.git(server.host_repo, "gc", "-q", "--prune=now")
    host_bytes = sum(p.stat().st_size for p in (server.host_repo / "objects/pack").iterdir())
    fleet_bytes = sum(p.stat().st_size for p in (server.layout.fleet / "objects/pack").iterdir())
    host_each = host_bytes / args.pushes
    fleet_each = fleet_bytes / (args.pushes * args.hosts)
    both = host_each + fleet_each
    print(
        f"packed per report: {host_each:.0f} B in the host's repository, {fleet_each:.0f} B in "
        f"fleet.git ({args.hosts} hosts), {both:.0f} B both; per 1,000 hosts a year: "
        f"{both * 8_760 * 1000 / 1e9:.1f} GB at hourly heartbeats, "
        f"{both * 35_040 * 1000 / 1e9:.1f} GB every 15 minutes"
    )


if __name__ == "__main__":
    os.environ.setdefault("LC_ALL", "C")
    main()
