"""``gitops vulns``: known vulnerabilities of the fleet's hosts, from their SBOMs and an
NVD CVE JSON 2.0 feed the admin provides."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from gitops import output
from gitops.inventory import reports, vulns
from gitops.trust import commits

log = logging.getLogger(__name__)


def vulns_command(repo: Path, feeds: list[Path], hosts: list[str], *, as_json: bool) -> int:
    repository = commits.open_repository(repo)
    fleet = reports.load_main_fleet(repository)
    for host in hosts:
        reports.host_in(fleet, host)
    scan = vulns.scan(
        repository,
        fleet,
        vulns.feed_paths(repo, fleet, feeds),
        hosts=hosts,
        today=datetime.now(UTC).date(),
    )
    for problem in scan.problems:
        log.warning("%s", problem)
    found = vulns.by_cve(scan.findings)
    if as_json:
        output.emit_json(_json(scan, found))
        return 0
    for item in found:
        output.say(_line(item))
    open_count = sum(1 for item in found if item.hosts)
    output.progress(
        f"{open_count} known vulnerabilit{'y' if open_count == 1 else 'ies'} "
        f"({len(found) - open_count} exempt) on {len(scan.scanned)} host(s), "
        f"{scan.cves} CVEs in the feed; matching is by name and version (docs/inventory.md)"
    )
    if scan.missing:
        output.progress(f"no verified SBOM, not scanned: {', '.join(scan.missing)}")
    return 0


def _line(item: vulns.Vulnerability) -> str:
    cve = item.cve
    score = f" {cve.score:.1f}" if cve.score is not None else ""
    fixed = f"; fixed in {', '.join(item.fixed_in)}" if item.fixed_in else ""
    exempt = f"; exempt: {', '.join(item.exempt_hosts)}" if item.exempt_hosts else ""
    hosts = ", ".join(item.hosts) or "none open"
    return (
        f"{cve.id}\t{cve.severity}{score}\t{', '.join(item.packages)}{fixed}\t"
        f"hosts: {hosts}{exempt}"
    )


def _json(scan: vulns.Scan, found: list[vulns.Vulnerability]) -> dict[str, Any]:
    exemptions = {
        (f.host, f.cve.id): {"reason": f.exemption.reason, "expires": str(f.exemption.expires)}
        for f in scan.findings
        if f.exemption is not None
    }
    return {
        "cves_in_feed": scan.cves,
        "hosts_scanned": list(scan.scanned),
        "hosts_without_sbom": list(scan.missing),
        "vulnerabilities": [
            {
                "cve": item.cve.id,
                "severity": str(item.cve.severity),
                "score": item.cve.score,
                "published": item.cve.published,
                "summary": item.cve.summary,
                "packages": list(item.packages),
                "fixed_in": list(item.fixed_in),
                "hosts": list(item.hosts),
                "exempt_hosts": {
                    host: exemptions[(host, item.cve.id)] for host in item.exempt_hosts
                },
            }
            for item in found
        ],
    }
