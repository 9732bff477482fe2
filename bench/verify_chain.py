"""B5: what verifying the whole chain costs the agent, against verifying only the head.

    .venv/bin/python bench/verify_chain.py [--commits 1000] [--repeat 5]

Makes a deploy branch of ``--commits`` Ed25519-signed deploy commits (trailers
``Gitops-Host`` and a rising ``Source-Generation``, a small different tree each) in a
temporary repository, then times gitops.agent.verify.check_deploy_head in the same run:

- the head only (what the agent did before: a first use, no floor below the head);
- the chain from the oldest commit (the floor an agent offline for ``--commits``
  publishes would have) to the head: every commit read, checked for its canonical
  encoding, its signature (at its committer date and now), its host, its parents and its
  Source-Generation.

Both must accept; prints the median of ``--repeat`` runs, the time per commit, and the
chain's time over the head's.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import machine as bench_machine
import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.agent.verify import AcceptedDeploy, Floor, FloorKind, Policy, check_deploy_head
from gitops.protocol import TRAILER_HOST, TRAILER_SOURCE_GENERATION
from gitops.trust import commits, keys
from gitops.trust.allowed_signers import AllowedSigners

PRINCIPAL = "publisher@example.org"
HOST = "web-1"


def make_chain(repo: pygit2.Repository, key: ed25519.Ed25519PrivateKey, count: int) -> list[str]:
    """``count`` signed deploy commits for HOST, oldest first."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    parents: list[pygit2.Oid] = []
    made = []
    for index in range(count):
        builder = repo.TreeBuilder()
        builder.insert(
            "configuration.nix",
            repo.create_blob(f"{{ generation = {index}; }}\n".encode()),
            pygit2.enums.FileMode.BLOB,
        )
        message = commits.format_message(
            f"deploy {HOST}: change {index}",
            "Changed: configuration.nix",
            {TRAILER_HOST: HOST, TRAILER_SOURCE_GENERATION: str(index + 1)},
        )
        author = commits.signature_of("Publisher", PRINCIPAL, start + timedelta(minutes=index))
        oid = commits.create_signed_commit(
            repo, tree=builder.write(), parents=parents, message=message, author=author, key=key
        )
        parents = [oid]
        made.append(str(oid))
    return made


def median_seconds(action: Callable[[], AcceptedDeploy], repeat: int) -> tuple[float, int]:
    times = []
    chain = 0
    for _ in range(repeat):
        started = time.perf_counter()
        chain = action().chain
        times.append(time.perf_counter() - started)
    return statistics.median(times), chain


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args(argv)
    count: int = args.commits
    print(
        f"B5 verify a chain of {count:,} deploy commits; "
        f"{bench_machine.describe([['git', '--version']], ['pygit2', 'cryptography'])}"
    )
    with tempfile.TemporaryDirectory(prefix="gitops-bench-chain-") as tmp:
        key = ed25519.Ed25519PrivateKey.generate()
        repo = pygit2.init_repository(str(Path(tmp) / "repo.git"), bare=True)
        started = time.perf_counter()
        shas = make_chain(repo, key, count)
        print(f"  signed {count:,} deploy commits in {time.perf_counter() - started:.2f} s")
        trust = AllowedSigners.parse(
            f'{PRINCIPAL} namespaces="git" {keys.public_line(key).strip()}\n'
        )
        policy = Policy(HOST, trust, datetime(2026, 6, 1, tzinfo=UTC))
        head = pygit2.Oid(hex=shas[-1])
        fresh = pygit2.Repository(str(Path(tmp) / "repo.git"))
        rows = [
            (
                "head only (first use)",
                *median_seconds(
                    lambda: check_deploy_head(
                        fresh, head, floor=Floor(FloorKind.FIRST_USE), policy=policy
                    ),
                    args.repeat,
                ),
            ),
            (
                f"chain from the oldest of {count:,}",
                *median_seconds(
                    lambda: check_deploy_head(
                        fresh, head, floor=Floor(FloorKind.APPLIED, shas[0]), policy=policy
                    ),
                    args.repeat,
                ),
            ),
        ]
    if rows[1][2] != count - 1:
        raise SystemExit(f"the chain verified {rows[1][2]} commits, expected {count - 1}")
    print(f"\n{'what':<36} {'commits':>8} {'ms (median)':>12} {'µs/commit':>10}")
    for name, seconds, chain in rows:
        print(f"{name:<36} {chain:>8,} {seconds * 1000:>12.2f} {seconds / chain * 1e6:>10.1f}")
    print(f"\nthe chain costs {rows[1][1] / rows[0][1]:.0f}x the head alone")
    return 0


if __name__ == "__main__":
    sys.exit(main())
