"""B8: what an idle ``gitops agent run`` costs: wakeups per second, CPU and memory.

    .venv/bin/python bench/idle_agent.py [--seconds 20] [--base main]

Two agents run side by side, each ``python -m gitops agent --config ... run`` with its
own state directory, against a local bare repository with nothing published for the host
(its first cycle reports "nothing is published" and pushes the report), a one-hour poll
interval and no jitter:

- ``before``: today's code, the ``gitops/`` package of ``--base`` (a git revision of
  this repository, extracted with ``git archive`` into a temporary directory);
- ``after``: this working tree.

Once both have finished their first cycle (their status file is written) and settled
for two seconds, their counters are read from /proc over ``--seconds``: context switches
(voluntary + involuntary, summed over every thread in /proc/<pid>/task/*/status: each is a
wakeup of a sleeping thread, or a preemption), CPU time (utime + stime), and at the end
RSS (VmRSS) and PSS (smaps_rollup: shared pages counted once).

For comparison, comin (the Go GitOps agent for NixOS) documents 20-30 MB of memory.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from gitops.trust import keys

REPO = Path(__file__).resolve().parent.parent
HOST = "idle-1"
TICKS = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Counters:
    switches: int
    cpu: float  # seconds
    threads: int


def counters(pid: int) -> Counters:
    switches = threads = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            text = (task / "status").read_text(encoding="ascii")
        except OSError:
            continue  # the thread ended meanwhile
        threads += 1
        for line in text.splitlines():
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                switches += int(line.split()[1])
    fields = Path(f"/proc/{pid}/stat").read_text(encoding="ascii").rsplit(")", 1)[1].split()
    cpu = (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return Counters(switches, cpu, threads)


def memory(pid: int) -> tuple[float, float]:
    """(RSS, PSS) in MiB."""
    rss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/status").read_text().splitlines()
        if line.startswith("VmRSS:")
    )
    pss = next(
        int(line.split()[1])
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()
        if line.startswith("Pss:")
    )
    return rss / 1024, pss / 1024


def extract(revision: str, into: Path) -> str:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", revision], cwd=REPO, check=True, capture_output=True,
        text=True,
    ).stdout.strip()  # fmt: skip
    archive = subprocess.run(
        ["git", "archive", revision, "gitops"], cwd=REPO, check=True, capture_output=True
    ).stdout
    into.mkdir(parents=True)
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return commit


def agent_config(root: Path, name: str, remote: Path, publishers: Path, key: Path) -> Path:
    machine = root / name
    data = {
        "host": HOST,
        "remote": str(remote),
        "trusted_publishers": str(publishers),
        "signing_key": str(key),
        "state_dir": str(machine / "state"),
        "system_profile": str(machine / "profiles" / "system"),
        "root": str(machine / "root"),
        "poll_interval": 3600,
        "poll_jitter": 0,
    }
    (machine / "root").mkdir(parents=True)
    path = machine / "agent.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start(code: Path, config: Path) -> subprocess.Popen[bytes]:
    env = {**os.environ, "PYTHONPATH": str(code)}
    return subprocess.Popen(
        [sys.executable, "-m", "gitops", "agent", "--config", str(config), "run"],
        env=env,
        cwd=code,  # python -m puts the working directory first on the path
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20)
    parser.add_argument("--base", default="main", help="the revision measured as 'before'")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="gitops-idle-") as tmp:
        root = Path(tmp)
        commit = extract(args.base, root / "base")
        remote = root / "server.git"
        subprocess.run(["git", "init", "-q", "--bare", remote], check=True)
        publisher = keys.new_keypair(root / "publisher", "publisher@example.org")
        publishers = root / "publishers.allowed_signers"
        publishers.write_text(f"publisher@example.org {publisher.openssh()}\n")
        keys.new_keypair(root / "host-key", HOST)
        contenders = {
            f"before ({args.base} {commit})": root / "base",
            "after (this tree)": REPO,
        }
        procs = {}
        for index, (name, code) in enumerate(contenders.items()):
            config = agent_config(root, f"agent-{index}", remote, publishers, root / "host-key")
            procs[name] = (start(code, config), root / f"agent-{index}" / "state" / "status.json")
        try:
            deadline = time.monotonic() + 120
            for name, (proc, status) in procs.items():
                while not status.exists():
                    if proc.poll() is not None or time.monotonic() > deadline:
                        err = proc.stderr.read().decode() if proc.stderr else ""
                        raise SystemExit(f"{name}: the first cycle did not finish\n{err}")
                    time.sleep(0.1)
            time.sleep(2)  # settled: the first cycle's children are gone
            first = {name: counters(proc.pid) for name, (proc, _) in procs.items()}
            time.sleep(args.seconds)
            last = {name: counters(proc.pid) for name, (proc, _) in procs.items()}
            print(f"idle for {args.seconds:g} s after the first cycle (poll interval 1 h)")
            print(
                f"{'agent':<28} {'wakeups/s':>9} {'CPU-s':>7} {'threads':>7} "
                f"{'RSS MiB':>8} {'PSS MiB':>8}"
            )
            rates = {}
            for name, (proc, _) in procs.items():
                rss, pss = memory(proc.pid)
                rate = (last[name].switches - first[name].switches) / args.seconds
                rates[name] = rate
                cpu = last[name].cpu - first[name].cpu
                print(
                    f"{name:<28} {rate:>9.2f} {cpu:>7.2f} {last[name].threads:>7} "
                    f"{rss:>8.1f} {pss:>8.1f}"
                )
            before, after = rates.values()
            ratio = f"{before / after:.0f}x fewer" if after else "none after"
            print(f"wakeups: {ratio}; comin (Go) documents 20-30 MB of memory")
        finally:
            for proc, _ in procs.values():
                proc.terminate()
            for proc, _ in procs.values():
                proc.wait(10)


if __name__ == "__main__":
    main()
