"""What the site's per-host vulnerability matching and the overview's nixpkgs spread add
to a build; prints figures, asserts only that the work was right.

    .venv/bin/python bench/site_vulns.py --hosts 10000 --sets 50 --packages 3000 --cves 20000

A synthetic feed of ``--cves`` CVEs (each naming one product and a version range) and
``--sets`` package sets of ``--packages`` (name, version) pairs, with half the feed's
products among them; ``--hosts`` hosts share the sets. It measures, in one process:

1. matching each set against the feed (once per set and build process: the cost that
   scales with distinct sets, not hosts);
2. per host: applying the exemptions to its set's findings and computing the policies'
   ``vulns.*`` facts (what each refreshed host adds), when hosts share their exemptions
   (one result per set) and when each has its own, against the same loop doing nothing
   but look up its set (the baseline); and grouping them per CVE (the vulnerabilities
   page);
3. the overview's nixpkgs spread over ``--hosts`` derived rows.
"""

from __future__ import annotations

import argparse
import random
import time
from datetime import UTC, date, datetime

from gitops.fleet.model import CveExemption
from gitops.inventory.vulns import Affected, Cve, Severity, VersionRange
from gitops.sitegen import currency, vulnscan
from gitops.sitegen.derived import Derived
from gitops.sitegen.model import HostSoftware, SbomRef, SbomState

TODAY = date(2026, 11, 20)


def feed(cves: int, products: int, rng: random.Random) -> list[Cve]:
    severities = [Severity.CRITICAL, Severity.HIGH, Severity.MEDIUM, Severity.LOW]
    return [
        Cve(
            f"CVE-2025-{i:06d}",
            rng.choice(severities),
            7.5,
            f"2025-{rng.randint(1, 12):02d}-{rng.randint(1, 28):02d}",
            "",
            (
                Affected(
                    f"pkg{rng.randrange(products)}",
                    VersionRange(end_excluding=f"{rng.randint(1, 9)}.{rng.randint(0, 9)}"),
                ),
            ),
        )
        for i in range(cves)
    ]


def package_set(packages: int, rng: random.Random) -> str:
    pairs = sorted(
        {
            (f"pkg{rng.randrange(packages * 2)}", f"{rng.randint(1, 9)}.{rng.randint(0, 9)}")
            for _ in range(packages)
        }
    )
    return "".join(f"{n}\t{v}\n" for n, v in pairs)


def software(set_id: str, *exemptions: CveExemption) -> HostSoftware:
    ref = SbomRef("c" * 40, "/nix/store/x", "26.05", "", 1, 1, set_id, 1)
    return HostSoftware(SbomState("h" * 40, "key", ref), False, exemptions)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--hosts", type=int, default=10000)
    parser.add_argument("--sets", type=int, default=50)
    parser.add_argument("--packages", type=int, default=3000)
    parser.add_argument("--cves", type=int, default=20000)
    args = parser.parse_args()
    rng = random.Random(14)
    cves = feed(args.cves, args.packages * 4, rng)
    sets = {f"set{i:03d}": package_set(args.packages, rng) for i in range(args.sets)}
    exemptions = [CveExemption(c.id, "bench", date(2099, 1, 1)) for c in cves[:200]]
    scanner = vulnscan.Scanner(vulnscan.Feed(True, cves, ident="bench"), None, exemptions)

    started = time.perf_counter()
    found = sum(len(scanner.matched(i, text) or ()) for i, text in sets.items())
    matching = time.perf_counter() - started
    print(f"feed {len(cves)} CVEs, {len(sets)} sets of ~{args.packages} packages")
    print(
        f"  1. matching every set once: {matching:.2f} s ({matching / len(sets) * 1000:.0f} ms a set, {found} findings)"
    )

    shared = [software(f"set{i % args.sets:03d}") for i in range(args.hosts)]
    own = [
        software(f"set{i % args.sets:03d}", CveExemption(f"CVE-2099-{i:06d}", "own", TODAY))
        for i in range(args.hosts)
    ]
    started = time.perf_counter()
    for ware in shared:  # the baseline: find the host's set
        assert ware.sbom.found is not None
        sets.get(ware.sbom.found.packages_id)
    baseline = time.perf_counter() - started
    print(f"  2. {args.hosts} hosts, set lookup only (baseline): {baseline * 1000:.1f} ms")
    for label, hosts in (("same exemptions", shared), ("each its own exemption", own)):
        started = time.perf_counter()
        scans = {}
        open_total = 0
        for i, ware in enumerate(hosts):
            scan = scans[f"host{i}"] = scanner.host(ware, TODAY)
            open_total += sum(vulnscan.facts(scan, TODAY)["vulns"]["open"].values())
        took = time.perf_counter() - started
        print(
            f"     {label}: exemptions + vulns.* facts {took:.2f} s "
            f"({took / args.hosts * 1e6:.0f} µs a host), {open_total} open findings"
        )
        started = time.perf_counter()
        grouped = vulnscan.by_cve(scans)
        took = time.perf_counter() - started
        print(f"     vulnerabilities page grouping: {took:.2f} s, {len(grouped)} CVEs")

    now = datetime(2026, 11, 20, tzinfo=UTC)
    rows = [
        row_with((f"{i % 40:040d}", f"2026-{1 + i % 11:02d}-01T00:00:00Z"))
        for i in range(args.hosts)
    ]
    started = time.perf_counter()
    spread = currency.spread(rows, now)
    took = time.perf_counter() - started
    assert spread.reported == args.hosts
    print(f"  3. nixpkgs spread over {args.hosts} rows: {took * 1000:.1f} ms")


def row_with(nixpkgs: tuple[str, str]) -> Derived:
    """A derived row holding only what the spread reads."""
    row = Derived.__new__(Derived)
    object.__setattr__(row, "nixpkgs", nixpkgs)
    return row


if __name__ == "__main__":
    main()
