"""B7: the gitops server's CPU per report push and per idle poll, this checkout against an
older one, side by side in the same run.

    .venv/bin/python bench/server_cpu.py [--hosts 100] [--pushes 20] [--before REV]

A fleet of ``--hosts`` hosts (bench/report_push.py's: main with a key per host, a deploy
and a reports branch each) is made once. For each contender, ``gitops server init`` (the
contender's own CLI) makes a server directory from it, and a real sshd on loopback serves
it through the generated authorized_keys (forced commands) and hooks:

* ``now``: this checkout;
* ``before``: the ``gitops/`` of ``--before REV`` (default: the commit this branch left
  main at, ``git merge-base HEAD main``), extracted with ``git archive``.

One host then pushes ``--pushes`` signed reports to each server in turn (before, now,
before, now, ...: the machine's load moves, and both see the same), each followed by an
idle poll of its deploy branch. Server CPU is sshd's and its children's (the forced
command, git, the hooks), from /proc, counted after each connection is over. A report push
costs the same at 10 hosts or 10,000 (bench/report_push.py), so a small fleet is enough.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the testing/ package

import machine as bench_machine
import report_push

from gitops.protocol import deploy_ref, reports_ref
from gitops.report_commits import create_report_commit
from gitops.system import transport
from gitops.trust import keys
from testing import servers

ROOT = Path(__file__).resolve().parent.parent


@dataclass
class Contender:
    name: str
    code: Path  # the directory holding its gitops/ package
    url: str = ""
    env: dict[str, str] = field(default_factory=dict)
    client: Path = Path()
    sshd_pid: int = 0
    push_ms: list[float] = field(default_factory=list)
    poll_ms: list[float] = field(default_factory=list)

    @property
    def command(self) -> str:
        return f"env PYTHONPATH={self.code} {sys.executable} -m gitops"


def extract(rev: str, into: Path) -> Path:
    """``rev``'s gitops/ package, as ``git archive`` gives it."""
    into.mkdir()
    archive = into / "gitops.tar"
    subprocess.run(
        ["git", "-C", ROOT, "archive", "--format=tar", "-o", archive, rev, "gitops"], check=True
    )
    with tarfile.open(archive) as tar:
        tar.extractall(into, filter="data")
    archive.unlink()
    return into


def init_server(contender: Contender, source: Path, directory: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "gitops", "server", "init", "--dir", directory,
         "--repo", source, "--command", contender.command],
        check=True, capture_output=True, text=True,
        env={**os.environ, "PYTHONPATH": str(contender.code)},
    )  # fmt: skip


@contextmanager
def served(
    contender: Contender, work: Path, fleet: report_push.Fleet, host: str, key: Path
) -> Iterator[None]:
    directory = work / f"server-{contender.name}"
    init_server(contender, fleet.source, directory)
    with servers.sshd(
        work / f"sshd-{contender.name}",
        authorized_keys=directory / "authorized_keys",
        settings=report_push.snippet(directory),
    ) as ssh:
        known = work / f"known-{contender.name}"
        known.write_text(ssh.known_hosts_line())
        contender.env = transport.Credentials(ssh_key=key, known_hosts=known).env()
        contender.url = f"ssh://{ssh.user}@{servers.LOOPBACK}:{ssh.port}/hosts/{host}.git"
        contender.client = work / f"client-{contender.name}.git"
        contender.sshd_pid = ssh.process.pid
        pygit2.init_repository(str(contender.client), bare=True)
        ref = reports_ref(host)
        transport.fetch(contender.client, contender.url, [f"+{ref}:{ref}"], env=contender.env)
        spec = f"+{deploy_ref(host)}:refs/gitops/incoming"
        transport.fetch(contender.client, contender.url, [spec], env=contender.env)
        yield


def one_round(contender: Contender, host: str, key: Path) -> None:
    repo = pygit2.Repository(str(contender.client))
    ref = reports_ref(host)
    parent = repo.references[ref].target
    assert isinstance(parent, pygit2.Oid)
    new = create_report_commit(
        repo, report_push.report(host), parent=parent, key=keys.load_signing_key(key)
    )
    before = report_push.server_cpu(contender.sshd_pid)
    pushed = transport.push(contender.client, contender.url, [f"{new}:{ref}"], env=contender.env)
    after = report_push.server_cpu(contender.sshd_pid)
    assert pushed.ok, pushed
    repo.references.create(ref, new, force=True)
    contender.push_ms.append((after - before) * 1000)
    spec = f"+{deploy_ref(host)}:refs/gitops/incoming"
    transport.fetch(contender.client, contender.url, [spec], env=contender.env)
    contender.poll_ms.append((report_push.server_cpu(contender.sshd_pid) - after) * 1000)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):6.0f} ({min(values):.0f}-{max(values):.0f})"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, default=100)
    parser.add_argument("--pushes", type=int, default=20)
    parser.add_argument("--before", help="the older commit (default: git merge-base HEAD main)")
    args = parser.parse_args(argv)
    before_rev = (
        args.before
        or subprocess.run(
            ["git", "-C", ROOT, "merge-base", "HEAD", "main"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout.strip()
    )
    print(
        "B7 server CPU per report push; "
        + bench_machine.describe([["git", "--version"], ["ssh", "-V"]], ["pygit2"])
        + f"; load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="gitops-bench-cpu-") as tmp, ExitStack() as stack:
        work = Path(tmp)
        fleet = report_push.make_fleet(work, args.hosts, with_keys=1, reports=True)
        host, key = next(iter(fleet.key_files.items()))
        contenders = [
            Contender("before", extract(before_rev, work / "before")),
            Contender("now", ROOT),
        ]
        for contender in contenders:
            stack.enter_context(served(contender, work, fleet, host, key))
        for _ in range(args.pushes):
            for contender in contenders:
                one_round(contender, host, key)
        print(
            f"\n{args.hosts} hosts, {args.pushes} report pushes and idle polls each, "
            "interleaved; server CPU in ms: median (min-max)"
        )
        print(f"{'server':<20} {'per report push':>20} {'per idle poll':>20}")
        for contender in contenders:
            label = f"before {before_rev[:8]}" if contender.name == "before" else "now"
            print(f"{label:<20} {summary(contender.push_ms):>20} {summary(contender.poll_ms):>20}")
        old, new = (statistics.median(c.push_ms) for c in contenders)
        print(f"per report push: now / before = {new / old:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
