"""B3: what one idle agent poll costs, by fleet size: the git CLI with protocol v2 (what
gitops.system.transport.fetch runs) against pygit2's Remote.fetch (libgit2, protocol v0/v1 only).

    .venv/bin/python bench/poll_cost.py [--hosts 100 1000 5000] [--polls 20]

For each fleet size, a bare repository with ``deploy/<host>`` and ``reports/<host>`` for
every host (one commit each, written with git fast-import) is served on 127.0.0.1 by
``git daemon`` (git://) and by git's smart-HTTP CGI (git-http-backend behind a Basic-auth
token, tests/servers.py). Every connection goes through a counting TCP proxy, so the bytes
are what crossed the wire, both ways. One agent (a host in the middle of the fleet) first
fetches its deploy branch, then polls ``--polls`` times with nothing new:

- ``git v2``: gitops.system.transport.fetch (``git -c protocol.version=2 fetch``), a new git
  process each poll, as the agent does;
- ``git v0``: the same git command with ``-c protocol.version=0``, to show that it is the
  protocol, not the CLI, that matters;
- ``pygit2``: ``Remote.fetch`` of the same refspec, in-process.

Printed: bytes per poll (from the server / to the server) and the median wall time per
poll; the ratios are pygit2 over git v2.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pygit2

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the testing/ package

import machine as bench_machine

from gitops.system import transport
from testing import servers  # the loopback servers the tests use

TOKEN = "bench-token-0123456789"
INCOMING = "refs/gitops/incoming"
Poll = Callable[[], None]


@dataclass(frozen=True)
class Cost:
    client: str
    down: int  # bytes from the server, per poll
    up: int  # bytes to the server, per poll
    seconds: float  # median wall time per poll

    def row(self) -> str:
        return f"{self.client:<8} {self.down:>12,} {self.up:>10,} {self.seconds * 1000:>10.1f}"


def machine() -> str:
    return bench_machine.describe([["git", "--version"]], ["pygit2"]) + (
        f" (libgit2 {pygit2.LIBGIT2_VERSION})"
    )


def measure(
    proxy: servers.CountingProxy, polls: int, proxied: Poll, direct: Poll, client: str
) -> Cost:
    """Bytes of one idle poll through the proxy; median time of ``polls`` direct ones."""
    proxied()  # the first fetch brings the host's deploy commit
    proxy.reset()
    proxied()
    down, up = proxy.from_server, proxy.to_server
    times = []
    for _ in range(polls):
        started = time.perf_counter()
        direct()
        times.append(time.perf_counter() - started)
    return Cost(client, down, up, statistics.median(times))


def git_poll(git_dir: Path, url: str, host: str, env: dict[str, str], version: int) -> Poll:
    spec = f"+refs/heads/deploy/{host}:{INCOMING}"
    if version == 2:
        return lambda: transport.fetch(git_dir, url, [spec], env=env)

    def v0() -> None:
        subprocess.run(
            [
                *("git", "-c", f"protocol.version={version}", "--git-dir", str(git_dir)),
                *("fetch", "--quiet", "--no-tags", "--no-write-fetch-head", "--no-auto-gc"),
                *(url, spec),
            ],
            check=True,
            env={**os.environ, **env},
        )

    return v0


def pygit2_poll(git_dir: Path, url: str, host: str, token: str | None) -> Poll:
    repo = pygit2.Repository(str(git_dir))
    remote = repo.remotes.create_anonymous(url)
    callbacks = pygit2.RemoteCallbacks(
        credentials=pygit2.UserPass("gitops", token) if token else None
    )
    spec = f"+refs/heads/deploy/{host}:{INCOMING}"

    def poll() -> None:
        remote.fetch([spec], callbacks=callbacks)

    return poll


def bench_size(
    work: Path, daemon: servers.GitDaemon, http: servers.HttpServer, hosts: int, polls: int
) -> dict[str, list[Cost]]:
    repo = work / "served" / f"fleet-{hosts}.git"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(repo)], check=True)
    servers.add_fleet_refs(repo, servers.host_names(hosts))
    host = servers.host_names(hosts)[hosts // 2]
    token_file = work / "token"
    results: dict[str, list[Cost]] = {}
    for server_name, port, scheme in (
        ("git daemon", daemon.port, "git"),
        ("http", http.port, "http"),
    ):
        costs = []
        is_http = server_name == "http"
        env = transport.Credentials(http_token_file=token_file if is_http else None).env()
        with servers.CountingProxy(port) as proxy:
            for client in ("git v2", "git v0", "pygit2"):
                git_dir = work / "agents" / f"{hosts}-{server_name}-{client}.git".replace(" ", "-")
                subprocess.run(["git", "init", "-q", "--bare", str(git_dir)], check=True)
                pollers = []
                for url in (
                    f"{scheme}://{servers.LOOPBACK}:{through}/{repo.name}"
                    for through in (proxy.port, port)
                ):
                    if client == "pygit2":
                        pollers.append(pygit2_poll(git_dir, url, host, TOKEN if is_http else None))
                    else:
                        version = int(client[-1])
                        pollers.append(git_poll(git_dir, url, host, env, version))
                costs.append(measure(proxy, polls, pollers[0], pollers[1], client))
        results[server_name] = costs
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--hosts", type=int, nargs="+", default=[100, 1000, 5000])
    parser.add_argument("--polls", type=int, default=20, help="idle polls measured per client")
    args = parser.parse_args(argv)
    print(f"B3 idle poll cost; {machine()}")
    print(
        f"  {args.polls} idle polls per client; bytes per poll on the wire (through the proxy); median ms per poll (direct)"
    )
    summary = []
    with tempfile.TemporaryDirectory(prefix="gitops-bench-poll-") as tmp:
        work = Path(tmp)
        (work / "served").mkdir()
        (work / "agents").mkdir()
        (work / "token").write_text(TOKEN, encoding="utf-8")
        with (
            servers.git_daemon(work / "served", work / "daemon.log") as daemon,
            servers.git_http_server(work / "served", token=TOKEN) as http,
        ):
            for hosts in args.hosts:
                results = bench_size(work, daemon, http, hosts, args.polls)
                for server_name, costs in results.items():
                    print(f"\n{hosts:,} hosts ({2 * hosts:,} refs), {server_name}")
                    print(f"{'client':<8} {'bytes down':>12} {'bytes up':>10} {'ms/poll':>10}")
                    for cost in costs:
                        print(cost.row())
                    by = {c.client: c for c in costs}
                    v2, lg = by["git v2"], by["pygit2"]
                    print(
                        f"pygit2 / git v2: {lg.down / v2.down:.1f}x bytes down, "
                        f"{lg.seconds / v2.seconds:.2f}x time"
                    )
                    summary.append((hosts, server_name, v2, by["git v0"], lg))
    print("\nSummary (bytes down per idle poll)")
    print(f"{'hosts':>6} {'server':<11} {'git v2':>9} {'git v0':>11} {'pygit2':>11} {'ratio':>7}")
    for hosts, server_name, v2, v0, lg in summary:
        print(
            f"{hosts:>6,} {server_name:<11} {v2.down:>9,} {v0.down:>11,} {lg.down:>11,} "
            f"{lg.down / v2.down:>6.0f}x"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
