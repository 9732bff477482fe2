"""Known vulnerabilities: hosts' SBOM packages matched against an NVD CVE JSON 2.0 feed.

The admin provides the feed files (``nvdcve-2.0-<year>.json[.gz]``, as NVD publishes
them, or any file with the API 2.0 ``vulnerabilities`` list): ``fleet.yaml``
``vulnerabilities.feeds`` or ``gitops vulns --feed``. Nothing here downloads anything.

Matching is a heuristic, as vulnix's is (docs/inventory.md says how good it is):

* every ``cpeMatch`` marked vulnerable, in any configuration node, is a candidate; the
  AND-nodes that say "only on this platform" are not evaluated (more matches, not fewer);
* the CPE's product matches a package when their names agree after normalising both
  (lower case, ``_`` as ``-``; a package's ``python3.12-``/``perl5.38.2-`` prefix
  dropped; a few aliases such as ``linux_kernel`` = ``linux``); the CPE vendor is ignored;
* the version matches the CPE's own version, or lies in its
  ``versionStart*``/``versionEnd*`` range, compared as ``builtins.compareVersions``
  does; a CPE with any version (``*``) and no range matches every version.
* Patches nixpkgs applies without changing the version are invisible: a patched package
  still matches. Exemptions (fleet-wide or per host, with a reason and an expiry) are how
  an admin records that.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from datetime import date
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import CveExemption, Fleet
from gitops.inventory import reports
from gitops.inventory.nixnames import compare_versions
from gitops.inventory.sbom import Package
from gitops.protocol import parse_json

# The CPE product (normalised) → the nixpkgs package name, where they differ.
ALIASES: Final = {"linux-kernel": "linux", "http-server": "apache-httpd"}
_LANGUAGE_PREFIXES: Final = ("python", "perl", "ruby", "lua", "php", "ocaml", "ghc")
_METRICS: Final = ("cvssMetricV40", "cvssMetricV31", "cvssMetricV30", "cvssMetricV2")
_ANY: Final = ("*", "")


class Severity(StrEnum):
    CRITICAL = "critical"
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"
    NONE = "none"
    UNKNOWN = "unknown"

    @property
    def rank(self) -> int:
        return list(Severity).index(self)


def _at_least(order: int) -> bool:
    return order >= 0


def _above(order: int) -> bool:
    return order > 0


def _at_most(order: int) -> bool:
    return order <= 0


def _below(order: int) -> bool:
    return order < 0


@dataclass(frozen=True)
class VersionRange:
    exact: str | None = None  # the CPE's own version, when not *
    start_including: str | None = None
    start_excluding: str | None = None
    end_including: str | None = None
    end_excluding: str | None = None

    def contains(self, version: str) -> bool:
        if self.exact is not None:
            return compare_versions(version, self.exact) == 0
        return all(
            bound is None or ok(compare_versions(version, bound))
            for bound, ok in (
                (self.start_including, _at_least),
                (self.start_excluding, _above),
                (self.end_including, _at_most),
                (self.end_excluding, _below),
            )
        )

    @property
    def fixed_in(self) -> str | None:
        """The first fixed version, when the range says it (``versionEndExcluding``)."""
        return self.end_excluding


@dataclass(frozen=True)
class Affected:
    product: str  # normalised CPE product
    versions: VersionRange


@dataclass(frozen=True)
class Cve:
    id: str
    severity: Severity
    score: float | None
    published: str
    summary: str
    affected: tuple[Affected, ...]


@dataclass(frozen=True)
class Finding:
    """One vulnerable package on one host."""

    cve: Cve
    host: str
    package: Package
    fixed_in: str | None
    exemption: CveExemption | None  # in force today, else None


@dataclass(frozen=True)
class Vulnerability:
    """One CVE across the fleet: the hosts it affects (and those exempt)."""

    cve: Cve
    hosts: tuple[str, ...]
    exempt_hosts: tuple[str, ...]
    packages: tuple[str, ...]  # "openssl 3.0.13", ...
    fixed_in: tuple[str, ...]


# -- the feed ---------------------------------------------------------------------------


def feed_files(paths: Iterable[Path]) -> list[Path]:
    """The feed files named, a directory standing for its *.json and *.json.gz."""
    found: list[Path] = []
    for path in paths:
        if path.is_dir():
            found += sorted(p for p in path.iterdir() if p.name.endswith((".json", ".json.gz")))
        elif path.is_file():
            found.append(path)
        else:
            raise GitopsError(
                f"{path}: no such vulnerability feed; download NVD's nvdcve-2.0-<year>.json.gz "
                "files there, or fix vulnerabilities.feeds in fleet.yaml / --feed"
            )
    return found


def load_feed(paths: Iterable[Path]) -> list[Cve]:
    cves: dict[str, Cve] = {}
    for path in feed_files(paths):
        for cve in _read_feed(path):
            cves[cve.id] = cve  # a later file (a "modified" feed) replaces an earlier entry
    return list(cves.values())


# NVD's largest yearly feed is a few hundred MB unpacked; anything far beyond is a bomb.
MAX_FEED_BYTES = 2 * 1024**3


def _gunzip(raw: bytes, limit: int | None = None) -> bytes:
    """Unpack a gzip feed, refusing more than ``limit`` bytes (a gzip bomb would otherwise
    fill memory before the JSON parser sees a byte)."""
    limit = MAX_FEED_BYTES if limit is None else limit
    unpacker = zlib.decompressobj(wbits=31)  # 31: gzip header
    data = unpacker.decompress(raw, limit + 1)
    if len(data) > limit or unpacker.unconsumed_tail:
        raise ValueError(f"unpacks to more than {limit // 1024**2} MiB")
    if not unpacker.eof:
        raise EOFError("the gzip stream is truncated")
    return data


def _read_feed(path: Path) -> Iterator[Cve]:
    try:
        raw = path.read_bytes()
        data = parse_json(_gunzip(raw) if raw[:2] == b"\x1f\x8b" else raw)
    except (OSError, ValueError, EOFError, zlib.error) as err:
        raise GitopsError(f"{path}: not a readable NVD CVE JSON feed ({err})") from err
    items = data.get("vulnerabilities") if isinstance(data, dict) else None
    if not isinstance(items, list):
        raise GitopsError(
            f"{path}: no 'vulnerabilities' list; this reads NVD's CVE JSON 2.0 feeds "
            "(nvdcve-2.0-<year>.json.gz), not the retired 1.1 ones"
        )
    for item in items:
        cve = _cve(item.get("cve") if isinstance(item, dict) else None)
        if cve is not None:
            yield cve


def _cve(data: object) -> Cve | None:
    """One feed entry; None for one that is malformed or rejected."""
    if not isinstance(data, dict) or not isinstance(data.get("id"), str):
        return None
    if data.get("vulnStatus") == "Rejected":
        return None
    severity, score = _severity(data.get("metrics") or {})
    summary = next(
        (
            str(d.get("value", ""))
            for d in data.get("descriptions") or []
            if isinstance(d, dict) and d.get("lang") == "en"
        ),
        "",
    )
    return Cve(
        id=data["id"],
        severity=severity,
        score=score,
        published=str(data.get("published", ""))[:10],
        summary=summary,
        affected=tuple(_affected(data.get("configurations") or [])),
    )


def _severity(metrics: Mapping[str, Any]) -> tuple[Severity, float | None]:
    """The newest CVSS version given, NVD's own (Primary) score first."""
    for key in _METRICS:
        entries = [m for m in metrics.get(key) or [] if isinstance(m, dict)]
        entries.sort(key=lambda m: m.get("type") != "Primary")
        for entry in entries:
            cvss = entry.get("cvssData") or {}
            label = cvss.get("baseSeverity") or entry.get("baseSeverity")  # v2 has it outside
            score = cvss.get("baseScore")
            try:
                severity = Severity(str(label).lower())
            except ValueError:
                continue
            return severity, float(score) if isinstance(score, int | float) else None
    return Severity.UNKNOWN, None


def _affected(configurations: list[Any]) -> Iterator[Affected]:
    for configuration in configurations:
        for node in (configuration or {}).get("nodes") or []:
            for match in (node or {}).get("cpeMatch") or []:
                if isinstance(match, dict) and match.get("vulnerable"):
                    affected = _cpe_match(match)
                    if affected is not None:
                        yield affected


def _cpe_match(match: Mapping[str, Any]) -> Affected | None:
    parts = str(match.get("criteria", "")).split(":")
    # cpe:2.3:<part>:<vendor>:<product>:<version>:<update>:...
    if len(parts) < 6 or parts[:2] != ["cpe", "2.3"] or parts[2] not in ("a", "o"):
        return None
    product, version = parts[4], parts[5]
    if product in _ANY:
        return None
    bounds = {
        key: str(match[key])
        for key in (
            "versionStartIncluding",
            "versionStartExcluding",
            "versionEndIncluding",
            "versionEndExcluding",
        )
        if match.get(key)
    }
    versions = VersionRange(
        exact=None if version in _ANY or version == "-" else version.replace("\\", ""),
        start_including=bounds.get("versionStartIncluding"),
        start_excluding=bounds.get("versionStartExcluding"),
        end_including=bounds.get("versionEndIncluding"),
        end_excluding=bounds.get("versionEndExcluding"),
    )
    return Affected(normalise(product.replace("\\", "")), versions)


# -- matching ---------------------------------------------------------------------------


def normalise(name: str) -> str:
    plain = name.lower().replace("_", "-")
    return ALIASES.get(plain, plain)


def package_keys(name: str) -> set[str]:
    """The names a package may go by in CPE products: ``python3.12-requests`` → also
    ``requests``."""
    plain = normalise(name)
    keys = {plain}
    first, sep, rest = plain.partition("-")
    if sep and rest and first.startswith(_LANGUAGE_PREFIXES):
        keys.add(rest)
    return keys


def index_by_product(cves: Iterable[Cve]) -> dict[str, list[tuple[Cve, Affected]]]:
    index: dict[str, list[tuple[Cve, Affected]]] = {}
    for cve in cves:
        for affected in cve.affected:
            index.setdefault(affected.product, []).append((cve, affected))
    return index


def match_host(
    host: str,
    packages: Iterable[Package],
    index: Mapping[str, list[tuple[Cve, Affected]]],
    exemptions: Mapping[str, CveExemption],
    today: date,
) -> list[Finding]:
    """A host's findings, one per (CVE, package name and version)."""
    findings: dict[tuple[str, str, str], Finding] = {}
    for package in packages:
        if not package.version:
            continue
        for key in package_keys(package.name):
            for cve, affected in index.get(key, ()):
                if not affected.versions.contains(package.version):
                    continue
                exemption = exemptions.get(cve.id)
                in_force = exemption if exemption and exemption.expires >= today else None
                findings.setdefault(
                    (cve.id, package.name, package.version),
                    Finding(cve, host, package, affected.versions.fixed_in, in_force),
                )
    return sorted(findings.values(), key=lambda f: (f.cve.severity.rank, f.cve.id))


def exemptions_for(
    fleet_wide: Iterable[CveExemption], host: Iterable[CveExemption]
) -> dict[str, CveExemption]:
    """CVE id → exemption; a host's own outlasts (replaces) the fleet's."""
    found = {e.cve: e for e in fleet_wide}
    found.update({e.cve: e for e in host})
    return found


def by_cve(findings: Iterable[Finding | tuple[Iterable[str], Finding]]) -> list[Vulnerability]:
    """Findings grouped per CVE, worst first. A finding may come with the hosts it stands
    for (``(hosts, finding)``: hosts sharing a package set share their findings), else it
    stands for its own ``host``."""
    groups: dict[str, tuple[Cve, set[str], set[str], set[str], set[str]]] = {}
    for item in findings:
        hosts, finding = item if isinstance(item, tuple) else ((item.host,), item)
        cve = finding.cve
        _, open_hosts, exempt, packages, fixed = groups.setdefault(
            cve.id, (cve, set(), set(), set(), set())
        )
        (exempt if finding.exemption is not None else open_hosts).update(hosts)
        packages.add(finding.package.label)
        if finding.fixed_in:
            fixed.add(finding.fixed_in)
    result = [
        Vulnerability(
            cve=cve,
            hosts=tuple(sorted(open_hosts)),
            exempt_hosts=tuple(sorted(exempt - open_hosts)),
            packages=tuple(sorted(packages)),
            fixed_in=tuple(sorted(fixed)),
        )
        for cve, open_hosts, exempt, packages, fixed in groups.values()
    ]
    return sorted(result, key=lambda v: (v.cve.severity.rank, -len(v.hosts), v.cve.id))


# -- a fleet scan -------------------------------------------------------------------------


@dataclass(frozen=True)
class Scan:
    findings: tuple[Finding, ...]
    scanned: tuple[str, ...]  # hosts whose SBOM was matched
    missing: tuple[str, ...]  # hosts with no verified SBOM: nothing is known of them
    problems: tuple[str, ...]
    cves: int  # entries in the feed


def feed_paths(repo_dir: Path, fleet: Fleet, given: Iterable[Path]) -> list[Path]:
    """``--feed`` paths, else fleet.yaml's (relative ones under the repository)."""
    chosen = list(given) or [repo_dir / p for p in fleet.settings.vulnerabilities.feeds]
    if not chosen:
        raise GitopsError(
            "no vulnerability feed: pass --feed PATH (NVD's nvdcve-2.0-<year>.json.gz files) "
            "or set vulnerabilities.feeds in fleet.yaml"
        )
    return chosen


def scan(
    repo: pygit2.Repository,
    fleet: Fleet,
    feeds: Iterable[Path],
    *,
    hosts: Iterable[str] = (),
    today: date,
) -> Scan:
    """Every host's newest verified SBOM matched against the feed."""
    cves = load_feed(feeds)
    index = index_by_product(cves)
    sboms = reports.fleet_sboms(repo, fleet, hosts)
    findings: list[Finding] = []
    for host_sbom in sboms.found:
        exemptions = exemptions_for(
            fleet.settings.vulnerabilities.exemptions,
            fleet.hosts[host_sbom.host].cve_exemptions,
        )
        findings += match_host(host_sbom.host, host_sbom.sbom.packages, index, exemptions, today)
    return Scan(
        findings=tuple(findings),
        scanned=tuple(s.host for s in sboms.found),
        missing=sboms.missing,
        problems=sboms.problems,
        cves=len(cves),
    )
