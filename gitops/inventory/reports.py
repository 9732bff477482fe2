"""Hosts' SBOMs as the repository holds them: the newest verified one on ``reports/<host>``.

The fleet (hosts and their keys) is read from ``main``, as the site does; a report commit
counts only when its signature verifies with the host key in main's
``hosts/<host>/host.yaml`` (:func:`gitops.trust.commits.verify_commit`). An SBOM whose
commit does not verify, or that names another host, is passed over and reported as a
problem, never used.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Final

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import Fleet, Host, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.inventory.sbom import Package, PackageQuery, Sbom, read_sbom
from gitops.protocol import MAIN_REF, SBOM_FILE, STATUS_FILE, Report, reports_ref
from gitops.report_commits import read_file, walk_reports
from gitops.trust import commits
from gitops.trust.sshsig import SignatureError

MAX_WALK: Final = 20_000  # report commits read per host looking for its SBOM


@dataclass(frozen=True)
class HostSbom:
    host: str
    commit: str  # the report commit that holds it
    text: bytes  # sbom.cdx.json as the host wrote it
    sbom: Sbom
    running: str | None  # current_system of the host's newest verified report

    @property
    def stale(self) -> bool:
        """The host's newest report says it runs another system than this SBOM's."""
        return self.running is not None and self.running != self.sbom.system


@dataclass(frozen=True)
class Lookup:
    found: HostSbom | None
    problems: tuple[str, ...]  # SBOMs passed over, and why


def load_main_fleet(repo: pygit2.Repository) -> Fleet:
    """The fleet at ``main``; one line saying what is wrong when it is invalid."""
    target = commits.ref_target(repo, MAIN_REF)
    commit = repo.get(target) if target is not None else None
    if not isinstance(commit, pygit2.Commit):
        raise GitopsError(
            f"{repo.path}: no branch 'main'; host keys are read from main "
            "(fetch it, or use a mirror: git clone --mirror)"
        )
    problems = Problems()
    fleet = load_fleet(TreeSource(repo, commit.tree, f"main ({commit.short_id})"), problems)
    if problems:
        raise GitopsError(
            f"{problems.items[0]}; fix it on main ('gitops check' lists every problem)"
        )
    return fleet


def latest_sbom(repo: pygit2.Repository, host: Host) -> Lookup:
    """The newest SBOM on ``reports/<host>`` signed by the host's key in main."""
    head = commits.ref_target(repo, reports_ref(host.name))
    if head is None:
        return Lookup(None, ())
    trust = host.trust()
    problems: list[str] = []
    running: str | None = None
    for count, oid in enumerate(walk_reports(repo, head)):
        if count >= MAX_WALK:
            break
        commit = repo.get(oid)
        assert isinstance(commit, pygit2.Commit)
        text = read_file(commit, SBOM_FILE)
        if text is None and running is not None:
            continue
        try:
            commits.verify_commit(repo, oid, trust)
        except SignatureError as err:
            if text is not None:
                problems.append(f"{host.name}: SBOM in {str(oid)[:8]} passed over: {err}")
            continue
        status = _report(commit)
        if running is None and status is not None:
            running = status.system.current_system
        if text is None:
            continue
        found = _checked(host.name, str(oid), text, status, running)
        if isinstance(found, str):
            problems.append(found)
            continue
        return Lookup(found, tuple(problems))
    return Lookup(None, tuple(problems))


def _report(commit: pygit2.Commit) -> Report | None:
    status = read_file(commit, STATUS_FILE)
    try:
        return Report.from_json(status) if status is not None else None
    except ValueError:
        return None


def _checked(
    host: str, oid: str, text: bytes, status: Report | None, running: str | None
) -> HostSbom | str:
    """The SBOM, or why it is passed over."""
    where = f"{host}: SBOM in {oid[:8]}"
    try:
        document = read_sbom(text)
    except ValueError as err:
        return f"{where} passed over: {err}"
    if document.host != host or (status is not None and status.host != host):
        return f"{where} passed over: it names host {document.host!r}"
    return HostSbom(host, oid, text, document, running)


@dataclass(frozen=True)
class FleetSboms:
    found: tuple[HostSbom, ...]
    missing: tuple[str, ...]  # hosts with no verified SBOM
    problems: tuple[str, ...]


def fleet_sboms(repo: pygit2.Repository, fleet: Fleet, hosts: Iterable[str] = ()) -> FleetSboms:
    """The newest verified SBOM of every host in ``fleet`` (or only of ``hosts``)."""
    names = list(hosts) or sorted(fleet.hosts)
    found: list[HostSbom] = []
    missing: list[str] = []
    problems: list[str] = []
    for name in names:
        lookup = latest_sbom(repo, host_in(fleet, name))
        problems += lookup.problems
        if lookup.found is None:
            missing.append(name)
        else:
            found.append(lookup.found)
    return FleetSboms(tuple(found), tuple(missing), tuple(problems))


def host_in(fleet: Fleet, name: str) -> Host:
    if name not in fleet.hosts:
        raise GitopsError(
            f"host {name!r} is not in main's hosts/ (known: {', '.join(sorted(fleet.hosts)[:5])}"
            f"{', ...' if len(fleet.hosts) > 5 else ''})"
        )
    return fleet.hosts[name]


@dataclass(frozen=True)
class Running:
    host: str
    package: Package
    stale: bool  # the host's newest report names another system than the SBOM's


def which(sboms: Iterable[HostSbom], name: str, version: str | None) -> list[Running]:
    """Hosts whose SBOM has package ``name`` (at ``version``, when given), as ``gitops
    status --package`` and the site's software page answer it (:class:`PackageQuery`)."""
    query = PackageQuery(name.lower(), version.lower() if version is not None else None)
    found = []
    for host_sbom in sboms:
        seen: set[tuple[str, str]] = set()
        for package in host_sbom.sbom.packages:
            wanted = query.matches(package.name, package.version)
            if wanted and (package.name, package.version) not in seen:
                seen.add((package.name, package.version))
                found.append(Running(host_sbom.host, package, host_sbom.stale))
    return found
