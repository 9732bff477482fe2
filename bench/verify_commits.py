"""B1: verifying signed commits in-process (gitops.trust.commits.verify_commit) against
``git verify-commit``, on the same commits.

    .venv/bin/python bench/verify_commits.py [--commits 1000]

Makes ``--commits`` Ed25519-signed commits in a temporary repository with
gitops.trust.commits.create_signed_commit (one chain, a small different tree each), then
verifies every one of them:

- in-process: gitops.trust.commits.verify_commit (read the raw object, split the signature off
  git's way, check it with libsodium, and the allowed-signers rules at the committer date
  *and* at now) against an AllowedSigners list; the best of ``--repeat`` runs, wall and CPU
  time (CPU time is steadier on a shared machine);
- git, one ``git verify-commit <sha>`` per commit (what a script would do);
- git, one ``git verify-commit <sha> <sha> ...`` for all commits at once (git accepts
  several; still two ssh-keygen runs per commit: find-principals, then verify);
- git, ``git log --format=%G?`` over the chain (one git process);
- git, the batch split across all CPUs (``xargs -P``-style), the fastest git can do here.

Every method must accept every commit, or the script fails. Prints seconds, commits per
second, and each git method's time over the in-process time.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path

import machine as bench_machine
import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.trust import commits, keys
from gitops.trust.allowed_signers import AllowedSigners

PRINCIPAL = "publisher@example.org"


def machine() -> str:
    return bench_machine.describe([["git", "--version"], ["ssh", "-V"]], ["pygit2"])


def make_commits(repo: pygit2.Repository, key: ed25519.Ed25519PrivateKey, count: int) -> list[str]:
    """A chain of ``count`` signed commits; returns their ids, oldest first."""
    start = datetime(2026, 1, 1, tzinfo=UTC)
    parent: list[pygit2.Oid] = []
    made = []
    for index in range(count):
        blob = repo.create_blob(f"generation {index}\n".encode())
        builder = repo.TreeBuilder()
        builder.insert("status.json", blob, pygit2.enums.FileMode.BLOB)
        author = commits.signature_of("Publisher", PRINCIPAL, start + timedelta(minutes=index))
        oid = commits.create_signed_commit(
            repo,
            tree=builder.write(),
            parents=parent,
            message=f"deploy web-1: change {index}\n",
            author=author,
            key=key,
        )
        parent = [oid]
        made.append(str(oid))
    repo.references.create("refs/heads/main", parent[0], force=True)
    return made


def timed(action: Callable[[], None]) -> float:
    started = time.perf_counter()
    action()
    return time.perf_counter() - started


def cpu_timed(action: Callable[[], None]) -> float:
    started = time.process_time()
    action()
    return time.process_time() - started


def git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "--git-dir", str(repo), *args], check=False, capture_output=True, text=True
    )


def verify_loop(repo: Path, shas: Sequence[str]) -> None:
    for sha in shas:
        result = git(repo, "verify-commit", sha)
        if result.returncode != 0:
            raise SystemExit(f"git verify-commit {sha} failed: {result.stderr}")


def verify_batch(repo: Path, shas: Sequence[str]) -> None:
    result = git(repo, "verify-commit", *shas)
    if result.returncode != 0:
        raise SystemExit(f"git verify-commit (batch) failed: {result.stderr[-2000:]}")


def verify_log(repo: Path, count: int) -> None:
    result = git(repo, "log", "--format=%G?", "main")
    marks = result.stdout.split()
    if result.returncode != 0 or len(marks) != count or set(marks) != {"G"}:
        raise SystemExit(f"git log --format=%G?: not all good: {sorted(set(marks))}")


def verify_parallel(repo: Path, shas: Sequence[str], workers: int) -> None:
    size = (len(shas) + workers - 1) // workers
    chunks = [shas[i : i + size] for i in range(0, len(shas), size)]
    with ThreadPoolExecutor(workers) as pool:
        list(pool.map(lambda chunk: verify_batch(repo, chunk), chunks))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--commits", type=int, default=1000)
    parser.add_argument(
        "--repeat", type=int, default=5, help="in-process runs; the best one is reported"
    )
    parser.add_argument(
        "--loop-sample",
        type=int,
        default=0,
        help="time the one-process-per-commit loop on this many commits only (0: all)",
    )
    args = parser.parse_args(argv)
    count: int = args.commits
    print(f"B1 verify {count:,} Ed25519-signed commits; {machine()}")
    with tempfile.TemporaryDirectory(prefix="gitops-bench-verify-") as tmp:
        work = Path(tmp)
        key = ed25519.Ed25519PrivateKey.generate()
        keys.write_keypair(work / "publisher", key, PRINCIPAL)
        signers = work / "allowed_signers"
        signers.write_text(
            f'{PRINCIPAL} namespaces="git" {keys.public_line(key).strip()}\n', encoding="utf-8"
        )
        repo_path = work / "repo.git"
        repo = pygit2.init_repository(str(repo_path), bare=True)
        for name, value in (
            ("gpg.format", "ssh"),
            ("gpg.ssh.allowedSignersFile", str(signers)),
        ):
            repo.config[name] = value
        shas: list[str] = []
        made = timed(lambda: shas.extend(make_commits(repo, key, count)))
        print(f"  signed {count:,} commits with create_signed_commit in {made:.2f} s")

        trust = AllowedSigners.load(signers)
        fresh = pygit2.Repository(str(repo_path))

        def in_process() -> None:
            for sha in shas:
                verified = commits.verify_commit(fresh, sha, trust)
                if verified.principal != PRINCIPAL:
                    raise SystemExit(f"{sha}: signed by {verified.principal}")

        runs = [(timed(in_process), cpu_timed(in_process)) for _ in range(max(1, args.repeat))]
        wall, cpu = min(r[0] for r in runs), min(r[1] for r in runs)
        print(
            f"  in-process, best of {len(runs)}: {wall * 1e6 / count:.1f} µs a commit wall, "
            f"{cpu * 1e6 / count:.1f} µs CPU; a {count:,}-commit chain: {wall * 1e3:.0f} ms"
        )
        results: list[tuple[str, float, int]] = []
        results.append(("in-process verify_commit", wall, count))
        sample = shas[: args.loop_sample] if args.loop_sample else shas
        results.append(
            (
                "git verify-commit, one process per commit",
                timed(lambda: verify_loop(repo_path, sample)),
                len(sample),
            )
        )
        results.append(
            (
                "git verify-commit, all commits in one call",
                timed(lambda: verify_batch(repo_path, shas)),
                count,
            )
        )
        results.append(("git log --format=%G?", timed(lambda: verify_log(repo_path, count)), count))
        workers = os.cpu_count() or 1
        results.append(
            (
                f"git verify-commit, batches on {workers} CPUs",
                timed(lambda: verify_parallel(repo_path, shas, workers)),
                count,
            )
        )

    base = results[0][1] / results[0][2]
    print(f"\n{'method':<44} {'commits':>7} {'seconds':>9} {'commits/s':>10} {'x in-proc':>10}")
    for name, seconds, n in results:
        per = seconds / n
        print(f"{name:<44} {n:>7,} {seconds:>9.3f} {n / seconds:>10,.0f} {per / base:>10.1f}")
    fastest_git = min(results[1:], key=lambda r: r[1] / r[2])
    print(
        f"\nfastest git ({fastest_git[0]}) takes {fastest_git[1] / fastest_git[2] / base:.0f}x "
        f"the in-process time per commit"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
