"""The fleet's software pages, from the hosts' derived rows and their package sets:

* ``software.html`` / ``software.json``: which hosts have an SBOM (and whose was
  refused), and which hosts run package X (version Y): every distinct (name, version)
  with the hosts running it, filtered in the page by a small script;
* ``software/<set>.html``: one package set (the distinct name/version pairs hosts
  running the same packages share), searchable; host pages link to theirs;
* ``vulnerabilities.html`` / ``.json``: the package sets matched against the NVD feed
  that ``fleet.yaml`` names (:mod:`gitops.inventory.vulns`), per CVE and per host, with
  the fleet's and each host's exemptions.

Hosts running the same packages share one set, read and matched once. A set is read
from the cache (``packages/<id>`` beside the site's cache) or from this build's
workers; the pages of a set are kept there too, by content, and linked while unchanged.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pygit2
from markupsafe import Markup, escape

from gitops.fleet.model import CveExemption, FleetSettings
from gitops.inventory import vulns
from gitops.inventory.sbom import parse_packages
from gitops.protocol import format_time
from gitops.sitegen import export, resources, vulnscan
from gitops.sitegen.derived import Derived, Rules
from gitops.sitegen.model import HostSoftware
from gitops.sitegen.render import Renderer, host_link
from gitops.system import atomic

MAX_CVE_HOSTS = 100  # host links per CVE on the page (the JSON has them all)


class PackageSets:
    """Package sets by id: those this build's workers sent, and the cache's."""

    def __init__(self, cache_dir: Path | None) -> None:
        self.directory = self.directory_in(cache_dir)
        self.pages = cache_dir / "software-pages" if cache_dir is not None else None
        self.new: dict[str, str] = {}
        self.used: set[str] = set()  # kept pages this build links
        for directory in (self.directory, self.pages):
            if directory is not None:
                directory.mkdir(parents=True, exist_ok=True)

    @staticmethod
    def directory_in(cache_dir: Path | None) -> Path | None:
        """Where the sets are kept in the site cache ``cache_dir``."""
        return cache_dir / "packages" if cache_dir is not None else None

    def add(self, set_id: str, text: str) -> None:
        self.new[set_id] = text
        if self.directory is not None and not (self.directory / set_id).exists():
            atomic.write_text(self.directory / set_id, text)

    def get(self, set_id: str) -> str | None:
        if set_id in self.new:
            return self.new[set_id]
        if self.directory is None:
            return None
        try:
            return (self.directory / set_id).read_text(encoding="utf-8")
        except OSError:
            return None

    def prune(self, keep: set[str]) -> None:
        """Forget the sets no host runs any more."""
        if self.directory is None:
            return
        for entry in os.scandir(self.directory):
            if entry.name not in keep:
                with contextlib.suppress(OSError):
                    Path(entry.path).unlink()

    def page(self, tmp: Path, path: str, key: str, render: Any) -> None:
        """Write ``path`` into the site: hard-linked from the cache when a page was kept
        for ``key``, else ``render()``, kept for the next build."""
        target = tmp / path
        target.parent.mkdir(parents=True, exist_ok=True)
        kept = self.pages / key if self.pages is not None else None
        if kept is not None:
            with contextlib.suppress(OSError):
                os.link(kept, target)
                self.used.add(key)
                return
        data = render()
        target.write_text(data, encoding="utf-8")
        if kept is not None:
            with contextlib.suppress(OSError):
                os.link(target, kept)
                self.used.add(key)

    def prune_pages(self) -> None:
        if self.pages is None:
            return
        for entry in os.scandir(self.pages):
            if entry.name not in self.used:
                with contextlib.suppress(OSError):
                    Path(entry.path).unlink()


@dataclass(frozen=True)
class Fleetware:
    """The hosts' software, by package set."""

    software: Mapping[str, HostSoftware | None]  # host -> its row (None: never reported)
    sets: Mapping[str, list[str]]  # set id -> hosts running it (accepted SBOM)
    texts: Mapping[str, str]  # set id -> its packages
    unindexed: Sequence[str]  # hosts whose set could not be read (cache lost it)

    @property
    def without(self) -> list[str]:
        return sorted(n for n, s in self.software.items() if s is None or s.sbom.found is None)


def _fleetware(derived: Mapping[str, Derived], sets: PackageSets) -> Fleetware:
    software = {name: d.software for name, d in sorted(derived.items())}
    by_set: dict[str, list[str]] = {}
    for name, row in software.items():
        if row is not None and row.sbom.found is not None:
            by_set.setdefault(row.sbom.found.packages_id, []).append(name)
    texts: dict[str, str] = {}
    unindexed: list[str] = []
    for set_id, hosts in by_set.items():
        text = sets.get(set_id)
        if text is None:
            unindexed += hosts
        else:
            texts[set_id] = text
    for set_id in set(by_set) - set(texts):
        del by_set[set_id]
    sets.prune(set(by_set))
    return Fleetware(software, by_set, texts, sorted(unindexed))


@dataclass(frozen=True)
class PackageRow:
    name: str
    version: str
    audience: int  # index into the audiences: which sets have it
    hosts: int


def _package_index(ware: Fleetware) -> tuple[list[str], list[list[int]], list[PackageRow]]:
    """(set ids, audiences: lists of set indices, one row per distinct package)."""
    ids = sorted(ware.sets)
    found: dict[tuple[str, str], list[int]] = {}
    for index, set_id in enumerate(ids):
        for pair in parse_packages(ware.texts[set_id]):
            found.setdefault(pair, []).append(index)
    audiences: dict[tuple[int, ...], int] = {}
    rows = []
    for (name, version), where in sorted(found.items()):
        key = tuple(where)
        audience = audiences.setdefault(key, len(audiences))
        hosts = sum(len(ware.sets[ids[i]]) for i in key)
        rows.append(PackageRow(name, version, audience, hosts))
    return ids, [list(a) for a in audiences], rows


def write(
    repo: pygit2.Repository,
    settings: FleetSettings,
    rules: Rules,
    docs: str,
    derived: Mapping[str, Derived],
    tmp: Path,
    sets: PackageSets,
    templates: Path | None,
    scanner: vulnscan.Scanner | None = None,
) -> None:
    """software.html, software/<set>.html and vulnerabilities.html, with their JSON; the
    hosts matched against the feed by ``scanner`` (:mod:`gitops.sitegen.vulnscan`), as
    their pages and policies were."""
    renderer = Renderer(settings.site, rules.now, docs, compiled=templates)
    ware = _fleetware(derived, sets)
    head = {"schema": export.SCHEMA, "built": format_time(rules.now)}
    code = resources.code_id()
    for set_id, text in ware.texts.items():
        pairs = parse_packages(text)
        sets.page(
            tmp,
            f"software/{set_id}.html",
            f"{code}-{set_id}.html",
            lambda pairs=pairs, set_id=set_id: renderer.render(
                "package_set.html",
                root="../",
                current="",
                title=f"Package set {set_id[:8]}",
                set_id=set_id,
                rows=_set_rows(pairs),
                count=len(pairs),
            ),
        )
    ids, audiences, rows = _package_index(ware)
    data = {
        **head,
        "hosts_with_sbom": sum(len(h) for h in ware.sets.values()),
        "hosts_without_sbom": ware.without,
        "hosts_unindexed": list(ware.unindexed),
        "sboms": {name: _sbom_json(row) for name, row in ware.software.items() if row is not None},
        "sets": [{"id": i, "hosts": ware.sets[i]} for i in ids],
        "audiences": audiences,
        "packages": [[r.name, r.version, r.audience] for r in rows],
    }
    index = export.dumps({"sets": data["sets"], "audiences": audiences})
    html = renderer.render(
        "software.html",
        root="",
        current="software.html",
        title="Software",
        ware=ware,
        package_rows=_package_rows(rows),
        package_count=len(rows),
        index=Markup(index.replace("</", "<\\/")),
        refused=[(n, s) for n, s in ware.software.items() if s is not None and s.sbom.refused],
        stale=[n for n, s in ware.software.items() if s is not None and s.stale],
    )
    (tmp / "software.html").write_text(html, encoding="utf-8")
    (tmp / "software.json").write_text(export.dumps(data), encoding="utf-8")
    if scanner is None:  # no build passed one: the feed fleet.yaml names, read here
        cache = sets.directory.parent if sets.directory is not None else None
        feed = vulnscan.load_feed(Path(repo.workdir or repo.path), settings, cache)
        scanner = vulnscan.Scanner(feed, sets.directory, settings.vulnerabilities.exemptions)
    _vulnerabilities(rules, renderer, ware, tmp, scanner, head)
    sets.prune_pages()


def _sbom_json(row: HostSoftware) -> dict[str, Any]:
    found = row.sbom.found
    return {
        "commit": found.commit if found else None,
        "system": found.system if found else None,
        "time": found.time if found else None,
        "components": found.components if found else 0,
        "packages": found.packages if found else 0,
        "package_set": found.packages_id if found else None,
        "stale": row.stale,
        "refused": [{"commit": r.commit, "why": r.why} for r in row.sbom.refused],
    }


def _set_rows(pairs: Iterable[tuple[str, str]]) -> Markup:
    return Markup(
        "\n".join(
            f"<tr><td>{escape(name)}</td><td>{escape(version)}</td></tr>" for name, version in pairs
        )
    )


def _package_rows(rows: Iterable[PackageRow]) -> Markup:
    return Markup(
        "\n".join(
            f'<tr data-a="{r.audience}"><td>{escape(r.name)}</td><td>{escape(r.version)}</td>'
            f'<td data-sort="{r.hosts}">{r.hosts}</td><td class="hosts"></td></tr>'
            for r in rows
        )
    )


# -- known vulnerabilities ----------------------------------------------------------------


@dataclass(frozen=True)
class HostVulns:
    host: str
    open: tuple[vulns.Finding, ...]
    exempt: tuple[vulns.Finding, ...]


def _vulnerabilities(
    rules: Rules,
    renderer: Renderer,
    ware: Fleetware,
    tmp: Path,
    scanner: vulnscan.Scanner,
    head: Mapping[str, Any],
) -> None:
    feed = scanner.feed
    feeds, error, cves = feed.configured, feed.error, feed.cves
    today = rules.now.date()
    scans = {
        host: scanner.host(ware.software[host], today, ware.texts[set_id])
        for set_id, names in ware.sets.items()
        for host in names
    }
    hosts = [HostVulns(n, s.open, s.exempt) for n, s in vulnscan.by_host(scans)]
    found = vulnscan.by_cve(scans)
    exemptions = {(f.cve.id, h.host): f.exemption for h in hosts for f in h.exempt}
    html = renderer.render(
        "vulnerabilities.html",
        root="",
        current="vulnerabilities.html",
        title="Vulnerabilities",
        configured=bool(feeds),
        error=error,
        cve_count=len(cves),
        found=found,
        hosts=hosts,
        exemptions=exemptions,
        scanned=sum(len(h) for h in ware.sets.values()),
        without=ware.without,
        max_hosts=MAX_CVE_HOSTS,
        host_links=lambda names: Markup(", ").join(host_link(n, "") for n in names),
    )
    (tmp / "vulnerabilities.html").write_text(html, encoding="utf-8")
    data = {
        **head,
        "feed_configured": bool(feeds),
        "feed_error": error or None,
        "cves_in_feed": len(cves),
        "hosts_scanned": sum(len(h) for h in ware.sets.values()),
        "hosts_without_sbom": ware.without,
        "vulnerabilities": [_vuln_json(v, exemptions) for v in found],
    }
    (tmp / "vulnerabilities.json").write_text(export.dumps(data), encoding="utf-8")


def _vuln_json(
    item: vulns.Vulnerability, exemptions: Mapping[tuple[str, str], CveExemption | None]
) -> dict[str, Any]:
    cve = item.cve
    return {
        "cve": cve.id,
        "severity": str(cve.severity),
        "score": cve.score,
        "published": cve.published,
        "summary": cve.summary,
        "packages": list(item.packages),
        "fixed_in": list(item.fixed_in),
        "hosts": list(item.hosts),
        "exempt_hosts": {
            host: {
                "reason": exemption.reason if exemption else "",
                "expires": str(exemption.expires) if exemption else "",
            }
            for host in item.exempt_hosts
            for exemption in (exemptions.get((cve.id, host)),)
        },
    }
