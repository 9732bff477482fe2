"""B4: what a report push costs by fleet size, one shared repository against the gitops
server, and 1,000 agents reporting at once through the server.

    .venv/bin/python bench/report_push.py [--hosts 1000 5000 10000] [--agents 1000]
        [--concurrency 1000] [--no-cost] [--no-storm]

**Cost.** For each fleet size N, a source repository holds main (``fleet.yaml`` and N
``hosts/<host>/host.yaml`` with a key each) and ``deploy/<host>`` + ``reports/<host>``
for every host (git fast-import). Side by side, in the same run:

- ``old``: that repository itself, served by sshd as a plain bare repository (the set-up
  the docs described before the server: two refs per host in one repository);
- ``new``: ``gitops server init`` from it (the real CLI), served by sshd through the
  generated authorized_keys (forced commands) and hooks: each host has its own repository.

One host in the middle of the fleet pushes one signed report with
gitops.system.transport.push (what the agent runs), then polls its deploy branch twice with
transport.fetch (protocol v2; the second poll is the idle one). Bytes are counted on the
wire by a TCP proxy in front of sshd, so they include ssh's own handshake (about 3 KB);
the refs the server advertised are counted from GIT_TRACE_PACKET. Server CPU is sshd's
and its children's (the forced command, git, the hooks), from /proc.

**Storm.** A fleet of ``--agents`` hosts (each with its own key) behind the server, sshd
configured as the shipped snippet says (MaxStartups 1000:30:2000). Every agent has one
report committed locally; then all push at once (``--concurrency`` threads, each running
the agent's own Reporter.push: git push over ssh, jittered backoff when the server is
busy). Agents whose attempts ran out push again in a second cycle, as the agent would at
its next poll. Checked afterwards: every host's report is on its own repository and in
fleet.git exactly once (by Report-Id), none lost, none duplicated.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the testing/ package

import machine as bench_machine

from gitops.agent.mirror import Mirror
from gitops.agent.reporter import Reporter
from gitops.protocol import Report, Result, deploy_ref, reports_ref
from gitops.report_commits import create_report_commit, read_report_commit, walk_reports
from gitops.system import transport
from gitops.trust import keys
from testing import servers

PUBLISHER = "publisher@example.org"
# Stock sshd's pre-authentication limit, for the plain repository (the set-up before the
# server); the server's sshd gets the snippet the server ships (server/sshd_config).
STOCK_SSHD = ("MaxStartups 10:30:100",)
_ADVERTISED = re.compile(r"push< [0-9a-f]{40} (refs/\S+)")


# -- a fleet ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Fleet:
    source: Path  # the shared repository ("old") the server is made from
    hosts: list[str]
    key_files: dict[str, Path]  # hosts whose private key is on disk


def _fast_import(repo: Path, stream: bytes) -> None:
    subprocess.run(
        ["git", "--git-dir", repo, "fast-import", "--quiet", "--done"], check=True, input=stream
    )


def _write_main(repo: Path, lines: dict[str, str], publisher_line: str) -> None:
    """main: fleet.yaml and hosts/<host>/host.yaml (its key) for every host."""
    parts: list[bytes] = []
    files = {
        "fleet.yaml": f"name: bench\npublishers:\n  - principal: {PUBLISHER}\n"
        f"    key: {publisher_line}\n",
        **{f"hosts/{host}/host.yaml": f"key: {line}\n" for host, line in lines.items()},
    }
    message = b"bench fleet"
    parts.append(
        b"commit refs/heads/main\n"
        + f"committer Admin <admin@example.org> {servers.FIXED_DATE}\n".encode()
        + b"data %d\n%s\n" % (len(message), message)
    )
    for path, text in files.items():
        data = text.encode()
        parts.append(b"M 100644 inline %s\ndata %d\n%s\n" % (path.encode(), len(data), data))
    parts.append(b"\ndone\n")
    _fast_import(repo, b"".join(parts))


def _write_key(path: Path, key: ed25519.Ed25519PrivateKey) -> Path:
    """The key pair ssh reads (not fsynced: a thousand of them, thrown away after)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    private = key.private_bytes(Encoding.PEM, PrivateFormat.OpenSSH, NoEncryption())
    path.write_bytes(private)
    path.chmod(0o600)
    path.with_name(path.name + ".pub").write_text(keys.public_line(key))
    return path


def make_fleet(work: Path, count: int, *, with_keys: int, reports: bool) -> Fleet:
    """``count`` hosts; the first ``with_keys`` (from the middle of the fleet) get key files."""
    hosts = servers.host_names(count)
    source = work / f"source-{count}.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", source], check=True)
    servers.add_fleet_refs(source, hosts)
    if not reports:
        refs = subprocess.run(
            ["git", "--git-dir", source, "for-each-ref", "--format=delete %(refname)",
             "refs/heads/reports/"],
            check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip
        subprocess.run(
            ["git", "--git-dir", source, "update-ref", "--stdin"], input=refs, text=True, check=True
        )
    start = count // 2 - with_keys // 2
    keyed = hosts[start : start + with_keys]
    key_dir = work / f"keys-{count}"
    key_files = {}
    lines = {}
    for host in hosts:
        key = ed25519.Ed25519PrivateKey.generate()
        lines[host] = keys.public_line(key).strip()
        if host in keyed:
            key_files[host] = _write_key(key_dir / host, key)
    publisher = ed25519.Ed25519PrivateKey.generate()
    _write_main(source, lines, keys.public_line(publisher).strip())
    return Fleet(source, hosts, key_files)


def init_server(fleet: Fleet, directory: Path) -> tuple[Path, float]:
    started = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "gitops", "server", "init", "--dir", directory,
         "--repo", fleet.source, "--command", servers.gitops_command()],
        check=True, capture_output=True, text=True,
    )  # fmt: skip
    return directory, time.perf_counter() - started


# -- measuring -------------------------------------------------------------------------------


def server_cpu(pid: int) -> float:
    """CPU seconds of a process and its waited-for descendants (/proc/<pid>/stat), once
    the connections it served are over: a child counts only after sshd has reaped it."""
    deadline = time.monotonic() + 10
    children = Path(f"/proc/{pid}/task/{pid}/children")
    while children.read_text().strip() and time.monotonic() < deadline:
        time.sleep(0.02)
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


def report(host: str) -> Report:
    return Report(
        host=host,
        time=datetime.now(UTC).replace(microsecond=0),
        agent_version="bench",
        result=Result.UNCHANGED,
        reason="heartbeat",
        report_id=str(uuid.uuid4()),
    )


def snippet(server: Path) -> list[str]:
    return (server / "sshd_config").read_text().splitlines()


@contextmanager
def proxied_sshd(
    work: Path, name: str, authorized_keys: Path | None = None, settings: Sequence[str] = STOCK_SSHD
) -> Iterator[tuple[servers.SshServer, servers.CountingProxy, Path]]:
    with (
        servers.sshd(work / name, authorized_keys=authorized_keys, settings=settings) as ssh,
        servers.CountingProxy(ssh.port) as proxy,
    ):
        known = work / f"{name}-known_hosts"
        known.write_text(
            ssh.known_hosts_line() + f"[{servers.LOOPBACK}]:{proxy.port} {ssh.host_public_key}\n"
        )
        yield ssh, proxy, known


@dataclass(frozen=True)
class Cost:
    layout: str
    push_down: int  # bytes from the server for one report push
    push_up: int
    advertised: int  # refs the server advertised to that push
    poll_down: int  # bytes from the server for one idle poll
    cpu_ms: float  # server CPU for the push
    poll_cpu_ms: float  # server CPU for the idle poll


def measure(
    work: Path,
    ssh: servers.SshServer,
    proxy: servers.CountingProxy,
    known: Path,
    *,
    layout: str,
    path: str,
    host: str,
    key: Path,
) -> Cost:
    env = transport.Credentials(ssh_key=key, known_hosts=known).env()
    url = f"ssh://{ssh.user}@{servers.LOOPBACK}:{proxy.port}{path}"
    client = work / f"client-{layout}-{host}.git"
    pygit2.init_repository(str(client), bare=True)
    ref = reports_ref(host)
    transport.fetch(client, url, [f"+{ref}:{ref}"], env=env)
    repo = pygit2.Repository(str(client))
    parent = repo.references[ref].target
    assert isinstance(parent, pygit2.Oid)
    new = create_report_commit(repo, report(host), parent=parent, key=keys.load_signing_key(key))
    trace = work / f"trace-{layout}-{host}"
    proxy.reset()
    cpu = server_cpu(ssh.process.pid)
    pushed = transport.push(
        client, url, [f"{new}:{ref}"], env={**env, "GIT_TRACE_PACKET": str(trace)}
    )
    cpu = server_cpu(ssh.process.pid) - cpu
    assert pushed.ok, pushed
    push_down, push_up = proxy.from_server, proxy.to_server
    advertised = len(_ADVERTISED.findall(trace.read_text(errors="replace")))
    spec = f"+{deploy_ref(host)}:refs/gitops/incoming"
    transport.fetch(client, url, [spec], env=env)
    proxy.reset()
    poll_cpu = server_cpu(ssh.process.pid)
    transport.fetch(client, url, [spec], env=env)  # nothing new: the idle poll
    poll_cpu = server_cpu(ssh.process.pid) - poll_cpu
    return Cost(
        layout, push_down, push_up, advertised, proxy.from_server, cpu * 1000, poll_cpu * 1000
    )


def bench_cost(work: Path, count: int) -> tuple[list[Cost], float]:
    fleet = make_fleet(work, count, with_keys=1, reports=True)
    host, key = next(iter(fleet.key_files.items()))
    server, init_seconds = init_server(fleet, work / f"server-{count}")
    costs = []
    with proxied_sshd(work, f"sshd-old-{count}") as (ssh, proxy, known):
        ssh.authorize(key.with_name(key.name + ".pub").read_text())
        costs.append(
            measure(
                work, ssh, proxy, known, layout="old", path=str(fleet.source), host=host, key=key
            )
        )
    with proxied_sshd(work, f"sshd-new-{count}", server / "authorized_keys", snippet(server)) as (
        ssh,
        proxy,
        known,
    ):
        costs.append(
            measure(
                work, ssh, proxy, known, layout="new", path=f"/hosts/{host}.git", host=host, key=key
            )
        )
    return costs, init_seconds


# -- the storm -------------------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    host: str
    landed: bool
    seconds: float
    retries: int
    message: str


def _push(reporter: Reporter) -> Pushed:
    started = time.perf_counter()
    outcome = reporter.push()
    return Pushed(
        reporter.mirror.host,
        outcome.pushed,
        time.perf_counter() - started,
        reporter.retries,
        outcome.message,
    )


def _landed_once(server: Path, host: str, report_id: str) -> tuple[bool, int]:
    """(on both repositories, with the same head; how many commits carry the id)."""
    fleet = pygit2.Repository(str(server / "fleet.git"))
    own = pygit2.Repository(str(server / "hosts" / f"{host}.git"))
    head = fleet.references.get(reports_ref(host))
    mine = own.references.get(reports_ref(host))
    if head is None or mine is None or head.target != mine.target:
        return False, 0
    assert isinstance(head.target, pygit2.Oid)
    ids = [read_report_commit(fleet, oid).report_id for oid in walk_reports(fleet, head.target)]
    return True, ids.count(report_id)


def percentile(values: Sequence[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def bench_storm(work: Path, agents: int, concurrency: int) -> None:
    work = work / "storm"
    work.mkdir()
    fleet = make_fleet(work, agents, with_keys=agents, reports=False)
    server, init_seconds = init_server(fleet, work / "server-storm")
    slots = len(list((server / "slots").glob("push-*")))
    places = len(list((server / "slots").glob("queue-*")))
    print(
        f"\nStorm: {agents} agents, {concurrency} pushing at once; server made in "
        f"{init_seconds:.1f}s; {slots} push slots, {places} places in the queue; sshd: the shipped snippet (MaxStartups 1000:30:2000)"
    )
    with proxied_sshd(work, "sshd-storm", server / "authorized_keys", snippet(server)) as (
        ssh,
        _proxy,
        known,
    ):
        reporters = []
        ids = {}
        for host in fleet.hosts:
            key = fleet.key_files[host]
            credentials = transport.Credentials(ssh_key=key, known_hosts=known)
            url = f"ssh://{ssh.user}@{servers.LOOPBACK}:{ssh.port}/hosts/{host}.git"
            reporter = Reporter(
                Mirror(work / "agents" / host, host), keys.load_signing_key(key), url, credentials
            )
            written = report(host)
            reporter.add(written)
            ids[host] = written.report_id
            reporters.append(reporter)
        cycles: list[list[Pushed]] = []
        cpu = server_cpu(ssh.process.pid)
        client = os.times()
        started = time.perf_counter()
        waiting = reporters
        while waiting and len(cycles) < 5:
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                results = list(pool.map(_push, waiting))
            cycles.append(results)
            left = {r.host for r in results if not r.landed}
            waiting = [r for r in waiting if r.mirror.host in left]
        wall = time.perf_counter() - started
        cpu = server_cpu(ssh.process.pid) - cpu
        after = os.times()
    client_cpu = (after.user + after.system + after.children_user + after.children_system) - (
        client.user + client.system + client.children_user + client.children_system
    )
    checked = {host: _landed_once(server, host, ids[host]) for host in fleet.hosts}
    lost = [h for h, (ok, _) in checked.items() if not ok]
    duplicated = [h for h, (ok, n) in checked.items() if ok and n != 1]
    first = cycles[0]
    landed = [r for r in first if r.landed]
    latencies = [r.seconds for r in landed]
    retries = [r.retries for cycle in cycles for r in cycle]
    print(f"  wall {wall:.1f}s for all {agents} reports; cycles needed: {len(cycles)}")
    for number, cycle in enumerate(cycles, start=1):
        print(f"  cycle {number}: {sum(r.landed for r in cycle)} of {len(cycle)} landed")
    if latencies:
        print(
            f"  latency (cycle 1, landed): p50 {percentile(latencies, 0.5):.1f}s, "
            f"p90 {percentile(latencies, 0.9):.1f}s, max {max(latencies):.1f}s"
        )
    histogram = {n: retries.count(n) for n in sorted(set(retries))}
    print(f"  retries per push (after the first attempt): {histogram}")
    print(
        f"  server CPU {cpu:.1f}s ({cpu / agents * 1000:.0f} ms per report), "
        f"clients' CPU {client_cpu:.1f}s, on {os.cpu_count()} CPUs"
    )
    print(f"  lost: {len(lost)}, duplicated: {len(duplicated)}")
    # What the pushes that ran out of attempts were last told (hosts and ports blurred).
    told = Counter(
        re.sub(r"host-\d+|:\d+|port \d+", "N", r.message)
        for cycle in cycles
        for r in cycle
        if not r.landed
    )
    for message, times in told.most_common(5):
        print(f"  {times} pushes ran out of attempts, last told: {message}")
    assert not lost and not duplicated, (lost[:5], duplicated[:5])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, nargs="+", default=[1000, 5000, 10000])
    parser.add_argument("--agents", type=int, default=1000)
    parser.add_argument("--concurrency", type=int, default=1000, help="agents pushing at once")
    parser.add_argument("--no-cost", action="store_true")
    parser.add_argument("--no-storm", action="store_true")
    args = parser.parse_args(argv)
    print(
        "B4 report push; "
        + bench_machine.describe([["git", "--version"], ["ssh", "-V"]], ["pygit2"])
        + f"; load average {os.getloadavg()[0]:.1f}"
    )
    with tempfile.TemporaryDirectory(prefix="gitops-bench-push-") as tmp:
        work = Path(tmp)
        if not args.no_cost:
            rows = []
            for count in args.hosts:
                costs, init_seconds = bench_cost(work, count)
                rows.append((count, costs, init_seconds))
                print(
                    f"  {count:,} hosts done (gitops server init: {init_seconds:.1f}s)", flush=True
                )
            print(
                "\nBytes per report push and per idle poll, from the server, on the wire (ssh included)"
            )
            print(
                f"{'hosts':>7} {'layout':<6} {'refs adv.':>9} {'push down':>10} {'push up':>8} {'poll down':>9} {'push CPU ms':>11} {'poll CPU ms':>11}"
            )
            for count, costs, _ in rows:
                for cost in costs:
                    print(
                        f"{count:>7,} {cost.layout:<6} {cost.advertised:>9,} {cost.push_down:>10,} "
                        f"{cost.push_up:>8,} {cost.poll_down:>9,} {cost.cpu_ms:>11.0f} {cost.poll_cpu_ms:>11.0f}"
                    )
            print(f"\n{'hosts':>7} {'gitops server init (s)':>22}")
            for count, _, init_seconds in rows:
                print(f"{count:>7,} {init_seconds:>22.1f}")
        if not args.no_storm:
            bench_storm(work, args.agents, args.concurrency)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
