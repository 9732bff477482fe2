"""Known vulnerabilities per host at site build time: one matching for the host pages, the
policies and the vulnerabilities page.

The feed ``fleet.yaml`` names (:mod:`gitops.inventory.vulns`) is loaded once per build
(:func:`load_feed`, kept pickled in the cache until its files change) and its identity is
part of every host's page key, so a new feed renders the host pages again. A host's
package set (:mod:`gitops.sitegen.software`) is matched once per set and process
(:class:`Scanner`); the fleet's and the host's exemptions in force today are applied per
host (:meth:`Scanner.host`). The result, a :class:`HostScan`:

* is listed on the host page (CVE, severity, package, fixed-in, exemption) and in its JSON;
* gives the policies their ``vulns.*`` facts (:func:`facts`): ``vulns.open.<severity>``
  (open CVEs) and ``vulns.oldest_days.<severity>`` (days since the oldest open one was
  published; 0 when there is none), all "unknown" when nothing is known (no feed, a feed
  that cannot be read, no SBOM): the agent has no feed, so only the site (and ``gitops
  status``) can answer them;
* is what the vulnerabilities page groups per CVE.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import pickle
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import date
from pathlib import Path
from typing import Any

from gitops.errors import GitopsError
from gitops.fleet.model import CveExemption, FleetSettings
from gitops.fleet.policies import VULN_FACTS, VULN_ROOT, VULN_SEVERITIES, Policy, facts_used
from gitops.inventory import vulns
from gitops.inventory.sbom import Package, parse_packages
from gitops.sitegen.model import HostSoftware
from gitops.system import atomic

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Feed:
    """The vulnerability feed of one build."""

    configured: bool
    cves: Sequence[vulns.Cve] = ()
    error: str = ""  # why the configured feed could not be read
    ident: str = ""  # changes whenever its files do

    @property
    def usable(self) -> bool:
        return self.configured and not self.error


def load_feed(repo_dir: Path, settings: FleetSettings, cache: Path | None) -> Feed:
    """The feed ``fleet.yaml`` names (relative paths under ``repo_dir``), parsed once per
    change of its files (kept pickled in ``cache``); an unreadable one is an error in the
    feed, never in the build."""
    names = settings.vulnerabilities.feeds
    if not names:
        return Feed(configured=False)
    try:
        files = vulns.feed_files(repo_dir / f for f in names)
        stamp = repr([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
        key = hashlib.sha256(stamp.encode()).hexdigest()[:32]
        return Feed(True, _parsed(files, key, cache), ident=key)
    except (GitopsError, OSError) as err:
        return Feed(True, error=str(err), ident=f"error:{err}")


def _parsed(files: list[Path], key: str, cache: Path | None) -> list[vulns.Cve]:
    kept = cache / f"feed-{key}" if cache is not None else None
    if kept is not None and kept.exists():
        with contextlib.suppress(Exception):
            loaded = pickle.loads(kept.read_bytes())
            if isinstance(loaded, list):
                return loaded
    cves = vulns.load_feed(files)
    if kept is not None:
        for old in kept.parent.glob("feed-*"):
            old.unlink(missing_ok=True)
        atomic.write_bytes(kept, pickle.dumps(cves, protocol=pickle.HIGHEST_PROTOCOL))
    return cves


@dataclass(frozen=True)
class HostScan:
    """A host's known vulnerabilities today, or why nothing is known. Hosts running the
    same package set with the same exemptions share one (its findings name no host)."""

    unknown: str = ""  # why nothing is known ("" when the host was matched)
    open: tuple[vulns.Finding, ...] = ()
    exempt: tuple[vulns.Finding, ...] = ()  # an exemption in force today
    today: date | None = None  # the day it was judged at

    @functools.cached_property
    def facts(self) -> dict[str, Any]:
        """The policies' ``vulns`` root on ``today`` (:func:`facts`), computed once."""
        return _facts(self, self.today or date.min)

    @property
    def findings(self) -> tuple[vulns.Finding, ...]:
        """Worst first."""
        return tuple(
            sorted((*self.open, *self.exempt), key=lambda f: (f.cve.severity.rank, f.cve.id))
        )


@dataclass
class Scanner:
    """Matches hosts' package sets against a feed, each set once per process."""

    feed: Feed
    packages_dir: Path | None  # the site cache's package sets (software_pages.PackageSets)
    fleet_exemptions: Sequence[CveExemption]
    _index: dict[str, list[tuple[vulns.Cve, vulns.Affected]]] | None = None
    _sets: dict[str, tuple[vulns.Finding, ...]] = field(default_factory=dict)
    # (set, day, the host's own exemptions) -> its scan: hosts alike share one
    _scans: dict[tuple[str, date, tuple[CveExemption, ...]], HostScan] = field(default_factory=dict)

    def matched(self, set_id: str, text: str | None) -> tuple[vulns.Finding, ...] | None:
        """A package set's findings (no host, no exemption); None when its packages are
        neither given nor in the cache."""
        if set_id in self._sets:
            return self._sets[set_id]
        if text is None and self.packages_dir is not None:
            with contextlib.suppress(OSError):
                text = (self.packages_dir / set_id).read_text(encoding="utf-8")
        if text is None:
            return None
        if self._index is None:
            self._index = vulns.index_by_product(self.feed.cves)
        packages = [Package("", name, version) for name, version in parse_packages(text)]
        found = tuple(vulns.match_host("", packages, self._index, {}, date.min))
        self._sets[set_id] = found
        return found

    def host(
        self,
        software: HostSoftware | None,
        today: date,
        text: str | None = None,
    ) -> HostScan:
        """A host's vulnerabilities by its accepted SBOM (``text``: its package set when
        the caller has it), the exemptions in force ``today`` applied."""
        if not self.feed.configured:
            return HostScan("no vulnerability feed is configured")
        if self.feed.error:
            return HostScan("the vulnerability feed could not be read")
        found = software.sbom.found if software is not None else None
        if software is None or found is None:
            return HostScan("no SBOM from this host yet")
        matched = self.matched(found.packages_id, text)
        if matched is None:
            return HostScan("its package list is not in the site cache (build without it)")
        key = (found.packages_id, today, software.exemptions)  # the fleet's are the same
        kept = self._scans.get(key)
        if kept is not None:
            return kept
        exemptions = vulns.exemptions_for(self.fleet_exemptions, software.exemptions)
        open_: list[vulns.Finding] = []
        exempt: list[vulns.Finding] = []
        for finding in matched:
            exemption = exemptions.get(finding.cve.id)
            in_force = exemption if exemption and exemption.expires >= today else None
            if in_force is None:
                open_.append(finding)
            else:
                exempt.append(replace(finding, exemption=in_force))
        scan = self._scans[key] = HostScan("", tuple(open_), tuple(exempt), today)
        return scan


def scan(
    scanner: Scanner | None,
    software: HostSoftware | None,
    today: date,
    packages: tuple[str, str] | None = None,
) -> HostScan | None:
    """:meth:`Scanner.host`, with the package set an SBOM search just read (``(id, text)``);
    None without a scanner."""
    if scanner is None:
        return None
    found = software.sbom.found if software is not None else None
    text = packages[1] if packages and found and packages[0] == found.packages_id else None
    return scanner.host(software, today, text)


@functools.lru_cache(maxsize=65536)
def _age_days(published: str, today: date) -> int | None:
    try:
        return (today - date.fromisoformat(published[:10])).days
    except ValueError:
        return None


def facts(scan: HostScan | None, today: date) -> dict[str, Any]:
    """The ``vulns`` root the policies see (see the module docstring)."""
    if scan is None or scan.unknown:
        return {VULN_ROOT: UNKNOWN}
    return scan.facts if scan.today == today else _facts(scan, today)


def _facts(scan: HostScan, today: date) -> dict[str, Any]:
    counts: dict[str, int] = dict.fromkeys(VULN_SEVERITIES, 0)
    oldest: dict[str, int | str] = dict.fromkeys(VULN_SEVERITIES, 0)
    seen: set[str] = set()
    for finding in scan.open:
        cve = finding.cve
        if cve.id in seen:
            continue
        seen.add(cve.id)
        severity = str(cve.severity)
        counts[severity] += 1
        age = _age_days(cve.published, today)
        before = oldest[severity]
        if age is None or before == UNKNOWN:
            oldest[severity] = UNKNOWN  # an undated CVE: its age is not known
        elif isinstance(before, int):
            oldest[severity] = max(before, age)
    values = {"open": counts, "oldest_days": oldest}
    assert set(values) == set(VULN_FACTS)
    return {VULN_ROOT: values}


def uses_vulns(policies: Iterable[Policy]) -> bool:
    """Whether some policy looks at ``vulns.*`` (then the feed must be matched to judge)."""
    return any(
        fact.split(".")[0] == VULN_ROOT for p in policies for fact in facts_used(p.condition)
    )


def page_key(key: str, scan: HostScan | None) -> str:
    """A host's page key, with what its vulnerability section shows."""
    if scan is None:
        return key
    shown = [(f.cve.id, f.package.label, f.fixed_in, f.exemption) for f in scan.findings]
    text = repr((key, scan.unknown, shown))
    return hashlib.sha256(text.encode()).hexdigest()


def to_json(scan: HostScan | None) -> dict[str, Any] | None:
    """The host JSON's ``vulnerabilities``."""
    if scan is None:
        return None
    return {
        "unknown": scan.unknown or None,
        "findings": [
            {
                "cve": f.cve.id,
                "severity": str(f.cve.severity),
                "score": f.cve.score,
                "published": f.cve.published,
                "package": f.package.name,
                "version": f.package.version,
                "fixed_in": f.fixed_in,
                "exemption": (
                    {"reason": f.exemption.reason, "expires": str(f.exemption.expires)}
                    if f.exemption is not None
                    else None
                ),
            }
            for f in scan.findings
        ],
    }


def by_host(scans: Mapping[str, HostScan]) -> list[tuple[str, HostScan]]:
    """The hosts with a finding, by name."""
    return sorted(((n, s) for n, s in scans.items() if s.open or s.exempt), key=lambda i: i[0])


def by_cve(scans: Mapping[str, HostScan]) -> list[vulns.Vulnerability]:
    """The hosts' findings per CVE (:func:`gitops.inventory.vulns.by_cve`), each shared
    scan's findings read once for all the hosts that share it."""
    shared: dict[int, tuple[HostScan, list[str]]] = {}
    for name, scan in scans.items():
        shared.setdefault(id(scan), (scan, []))[1].append(name)
    # A set's open findings are the same objects in every scan of it: gather their hosts.
    hosts_of: dict[int, tuple[vulns.Finding, list[str]]] = {}
    for scan, hosts in shared.values():
        for finding in (*scan.open, *scan.exempt):
            entry = hosts_of.get(id(finding))
            if entry is None:
                hosts_of[id(finding)] = (finding, list(hosts))
            else:
                entry[1].extend(hosts)
    return vulns.by_cve((hosts, finding) for finding, hosts in hosts_of.values())
