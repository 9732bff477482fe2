"""B6: what an unsigned push costs a host: bytes downloaded and the state directory's size.

    .venv/bin/python bench/unsigned_push.py [--size-mb 200] [--pushes 2]

A one-host stand-in fleet (gitops.demo: a bare git server, real signatures, real Nix; needs
nix) served over git's smart HTTP (git-http-backend, ``uploadpack.allowFilter`` on unless
``--no-filter``) through
a counting TCP proxy. The agent applies the signed deploy commit, then someone without a
publisher key pushes ``--pushes`` unsigned commits to ``deploy/<host>``, each adding a
``--size-mb`` MB blob of random bytes, and the agent runs a cycle after each. Prints the
bytes received from the server during each refused cycle and the state directory's size
before and after. Runs with any version of the agent (the same calls), so the figures of
an older one can be printed beside these.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import machine as bench_machine
import pygit2

from gitops.agent.cycle import Cycle
from gitops.demo.scenario import DemoFleet, git
from gitops.protocol import deploy_ref
from gitops.trust import commits
from testing import servers
from testing.helpers import published_demo

HOST = "web-1"
MIB = 1024 * 1024


def size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def push_unsigned(demo: DemoFleet, megabytes: int) -> None:
    repo = demo.repository()
    head = git("rev-parse", deploy_ref(HOST), cwd=demo.server)
    parent = repo.get(head)
    if not isinstance(parent, pygit2.Commit):
        raise SystemExit(f"{head} is not a commit")
    builder = repo.TreeBuilder(parent.tree)
    blob = repo.create_blob(os.urandom(megabytes * MIB))
    builder.insert("big.bin", blob, pygit2.enums.FileMode.BLOB)
    who = commits.signature_of("Mallory", "mallory@example.org")
    message = f"deploy {HOST}: totally legit\n\nGitops-Host: {HOST}\n"
    sha = repo.create_commit(None, who, who, message, builder.write(), [parent.id])
    git("push", "-q", "--force", str(demo.server), f"{sha}:{deploy_ref(HOST)}", cwd=demo.repo_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--size-mb", type=int, default=200)
    parser.add_argument("--pushes", type=int, default=2)
    parser.add_argument(
        "--no-filter",
        action="store_true",
        help="the server does not allow filtered fetches (uploadpack.allowFilter false)",
    )
    args = parser.parse_args(argv)
    print(
        f"B6 {args.pushes} unsigned pushes of {args.size_mb} MB each"
        f"{' (server without filters)' if args.no_filter else ''}; "
        f"{bench_machine.describe([['git', '--version'], ['nix', '--version']])}"
    )
    with tempfile.TemporaryDirectory(prefix="gitops-bench-unsigned-") as tmp:
        demo = published_demo(Path(tmp) / "demo", {HOST: ["server"]})
        allow = "false" if args.no_filter else "true"
        git("config", "uploadpack.allowFilter", allow, cwd=demo.server)
        with (
            servers.git_http_server(demo.root, token=None) as http,
            servers.CountingProxy(http.port) as proxy,
        ):
            url = f"http://{servers.LOOPBACK}:{proxy.port}/{demo.server.name}"
            config = demo.agent_config(HOST)
            config = replace(config, remote=url)
            first = Cycle(config, sleep=lambda _: None).run()
            print(f"  first cycle: {first.result}")
            state = config.state_dir
            before = size(state)
            print(f"  state dir after the first apply: {before / MIB:.2f} MiB")
            for number in range(1, args.pushes + 1):
                push_unsigned(demo, args.size_mb)
                proxy.reset()
                result = Cycle(config, sleep=lambda _: None).run()
                print(
                    f"  unsigned push {number}: {result.result}, "
                    f"{proxy.from_server / 1024:.1f} KiB from the server, "
                    f"state dir {size(state) / MIB:.2f} MiB"
                )
            grown = size(state) - before
    print(f"\nthe state dir grew by {grown / MIB:.2f} MiB over {args.pushes} refused pushes")
    return 0


if __name__ == "__main__":
    sys.exit(main())
