"""The fleet model: ``fleet.yaml`` and ``hosts/<host>/host.yaml``, parsed into frozen values.

See docs/reference/fleet.md for every field. Parsing lists every problem with file,
field and fix; nothing downstream sees an unchecked value.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date
from typing import Final

from gitops.errors import GitopsError
from gitops.fleet.alerts import AlertSettings, parse_alerts
from gitops.fleet.rollout import RolloutSettings, parse_rollout, unknown_hosts
from gitops.fleet.schema import Problems, Reader, load_yaml
from gitops.fleet.secrets import Admin, Secret, parse_secrets
from gitops.fleet.source import Source
from gitops.protocol import (
    CHECK_NAME,
    COMMAND_NAMESPACE,
    CONTROL_DIR,
    SECRETS_DIR,
    CheckSpec,
    HostControl,
    RebootPolicy,
    is_host_name,
    parse_timezone,
    parse_window,
)
from gitops.trust import age
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey

FLEET_FILE = "fleet.yaml"
FLAKE_FILE = "flake.nix"
HOSTS_DIR = "hosts"
PROFILES_DIR = "profiles"
HOST_FILE = "host.yaml"
DEFAULT_SHARED = (FLAKE_FILE, "flake.lock", "modules")
# A publisher's principal goes into allowed-signers files (where ',', '*', '?', quotes and
# spaces mean something) and into commit signatures (where '<', '>' and newlines break).
_PRINCIPAL: Final = re.compile(r"^[A-Za-z0-9._+@-]{1,255}$", re.ASCII)
# Profile names become paths (profiles/<name>.nix) and must match what check finds in imports.
_PROFILE_NAME: Final = re.compile(r"^[A-Za-z0-9_+-][A-Za-z0-9._+-]{0,99}$", re.ASCII)
_URL_SCHEMES: Final = ("https://", "http://")


@dataclass(frozen=True)
class Publisher:
    principal: str
    key: PublicKey


def listed_principal(listed: Iterable[Publisher], key: PublicKey) -> str | None:
    """The principal ``key`` has in ``listed`` (fleet.yaml publishers or commanders)."""
    return next((entry.principal for entry in listed if entry.key.blob == key.blob), None)


@dataclass(frozen=True)
class RebootRule:
    """``reboot:`` in fleet.yaml, under ``reboot.profiles.<name>``, or in host.yaml; None
    fields are inherited (host, then its first profile with a rule, then the fleet)."""

    allow: bool | None = None
    window: str | None = None  # "any": no window
    timezone: str | None = None

    def over(self, base: RebootPolicy) -> RebootPolicy:
        window = base.window if self.window is None else self.window
        return RebootPolicy(
            allow=base.allow if self.allow is None else self.allow,
            window=None if window in (None, ANY_TIME) else window,
            timezone=self.timezone or base.timezone,
        )


ANY_TIME: Final = "any"


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
    alerts: AlertSettings = field(default_factory=AlertSettings)
    admins: tuple[Admin, ...] = ()  # who can read every secret and escrowed key
    commanders: tuple[Publisher, ...] = ()  # who may sign commands (docs/commands.md)
    reboot: RebootRule | None = None
    profile_reboot: dict[str, RebootRule] = field(default_factory=dict)
    checks: dict[str, CheckSpec] = field(default_factory=dict)
    rollout: RolloutSettings | None = None  # staged rollout waves (docs/rollout.md)

    def publisher_trust(self) -> AllowedSigners:
        """The publishers as an allowed-signers list (what agents pin on their machine)."""
        return AllowedSigners.of((p.principal, p.key) for p in self.publishers)

    def commander_trust(self) -> AllowedSigners:
        """The commanders as an allowed-signers list (what agents pin for commands)."""
        return AllowedSigners.of(
            ((c.principal, c.key) for c in self.commanders), namespace=COMMAND_NAMESPACE
        )


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
    reboot: RebootRule | None = None

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
    secrets: tuple[Secret, ...] = ()  # secrets/secrets.yaml

    def secrets_of(self, host: str) -> tuple[Secret, ...]:
        """The secrets ``host`` can read (and receives in its deploy tree)."""
        return tuple(s for s in self.secrets if host in s.readers)

    def host(self, name: str) -> Host:
        return self.hosts[name]

    def reboot_policy(self, host: Host) -> RebootPolicy:
        """The host's reboot policy: its own rule over its first profile's over the fleet's."""
        policy = RebootPolicy()
        settings = self.settings
        for rule in (
            settings.reboot,
            next(
                (settings.profile_reboot[p] for p in host.profiles if p in settings.profile_reboot),
                None,
            ),
            host.reboot,
        ):
            if rule is not None:
                policy = rule.over(policy)
        return policy

    def host_control(self, host: Host) -> HostControl | None:
        """``gitops-control/settings.json`` for ``host``; None when the fleet sets neither
        reboot policies nor checks (deploy trees then stay as they were)."""
        settings = self.settings
        if not (settings.reboot or settings.profile_reboot or settings.checks or host.reboot):
            return None
        return HostControl(self.reboot_policy(host), dict(settings.checks))


def profile_path(source: Source, name: str) -> str | None:
    """``profiles/<name>.nix`` or ``profiles/<name>/``, whichever exists."""
    if source.read(f"{PROFILES_DIR}/{name}.nix") is not None:
        return f"{PROFILES_DIR}/{name}.nix"
    if source.is_dir(f"{PROFILES_DIR}/{name}"):
        return f"{PROFILES_DIR}/{name}"
    return None


def deploy_paths(fleet: Fleet, host: Host, source: Source) -> list[str]:
    """What ``host`` receives: the shared paths, its own directory, its profiles."""
    paths = [p for p in fleet.settings.shared if source.read(p) is not None or source.is_dir(p)]
    paths.append(f"{HOSTS_DIR}/{host.name}")
    for profile in host.profiles:
        path = profile_path(source, profile)
        if path is None:  # load_fleet reported it already
            raise GitopsError(f"{host.name}: unknown profile {profile!r}")
        paths.append(path)
    return paths


def _public_key(text: str) -> PublicKey:
    try:
        return PublicKey.parse(text)
    except GitopsError as err:  # a key blob the signature code cannot read
        raise ValueError(str(err)) from err


def _principal(text: str) -> str:
    if not _PRINCIPAL.match(text):
        raise ValueError(
            f"{text[:60]!r} is not a usable principal (letters, digits and . _ + @ - only)"
        )
    return text


def _check_url(text: str) -> str | None:
    """A link the site puts in pages: http(s), or a path; never ``javascript:``."""
    head = text.split("/", 1)[0]
    if ":" in head and not text.lower().startswith(_URL_SCHEMES):
        return f"{text[:60]!r} must be an http:// or https:// URL"
    return None


def _parse_publishers(top: Reader) -> tuple[Publisher, ...]:
    publishers = []
    for item in top.items("publishers"):
        principal = item.convert(
            "principal",
            _principal,
            required=True,
            fix="write an e-mail-like name, e.g. ci@example.org",
        )
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
    return tuple(publishers)


def _parse_admins(top: Reader) -> tuple[Admin, ...]:
    admins = []
    for item in top.items("admins"):
        name = item.string("name", required=True)
        recipient = item.convert(
            "key",
            age.parse_recipient,
            required=True,
            fix="paste an age1... key (age-keygen -y) or an 'ssh-ed25519 AAAA...' line",
        )
        item.finish()
        if name and recipient is not None:
            admins.append(Admin(name, recipient))
    return tuple(admins)


def _parse_reboot(reader: Reader) -> RebootRule | None:
    """``reboot: {allow, window, timezone}``; None when absent."""
    if reader.get("reboot") is None:
        return None
    rule = reader.mapping("reboot")
    parsed = _reboot_rule(rule)
    rule.finish()
    return parsed


def _reboot_rule(rule: Reader) -> RebootRule:
    allow = rule.get("allow")
    if allow is not None and not isinstance(allow, bool):
        rule.problem("allow", "must be true or false")
        allow = None
    window = rule.string("window") or None
    if window is not None and window != ANY_TIME:
        try:
            parse_window(window)
        except ValueError as err:
            rule.problem(
                "window", str(err), "write days and hours, e.g. 'Mon-Fri 02:00-05:00', or 'any'"
            )
            window = None
    timezone = rule.string("timezone") or None
    if timezone is not None:
        try:
            parse_timezone(timezone)
        except ValueError as err:
            rule.problem("timezone", str(err), "use an IANA name such as Europe/Berlin")
            timezone = None
    return RebootRule(allow, window, timezone)


def _parse_fleet_reboot(top: Reader) -> tuple[RebootRule | None, dict[str, RebootRule]]:
    if top.get("reboot") is None:
        return None, {}
    reader = top.mapping("reboot")
    profiles: dict[str, RebootRule] = {}
    per_profile = reader.mapping("profiles")
    for name in list(per_profile.data):
        child = per_profile.mapping(str(name))
        profiles[str(name)] = _reboot_rule(child)
        child.finish()
    per_profile.finish()
    rule = _reboot_rule(reader)
    reader.finish()
    return rule, profiles


def _parse_checks(top: Reader) -> dict[str, CheckSpec]:
    checks = top.mapping("checks")
    found: dict[str, CheckSpec] = {}
    for name in list(checks.data):
        item = checks.mapping(str(name))
        if not CHECK_NAME.match(str(name)):
            checks.problem(
                str(name), "is not a check name", "use lower-case letters, digits and . _ -"
            )
            continue
        command = item.strings("command")
        timeout = item.duration("timeout", 60)
        item.finish()
        if not command:
            item.problem("command", "is missing", "write the argument list, e.g. [/bin/true]")
        elif timeout <= 0:
            item.problem("timeout", "must be longer than 0 seconds")
        else:
            found[str(name)] = CheckSpec(command, timeout)
    checks.finish()
    return found


def _parse_commanders(top: Reader) -> tuple[Publisher, ...]:
    commanders = []
    for item in top.items("commanders"):
        principal = item.convert(
            "principal", _principal, required=True, fix="write an e-mail-like name"
        )
        key = item.convert("key", _public_key, required=True, fix="paste the admin's .pub line")
        item.finish()
        if principal and key is not None:
            commanders.append(Publisher(principal, key))
    return tuple(commanders)


def _parse_deploy(top: Reader) -> tuple[tuple[str, ...], int | None]:
    deploy = top.mapping("deploy")
    shared = deploy.strings("shared", check=_check_shared_path)
    for index, path in enumerate(shared):
        inside = [other for other in shared[:index] if _overlaps(other, path)]
        if inside:
            deploy.problem(
                f"shared[{index}]",
                f"{path!r} overlaps {inside[0]!r}, listed before it",
                "list each path once, and a directory or what is in it, not both",
            )
    expires_after = deploy.optional_duration("expires_after")
    if expires_after == 0:
        deploy.problem("expires_after", "must be longer than 0", "e.g. 30d, or remove it")
    deploy.finish()
    return shared or DEFAULT_SHARED, expires_after or None


def _overlaps(first: str, second: str) -> bool:
    a, b = first.strip("/"), second.strip("/")
    return a == b or a.startswith(b + "/") or b.startswith(a + "/")


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
    publishers = _parse_publishers(top)
    shared, expires_after = _parse_deploy(top)
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
    site_settings = _parse_site(top.mapping("site"))
    vulnerabilities = top.mapping("vulnerabilities")
    vulnerability_settings = VulnerabilitySettings(
        feeds=vulnerabilities.strings("feeds"),
        exemptions=_cve_exemptions(vulnerabilities),
    )
    vulnerabilities.finish()
    alerts = parse_alerts(top.mapping("alerts"))
    name = top.string("name", "fleet")
    admins = _parse_admins(top)
    commanders = _parse_commanders(top)
    reboot, profile_reboot = _parse_fleet_reboot(top)
    checks = _parse_checks(top)
    rollout = parse_rollout(top)
    top.finish()
    return FleetSettings(
        commanders=commanders,
        reboot=reboot,
        profile_reboot=profile_reboot,
        checks=checks,
        name=name,
        publishers=publishers,
        shared=shared,
        expires_after=expires_after,
        poll_interval=poll,
        report_interval=report,
        stale_after=stale,
        site=site_settings,
        vulnerabilities=vulnerability_settings,
        alerts=alerts,
        admins=admins,
        rollout=rollout,
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


def _parse_site(site: Reader) -> SiteSettings:
    links: dict[str, str] = {}
    for key in ("commit_url", "pull_request_url", "docs_url"):
        links[key] = site.string(key)
        problem = _check_url(links[key]) if links[key] else None
        if problem:
            site.problem(key, problem)
            links[key] = ""
    settings = SiteSettings(title=site.string("title", "NixOS fleet"), **links)
    site.finish()
    return settings


def _check_shared_path(path: str) -> str | None:
    """A path inside the repository, spelled one way: ``modules`` or ``nix/common.nix``."""
    parts = path.removesuffix("/").split("/")
    if path.startswith("/") or any(part in ("", ".", "..") for part in parts):
        return f"{path!r} must be a relative path inside the repository, without . or .."
    if not path.isprintable() or any(part == ".git" or "\\" in part for part in parts):
        return f"{path!r} is not a path a deploy tree can carry"
    if parts[0] in (HOSTS_DIR, PROFILES_DIR, SECRETS_DIR):
        return f"{path!r}: hosts/ and profiles/ are chosen per host (secrets/ too), not shared"
    if parts[0] in (HOSTS_DIR, PROFILES_DIR):
        return f"{path!r}: hosts/ and profiles/ are chosen per host, not shared"
    if parts[0] == CONTROL_DIR:
        return f"{path!r}: {CONTROL_DIR}/ is written by publish (commands, reboot policy)"
    return None


def _check_profile_name(name: str) -> str | None:
    if not _PROFILE_NAME.match(name):
        return (
            f"{name[:60]!r} is not a profile name (letters, digits and . _ + -, "
            "naming profiles/<name>.nix)"
        )
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
    profiles = top.strings("profiles", check=_check_profile_name)
    for index, profile in enumerate(profiles):
        if profile_path(source, profile) is None:
            top.problem(
                f"profiles[{index}]",
                f"unknown profile {profile!r}",
                f"add profiles/{profile}.nix or remove it from the list",
            )
    exemptions = _parse_exemptions(top)
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
        reboot=_parse_reboot(top),
    )
    top.finish()
    return host


def _parse_exemptions(top: Reader) -> tuple[Exemption, ...]:
    exemptions: dict[str, Exemption] = {}
    for index, item in enumerate(top.items("exemptions")):
        policy = item.string("policy", required=True)
        reason = item.string("reason", required=True)
        expires = item.date("expires", required=True)
        item.finish()
        if policy in exemptions:
            top.problem(
                f"exemptions[{index}].policy",
                f"{policy!r} is exempted twice",
                "keep one exemption per policy",
            )
        elif policy and reason and expires is not None:
            exemptions[policy] = Exemption(policy, reason, expires)
    return tuple(exemptions.values())


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
                f"same key as host {other!r}",
                "each host signs its reports with its own key",
                field="key",
            )
    _check_rollout_hosts(source, settings, hosts, problems)
    profiles = frozenset(
        entry.removesuffix(".nix") for entry in source.list_dir(PROFILES_DIR) or []
    )
    secrets = parse_secrets(
        source, {h.name: (h.key, h.tags) for h in hosts.values()}, settings.admins, problems
    )
    for profile in sorted(set(settings.profile_reboot) - profiles):
        problems.add(
            source.describe(FLEET_FILE),
            f"unknown profile {profile!r}",
            f"add profiles/{profile}.nix or remove it",
            field=f"reboot.profiles.{profile}",
        )
    return Fleet(settings, hosts, profiles, secrets)


def _check_rollout_hosts(
    source: Source, settings: FleetSettings, hosts: dict[str, Host], problems: Problems
) -> None:
    if settings.rollout is None:
        return
    for index, host in unknown_hosts(settings.rollout, hosts):
        problems.add(
            source.describe(FLEET_FILE),
            f"unknown host {host!r}",
            "hosts are the directories in hosts/",
            field=f"rollout.waves[{index}].hosts",
        )
