"""The fleet model: ``fleet.yaml`` and ``hosts/<host>/host.yaml``, parsed into frozen values.

See docs/reference/fleet.md for every field. Parsing lists every problem with file,
field and fix; nothing downstream sees an unchecked value.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date

from gitops.fleet.schema import Problems, Reader, load_yaml
from gitops.fleet.source import Source
from gitops.protocol import is_host_name
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey

FLEET_FILE = "fleet.yaml"
HOSTS_DIR = "hosts"
PROFILES_DIR = "profiles"
HOST_FILE = "host.yaml"
DEFAULT_SHARED = ("flake.nix", "flake.lock", "modules")


@dataclass(frozen=True)
class Publisher:
    principal: str
    key: PublicKey


@dataclass(frozen=True)
class SiteSettings:
    title: str = "NixOS fleet"
    commit_url: str = ""  # e.g. https://git.example.org/org/fleet/commit/{sha}
    pull_request_url: str = ""  # e.g. https://git.example.org/org/fleet/pulls/{number}
    docs_url: str = ""


@dataclass(frozen=True)
class CveExemption:
    """A known vulnerability accepted until ``expires`` (fleet-wide or for one host)."""

    cve: str
    reason: str
    expires: date


@dataclass(frozen=True)
class VulnerabilitySettings:
    feeds: tuple[str, ...] = ()  # NVD CVE JSON 2.0 files or directories (relative: to the repo)
    exemptions: tuple[CveExemption, ...] = ()


@dataclass(frozen=True)
class FleetSettings:
    name: str = "fleet"
    publishers: tuple[Publisher, ...] = ()
    shared: tuple[str, ...] = DEFAULT_SHARED
    expires_after: int | None = None  # seconds a deploy commit stays valid
    poll_interval: int = 300
    report_interval: int = 3600
    stale_after: int = 3 * 3600
    site: SiteSettings = field(default_factory=SiteSettings)
    vulnerabilities: VulnerabilitySettings = field(default_factory=VulnerabilitySettings)

    def publisher_trust(self) -> AllowedSigners:
        """The publishers as an allowed-signers list (what agents pin on their machine)."""
        return AllowedSigners.of((p.principal, p.key) for p in self.publishers)


@dataclass(frozen=True)
class Exemption:
    policy: str
    reason: str
    expires: date


@dataclass(frozen=True)
class Host:
    name: str
    key: PublicKey | None
    profiles: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    owner: str = ""
    description: str = ""
    system: str = "x86_64-linux"
    location: str = ""
    exemptions: tuple[Exemption, ...] = ()
    cve_exemptions: tuple[CveExemption, ...] = ()

    def trust(self) -> AllowedSigners:
        """Who may sign this host's reports: its own key, nobody else."""
        if self.key is None:
            return AllowedSigners()
        return AllowedSigners.of([(self.name, self.key)])


@dataclass(frozen=True)
class Fleet:
    settings: FleetSettings
    hosts: dict[str, Host]
    profiles: frozenset[str]

    def host(self, name: str) -> Host:
        return self.hosts[name]


def profile_path(source: Source, name: str) -> str | None:
    """``profiles/<name>.nix`` or ``profiles/<name>/``, whichever exists."""
    if source.read(f"{PROFILES_DIR}/{name}.nix") is not None:
        return f"{PROFILES_DIR}/{name}.nix"
    if source.is_dir(f"{PROFILES_DIR}/{name}"):
        return f"{PROFILES_DIR}/{name}"
    return None


def _public_key(text: str) -> PublicKey:
    return PublicKey.parse(text)


def _parse_settings(source: Source, problems: Problems) -> FleetSettings:
    raw = source.read(FLEET_FILE)
    where = source.describe(FLEET_FILE)
    if raw is None:
        problems.add(where, "missing", "create fleet.yaml (see docs/reference/fleet.md)")
        return FleetSettings()
    data = load_yaml(raw, where, problems)
    if data is None:
        return FleetSettings()
    top = Reader(data, where, problems)
    publishers = []
    for item in top.items("publishers"):
        principal = item.string("principal", required=True)
        key = item.convert("key", _public_key, required=True, fix="paste the publisher's .pub line")
        item.finish()
        if principal and key is not None:
            publishers.append(Publisher(principal, key))
    if not publishers:
        top.problem(
            "publishers",
            "no publisher keys",
            "add one: publishers: [{principal: ci@example.org, key: 'ssh-ed25519 AAAA...'}]",
        )
    deploy = top.mapping("deploy")
    shared = deploy.strings("shared", check=_check_shared_path) or DEFAULT_SHARED
    expires_after = deploy.optional_duration("expires_after")
    deploy.finish()
    agent = top.mapping("agent")
    poll = agent.duration("poll_interval", 300)
    report = agent.duration("report_interval", 3600)
    agent.finish()
    thresholds = top.mapping("thresholds")
    stale = thresholds.duration("stale_after", max(3 * 3600, 2 * report))
    thresholds.finish()
    if stale < report:
        thresholds.problem(
            "stale_after",
            "is shorter than agent.report_interval",
            "every host would look stale; make it at least the report interval",
        )
    site = top.mapping("site")
    site_settings = SiteSettings(
        title=site.string("title", "NixOS fleet"),
        commit_url=site.string("commit_url"),
        pull_request_url=site.string("pull_request_url"),
        docs_url=site.string("docs_url"),
    )
    site.finish()
    vulnerabilities = top.mapping("vulnerabilities")
    vulnerability_settings = VulnerabilitySettings(
        feeds=vulnerabilities.strings("feeds"),
        exemptions=_cve_exemptions(vulnerabilities),
    )
    vulnerabilities.finish()
    name = top.string("name", "fleet")
    top.finish()
    return FleetSettings(
        name=name,
        publishers=tuple(publishers),
        shared=shared,
        expires_after=expires_after,
        poll_interval=poll,
        report_interval=report,
        stale_after=stale,
        site=site_settings,
        vulnerabilities=vulnerability_settings,
    )


_CVE_ID = re.compile(r"^CVE-\d{4}-\d{4,}$")


def _cve_exemptions(reader: Reader) -> tuple[CveExemption, ...]:
    """``exemptions: [{cve, reason, expires}]`` under a ``vulnerabilities`` mapping."""
    found = []
    for item in reader.items("exemptions"):
        cve = item.string("cve", required=True)
        reason = item.string("reason", required=True)
        expires = item.date("expires", required=True)
        item.finish()
        if cve and not _CVE_ID.match(cve):
            item.problem("cve", f"{cve!r} is not a CVE id", "write it as CVE-2024-12345")
        elif cve and reason and expires is not None:
            found.append(CveExemption(cve, reason, expires))
    return tuple(found)


def _check_shared_path(path: str) -> str | None:
    parts = path.strip("/").split("/")
    if not path or path.startswith("/") or ".." in parts:
        return f"{path!r} must be a relative path inside the repository"
    if parts[0] in (HOSTS_DIR, PROFILES_DIR):
        return f"{path!r}: hosts/ and profiles/ are chosen per host, not shared"
    return None


def _parse_host(source: Source, name: str, problems: Problems) -> Host | None:
    path = f"{HOSTS_DIR}/{name}/{HOST_FILE}"
    where = source.describe(path)
    raw = source.read(path)
    if raw is None:
        problems.add(where, "missing", f"every directory in hosts/ needs a {HOST_FILE}")
        return None
    data = load_yaml(raw, where, problems)
    if data is None:
        return None
    top = Reader(data, where, problems)
    key = top.convert(
        "key",
        _public_key,
        required=True,
        fix="paste the host's /etc/ssh/ssh_host_ed25519_key.pub",
    )
    profiles = top.strings("profiles")
    for index, profile in enumerate(profiles):
        if profile_path(source, profile) is None:
            top.problem(
                f"profiles[{index}]",
                f"unknown profile {profile!r}",
                f"add profiles/{profile}.nix or remove it from the list",
            )
    exemptions = []
    for item in top.items("exemptions"):
        policy = item.string("policy", required=True)
        reason = item.string("reason", required=True)
        expires = item.date("expires", required=True)
        item.finish()
        if policy and reason and expires is not None:
            exemptions.append(Exemption(policy, reason, expires))
    vulnerabilities = top.mapping("vulnerabilities")
    cve_exemptions = _cve_exemptions(vulnerabilities)
    vulnerabilities.finish()
    host = Host(
        name=name,
        key=key,
        profiles=profiles,
        tags=top.strings("tags"),
        owner=top.string("owner"),
        description=top.string("description"),
        system=top.string("system", "x86_64-linux"),
        location=top.string("location"),
        exemptions=tuple(exemptions),
        cve_exemptions=cve_exemptions,
    )
    top.finish()
    return host


def load_fleet(source: Source, problems: Problems) -> Fleet:
    """Parse the whole fleet; every problem goes into ``problems``."""
    settings = _parse_settings(source, problems)
    hosts: dict[str, Host] = {}
    names = source.list_dir(HOSTS_DIR)
    if names is None:
        problems.add(source.describe(HOSTS_DIR), "missing", "create hosts/<host>/host.yaml")
        names = []
    for name in names:
        if not source.is_dir(f"{HOSTS_DIR}/{name}"):
            continue
        if not is_host_name(name):
            problems.add(
                source.describe(f"{HOSTS_DIR}/{name}"),
                f"{name!r} is not a valid host name",
                "use lower-case letters, digits and '-' (an RFC 1123 label, at most 63)",
            )
            continue
        host = _parse_host(source, name, problems)
        if host is not None:
            hosts[name] = host
    seen_keys: dict[bytes, str] = {}
    for host in hosts.values():
        if host.key is None:
            continue
        other = seen_keys.setdefault(host.key.blob, host.name)
        if other != host.name:
            problems.add(
                source.describe(f"{HOSTS_DIR}/{host.name}/{HOST_FILE}"),
                f"key: same key as host {other!r}",
                "each host signs its reports with its own key",
            )
    profiles = frozenset(
        entry.removesuffix(".nix") for entry in source.list_dir(PROFILES_DIR) or []
    )
    return Fleet(settings, hosts, profiles)
