"""B4: what inventory facts and the SBOM add to a report: bytes and agent time.

    .venv/bin/python bench/inventory.py [--paths 3000] [--repeat 5]

Compares, in the same run on this machine (``/`` is the facts root, as for the agent):

- today's facts (the 13 compliance facts) against all facts (with hardware, network,
  users, backups and nixpkgs): collection time and the size of ``status.json``;
- the SBOM of a real closure of ``--paths`` store paths: the closure query
  (``nix-store --query --requisites``), building the CycloneDX document, reading it back,
  and its size raw and zlib-compressed (git stores and sends objects compressed);
- a signed report commit without and with the SBOM (``create_report_commit``).

The closure is real (every path is in this machine's store, the system references them
all) but its contents are synthetic: small files named like a NixOS closure (versioned
packages, ``-bin``/``-lib``/``-man`` outputs, unversioned generated files), made with
``nix-store --add`` (testing/closure.py). Names and their number are what the SBOM's
size and time depend on; the files' contents are not read.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
import zlib
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import TypeVar

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # the testing/ package

import machine as bench_machine
import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.agent import facts
from gitops.agent.facts.compliance import COLLECTORS
from gitops.agent.facts.hostfs import Host
from gitops.inventory import sbom
from gitops.protocol import UNKNOWN, Report, Result, SystemInfo
from gitops.report_commits import create_report_commit
from gitops.system import nix
from testing.closure import make_system

T = TypeVar("T")
BASES = [
    "glibc",
    "acl",
    "attr",
    "bash",
    "coreutils",
    "curl",
    "openssl",
    "zlib",
    "xz",
    "zstd",
    "bzip2",
    "systemd",
    "util-linux",
    "dbus",
    "pam",
    "kmod",
    "gnugrep",
    "gnused",
    "gawk",
    "findutils",
    "diffutils",
    "less",
    "ncurses",
    "readline",
    "sqlite",
    "libxml2",
    "libxslt",
    "expat",
    "pcre2",
    "icu",
    "gmp",
    "mpfr",
    "libffi",
    "python3",
    "perl",
    "lua",
    "nix",
    "git",
    "openssh",
    "gnupg",
    "gnutls",
    "nettle",
    "libidn2",
    "libunistring",
    "brotli",
    "nghttp2",
    "krb5",
    "keyutils",
    "libcap",
    "libseccomp",
    "iproute2",
    "iptables",
    "nftables",
    "kbd",
    "shadow",
    "e2fsprogs",
    "dosfstools",
    "btrfs-progs",
    "lvm2",
    "cryptsetup",
    "mesa",
    "libdrm",
    "wayland",
    "libinput",
    "libxkbcommon",
    "pixman",
    "cairo",
    "pango",
    "harfbuzz",
    "freetype",
    "fontconfig",
    "gtk3",
    "gtk4",
    "glib",
    "gdk-pixbuf",
    "librsvg",
    "firefox",
    "thunderbird",
    "libreoffice",
    "gimp",
    "qgis",
    "gdal",
    "proj",
    "geos",
    "postgresql",
    "samba",
    "zfs",
    "sanoid",
    "restic",
    "rclone",
    "nginx",
]


def closure_names(count: int) -> list[str]:
    """``count`` store path names shaped like a desktop NixOS closure."""
    names: list[str] = []
    index = 0
    while len(names) < count:
        base = f"{BASES[index % len(BASES)]}{index // len(BASES) or ''}"
        version = f"{1 + index % 7}.{index % 23}.{index % 11}"
        kind = index % 10
        if kind < 5:
            names.append(f"{base}-{version}")
        elif kind < 8:
            names.append(f"{base}-{version}-{('bin', 'lib', 'man')[kind - 5]}")
        else:
            names.append(f"unit-{base}.service" if kind == 8 else f"etc-{base}.conf")
        index += 1
    return names


def timed(work: Callable[[], T], repeat: int) -> tuple[T, float]:
    """The result of ``work`` and its median time in seconds over ``repeat`` runs."""
    times = []
    result: T | None = None
    for _ in range(repeat):
        started = time.perf_counter()
        result = work()
        times.append(time.perf_counter() - started)
    assert result is not None
    return result, statistics.median(times)


def compliance_facts() -> dict[str, object]:
    """Today's facts: only the compliance collectors."""
    host = Host(Path("/"))
    found: dict[str, object] = {}
    for keys, collector in COLLECTORS:
        values = collector(host)
        found.update({key: values.get(key, UNKNOWN) for key in keys})
    return found


def report(found: dict[str, object]) -> Report:
    return Report(
        host="web-1",
        time=datetime(2026, 11, 30, tzinfo=UTC),
        agent_version="0.1.0",
        result=Result.APPLIED,
        reason="switched to deploy 1a2b3c4d (main 9f8e7d6c), signed by publisher@example.org",
        report_id=str(uuid.uuid4()),
        deploy_seen="1a2b3c4d" * 5,
        deploy_applied="1a2b3c4d" * 5,
        source_commit="9f8e7d6c" * 5,
        system=SystemInfo(store_path="/nix/store/" + "a" * 32 + "-nixos-system-web-1"),
        facts=dict(found),
        durations={"fetch": 0.4, "build": 31.2, "activate": 4.1, "total": 36.0},
    )


def sizes(text: str | bytes) -> str:
    data = text.encode() if isinstance(text, str) else text
    return (
        f"{len(data):>9,} B raw, {len(zlib.compress(data, 1)):>8,} B zlib-1, "
        f"{len(zlib.compress(data, 6)):>8,} B zlib-6"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--paths", type=int, default=3000, help="store paths in the closure")
    parser.add_argument("--repeat", type=int, default=5, help="runs per measurement (median)")
    args = parser.parse_args()
    print(bench_machine.describe([["nix", "--version"]], ["cyclonedx-python-lib", "pygit2"]))

    old_facts, old_time = timed(compliance_facts, args.repeat)
    new_facts, new_time = timed(lambda: facts.collect_facts(Path("/")), args.repeat)
    old_status, new_status = report(old_facts).to_json(), report(new_facts).to_json()
    print(f"\nfacts (root /, median of {args.repeat})")
    print(f"  today ({len(old_facts)} keys):   {old_time * 1000:8.1f} ms")
    print(f"  with inventory ({len(new_facts)}): {new_time * 1000:8.1f} ms")
    print(f"  status.json today:          {sizes(old_status)}")
    print(f"  status.json with inventory: {sizes(new_status)}")

    with tempfile.TemporaryDirectory(prefix="bench-inventory-") as tmp:
        work = Path(tmp)
        started = time.perf_counter()
        system, paths = make_system(
            work, closure_names(args.paths - 1), "nixos-system-web-1-25.05.20260102.ac62194"
        )
        print(
            f"\nclosure: {len(paths) + 1} store paths made in {time.perf_counter() - started:.1f} s"
        )
        closure, query_time = timed(lambda: nix.closure(system), args.repeat)
        assert len(closure) == len(paths) + 1, len(closure)
        document, build_time = timed(
            lambda: sbom.build_sbom(
                host="web-1",
                system=system,
                nixos_version="25.05.20260102.ac62194",
                packages=sbom.packages_of(closure, system),
                time=datetime(2026, 11, 30, tzinfo=UTC),
            ),
            args.repeat,
        )
        read, read_time = timed(lambda: sbom.read_sbom(document), args.repeat)
        assert len(read.packages) == len(paths)
        print(f"SBOM of {len(closure)} paths (median of {args.repeat})")
        print(f"  nix-store --query --requisites: {query_time * 1000:8.1f} ms")
        print(f"  build CycloneDX 1.6 JSON:       {build_time * 1000:8.1f} ms")
        print(f"  read back (read_sbom):          {read_time * 1000:8.1f} ms")
        print(f"  sbom.cdx.json:                  {sizes(document)}")

        repo = pygit2.init_repository(str(work / "reports.git"), bare=True)
        key = ed25519.Ed25519PrivateKey.generate()
        full = report(new_facts)
        blob = document.encode()
        _, plain_time = timed(
            lambda: create_report_commit(repo, full, parent=None, key=key), args.repeat
        )
        _, sbom_time = timed(
            lambda: create_report_commit(repo, full, parent=None, key=key, sbom=blob),
            args.repeat,
        )
        print("report commit (signed, written to a bare repository)")
        print(f"  status.json only:       {plain_time * 1000:8.1f} ms")
        print(f"  with sbom.cdx.json:     {sbom_time * 1000:8.1f} ms")
        added = (new_time - old_time) + query_time + build_time + (sbom_time - plain_time)
        print(
            f"\nagent time added per report: {(new_time - old_time) * 1000:.1f} ms (facts); "
            f"after a change of system: {added * 1000:.0f} ms (facts + closure + SBOM + commit)"
        )


if __name__ == "__main__":
    main()
