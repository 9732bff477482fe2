"""Central builds: a host cycle in substitute mode vs local evaluation + build, and the
build side's time to build, sign and copy N changed hosts.

A stand-in fleet (gitops.demo) whose shared module pulls in a synthetic closure of
``--packages`` real store paths of ``--size-kb`` each (random bytes, so nothing
compresses or deduplicates away), the shape of a NixOS system's closure. Every host's
system references all of them.

Host side: the real agent (``python -m gitops agent once``, a child process) runs one
cycle; its wall time, CPU (user + system of the whole tree, nix included) and peak
memory (sum of the tree's PSS, sampled every 20 ms) are measured, and the bytes the
binary cache (a ``file://`` directory served over HTTP on loopback) sent it.

1. first install, empty store: substitute mode fetches the whole closure;
2. first install, local evaluation + build, with the packages already in the store (as if
   fetched from cache.nixos.org): evaluation and the toplevel's build only;
3. an update that adds one package (1 MiB) to the host: substitute vs local.

Build side: ``gitops build`` (the library call) for 1 changed host and for every host,
``--jobs 2``: build, sign, copy, each timed.

Nixpkgs is not available here: the stand-in's evaluation is far cheaper than a NixOS
evaluation (which needs 1-2 GiB and minutes), so the local figures are a lower bound.

    .venv/bin/python bench/build.py --packages 2000 --size-kb 150 --hosts 8
"""

from __future__ import annotations

import argparse
import json
import resource
import secrets
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the testing/ package

import machine as bench_machine
import yaml
from site_build import TreeMemory

from gitops.agent.config import AgentConfig
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet, InventoryHost
from gitops.publish import build as central
from testing.cache import SigningKey, http_cache, signing_key
from testing.helpers import agent_settings, remote_reports

MODULE = """# Bench: the shared module pulls in a synthetic closure.
let
  pkg = i: derivation {
    # Short names: the stand-in hands every path to its builder in one argument (128 KiB).
    name = "b@SALT@-${toString i}";
    system = "@SYSTEM@";
    builder = "/bin/sh";
    args = [ "-c" "/usr/bin/head -c @SIZE@ /dev/urandom > $out" ];
  };
in
{
  packages = [ "security-baseline" ] ++ builtins.genList pkg @COUNT@;
  nixosVersion = "@VERSION@";
}
"""

APP = """# Stand-in host configuration, with one application of its own.
{
  imports = [ ../../profiles/@PROFILE@.nix ];
  packages = [ (derivation {
    name = "bench-@SALT@-app-@HOST@-@VERSION@";
    system = "@SYSTEM@";
    builder = "/bin/sh";
    args = [ "-c" "/usr/bin/head -c 1048576 /dev/urandom > $out" ];
  }) ];
}
"""


def module(salt: str, count: int, size: int, version: str) -> str:
    return (
        MODULE.replace("@SALT@", salt)
        .replace("@SYSTEM@", standin.nix_system())
        .replace("@SIZE@", str(size))
        .replace("@COUNT@", str(count))
        .replace("@VERSION@", version)
    )


def app(salt: str, host: str, profile: str, version: str) -> str:
    return (
        APP.replace("@SALT@", salt)
        .replace("@HOST@", host)
        .replace("@SYSTEM@", standin.nix_system())
        .replace("@PROFILE@", profile)
        .replace("@VERSION@", version)
    )


@dataclass(frozen=True)
class Cycle:
    label: str
    wall: float
    cpu: float
    peak: int
    fetched: int
    result: str
    phases: str  # the report's durations


def config_file(demo: DemoFleet, host: str, path: Path, **extra: object) -> Path:
    config: AgentConfig = demo.agent_config(host)
    data = {
        **agent_settings(config),
        "health": {
            "failed_units": True,
            "remote": True,
            "commands": [list(c) for c in config.health.commands],
            "grace": 0,
        },
        **extra,
    }
    path.write_text(yaml.safe_dump(data))
    return path


def run_cycle(label: str, demo: DemoFleet, host: str, config: Path, sent: list[int]) -> Cycle:
    before_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    before_bytes = sent[0]
    started = time.monotonic()
    with TreeMemory() as memory:
        done = subprocess.run(
            [sys.executable, "-m", "gitops", "agent", "--config", str(config), "once", "--json"],
            capture_output=True,
            text=True,
            check=False,
        )
    wall = time.monotonic() - started
    after_cpu = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after_cpu.ru_utime - before_cpu.ru_utime) + (after_cpu.ru_stime - before_cpu.ru_stime)
    try:
        result = json.loads(done.stdout)["result"]
    except (ValueError, KeyError):
        result = f"exit {done.returncode}: {done.stderr[-300:]}"
    if result != "applied":
        raise SystemExit(f"{label}: {result}\n{done.stdout}\n{done.stderr[-2000:]}")
    durations = remote_reports(demo, host)[-1].durations
    phases = ", ".join(f"{k} {v:.1f}" for k, v in durations.items() if v >= 0.05)
    return Cycle(label, wall, cpu, memory.peak, sent[0] - before_bytes, result, phases)


def pinned(outcome: central.Outcome, host: str) -> str:
    return next(b.system for b in outcome.built if b.host == host)


def closure(path: str) -> list[str]:
    out = subprocess.run(
        ["nix-store", "--query", "--requisites", path], check=True, capture_output=True, text=True
    ).stdout
    return out.split()


def build(
    demo: DemoFleet, key: SigningKey, cache: Path, systems: Path, **kw: object
) -> central.Outcome:
    outcome = central.build(
        central.Request(
            repo=demo.repo_dir,
            source="main",
            hosts=tuple(kw.get("hosts", ())),  # type: ignore[arg-type]
            every_host=bool(kw.get("every_host", False)),
            jobs=2,
            signing_key=key.secret_file,
            cache=f"file://{cache}?compression=none",
            systems=systems,
        )
    )
    assert not outcome.failed, outcome.failed
    return outcome


def mib(size: int) -> str:
    return f"{size / 2**20:,.1f} MiB"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--packages", type=int, default=2000)
    parser.add_argument("--size-kb", type=int, default=150)
    parser.add_argument("--hosts", type=int, default=8)
    args = parser.parse_args(argv)
    print(bench_machine.describe([["nix", "--version"]], ["pygit2"]))
    salt = secrets.token_hex(4)
    size = args.size_kb * 1024
    with tempfile.TemporaryDirectory(prefix="gitops-bench-build-") as scratch:
        root = Path(scratch)
        names = [f"host-{i}" for i in range(args.hosts)]
        inventory = [InventoryHost(n, ("server",), {"profiles": ["server"]}) for n in names]
        demo = DemoFleet(root / "demo", inventory, say=lambda _: None)
        demo.root.mkdir()
        demo.create()
        demo.merge_change(
            {"modules/default.nix": module(salt, args.packages, size, "26.05.1")}, "bench closure"
        )
        key = signing_key(root / "key")
        cache = root / "cache"
        systems = root / "systems.json"
        started = time.monotonic()
        first = build(demo, key, cache, systems)
        print(
            f"\nbuild side, first build: {len(first.built)} hosts and {args.packages} packages "
            f"of {args.size_kb} KiB in {time.monotonic() - started:.1f} s {first.durations}"
        )
        demo.publish(systems=systems)
        a, b = names[0], names[1]
        system_a = pinned(first, a)
        packages = [p for p in closure(system_a) if f"-b{salt}-" in p]
        print(f"closure of {a}: {len(closure(system_a))} paths, {len(packages)} synthetic packages")
        cycles: list[Cycle] = []
        with http_cache(cache) as server:
            sub = {
                "mode": "substitute",
                "substituters": [server.url],
                "trusted_public_keys": [key.public],
            }
            forget_all = [b.system for b in first.built] + packages
            subprocess.run(["nix-store", "--delete", *forget_all], check=True, capture_output=True)
            cfg_a = config_file(demo, a, root / f"{a}.yaml", **sub)
            cfg_b = config_file(demo, b, root / f"{b}.yaml", mode="build")
            cycles.append(
                run_cycle("first install, empty store: substitute", demo, a, cfg_a, server.sent)
            )
            cycles.append(
                run_cycle(
                    "first install, packages in store: local eval+build",
                    demo,
                    b,
                    cfg_b,
                    server.sent,
                )
            )
            # One new package on each of the two hosts.
            for host in (a, b):
                demo.merge_change(
                    {f"hosts/{host}/configuration.nix": app(salt, host, "server", "1")},
                    f"{host}: app",
                )
            started = time.monotonic()
            second = build(demo, key, cache, systems)
            one = time.monotonic() - started
            demo.publish(systems=systems)
            # What the update brings must come from the cache (a) or be built (b).
            apps = [
                next(p for p in closure(pinned(second, h)) if f"bench-{salt}-app-" in p)
                for h in (a, b)
            ]
            subprocess.run(
                ["nix-store", "--delete", pinned(second, a), pinned(second, b), *apps],
                check=True,
                capture_output=True,
            )
            cycles.append(
                run_cycle("update, one new package: substitute", demo, a, cfg_a, server.sent)
            )
            cycles.append(
                run_cycle("update, one new package: local eval+build", demo, b, cfg_b, server.sent)
            )
        # Build side: every host changed (a new nixosVersion), and one host alone.
        demo.merge_change(
            {"modules/default.nix": module(salt, args.packages, size, "26.05.2")}, "all hosts"
        )
        all_hosts = build(demo, key, cache, systems)
        demo.merge_change({f"hosts/{a}/configuration.nix": app(salt, a, "server", "2")}, "one host")
        only_one = build(demo, key, cache, systems)
    print(
        f"\nhost cycle ({args.packages} packages x {args.size_kb} KiB, {mib(args.packages * size)})"
    )
    print("| cycle | wall | CPU | peak memory (tree PSS) | fetched from the cache | phases (s) |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    for cycle in cycles:
        print(
            f"| {cycle.label} | {cycle.wall:.1f} s | {cycle.cpu:.1f} s | {mib(cycle.peak)} | "
            f"{mib(cycle.fetched)} | {cycle.phases} |"
        )
    print("\nbuild side (gitops build --jobs 2: build, sign, copy)")
    print("| changed hosts | build | sign | copy |")
    print("| ---: | ---: | ---: | ---: |")
    for label, outcome in (
        (f"2 (one new package each; {one:.1f} s in all)", second),
        (f"1 of {args.hosts}", only_one),
        (f"{len(all_hosts.built)} of {args.hosts}", all_hosts),
    ):
        d = outcome.durations
        print(
            f"| {label} | {d.get('build', 0):.1f} s | {d.get('sign', 0):.1f} s | "
            f"{d.get('copy', 0):.1f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
