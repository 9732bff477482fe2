"""``gitops sbom``: a host's newest verified SBOM, or which hosts run a package."""

from __future__ import annotations

import logging
import sys
from pathlib import Path

from gitops import output
from gitops.errors import GitopsError
from gitops.inventory import reports
from gitops.protocol import SBOM_FILE, branch_name, reports_ref
from gitops.trust import commits

log = logging.getLogger(__name__)


def show(repo: Path, host: str) -> int:
    """Print ``host``'s newest verified sbom.cdx.json as the host wrote it."""
    repository = commits.open_repository(repo)
    fleet = reports.load_main_fleet(repository)
    lookup = reports.latest_sbom(repository, reports.host_in(fleet, host))
    _warn(lookup.problems)
    found = lookup.found
    if found is None:
        raise GitopsError(
            f"no verified {SBOM_FILE} on {branch_name(reports_ref(host))}: its agent writes one with the "
            "report after its next switch (or when the running system changes)"
        )
    if found.stale:
        log.warning(
            "%s's newest report runs %s, not this SBOM's system %s",
            host,
            found.running,
            found.sbom.system,
        )
    sys.stdout.buffer.write(found.text)
    sys.stdout.flush()
    return 0


def which(repo: Path, spec: str, *, as_json: bool) -> int:
    """Hosts running PACKAGE[@VERSION], from each host's newest verified SBOM."""
    name, _, version = spec.partition("@")
    if not name:
        raise GitopsError(f"{spec!r}: name a package, e.g. openssl or openssl@3.0.13")
    repository = commits.open_repository(repo)
    fleet = reports.load_main_fleet(repository)
    sboms = reports.fleet_sboms(repository, fleet)
    _warn(sboms.problems)
    found = reports.which(sboms.found, name, version or None)
    if as_json:
        output.emit_json(
            {
                "package": name,
                "version": version or None,
                "hosts": [
                    {
                        "host": r.host,
                        "name": r.package.name,
                        "version": r.package.version,
                        "store_path": r.package.store_path,
                        "stale": r.stale,
                    }
                    for r in found
                ],
                "hosts_without_sbom": list(sboms.missing),
            }
        )
        return 0
    for running in found:
        note = "  (the host now runs another system)" if running.stale else ""
        output.say(f"{running.host}\t{running.package.label}\t{running.package.store_path}{note}")
    if not found:
        output.progress(f"no host's SBOM lists {spec}")
    if sboms.missing:
        output.progress(f"no verified SBOM yet for: {', '.join(sboms.missing)}")
    return 0


def _warn(problems: tuple[str, ...]) -> None:
    for problem in problems:
        log.warning("%s", problem)
