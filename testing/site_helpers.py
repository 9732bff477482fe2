"""Fixture fleets for the site tests: a real repository written with pygit2, real keys,
real signed deploy commits (through gitops.publish.plan) and real signed report commits."""

from __future__ import annotations

import shutil
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

import pygit2
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from typing_extensions import override

from gitops.protocol import Report, Result, SystemInfo, deploy_ref, reports_ref
from gitops.publish import plan as publish
from gitops.report_commits import create_report_commit
from gitops.trust import commits
from gitops.trust.keys import public_line

ROOT = Path(__file__).resolve().parent.parent
NOW = datetime(2026, 11, 23, 12, 0, 0, tzinfo=UTC)
PUBLISHER = "ci@example.org"

GOOD_FACTS: dict[str, Any] = {
    "firewall": "active",
    "ssh_password_login": "disabled",
    "ssh_root_login": "prohibit-password",
    "disk_encryption": "luks",
    "luks_devices": ["cryptroot"],
    "gc_timer": "enabled",
    "auto_upgrade_timer": "absent",
    "failed_units": [],
    "uptime_seconds": 3600,
    "disk_free_bytes": {"/": 50 << 30, "/nix": 80 << 30},
    "disk_total_bytes": {"/": 100 << 30, "/nix": 100 << 30},
    "machine_id": "0123456789abcdef0123456789abcdef",
    "nixos_version": "unknown",
    "backups": {"restic-backups-nas.service": {"result": "success", "finished": "unknown"}},
    "backup_failed_units": [],
    "backup_age_seconds": 3600,
}


@dataclass
class Fleet:
    """A fleet repository under construction."""

    path: Path
    repo: pygit2.Repository
    publisher: ed25519.Ed25519PrivateKey = field(default_factory=ed25519.Ed25519PrivateKey.generate)
    keys: dict[str, ed25519.Ed25519PrivateKey] = field(default_factory=dict)
    hosts: dict[str, dict[str, Any]] = field(default_factory=dict)
    site: dict[str, str] = field(default_factory=dict)
    alerts: dict[str, Any] = field(default_factory=dict)
    policies: dict[str, str] = field(default_factory=dict)
    generations: dict[str, int] = field(default_factory=dict)

    @classmethod
    def create(cls, path: Path, *, example_policies: bool = True) -> Fleet:
        repo = pygit2.init_repository(str(path), bare=True)
        fleet = cls(path, repo)
        if example_policies:
            for policy in sorted((ROOT / "policies").glob("*.yaml")):
                fleet.policies[policy.name] = policy.read_text()
        return fleet

    def add_host(self, name: str, **fields: Any) -> None:
        key = ed25519.Ed25519PrivateKey.generate()
        self.keys[name] = key
        self.hosts[name] = {
            "key": public_line(key).strip(),
            "profiles": ["workstation"],
            "tags": ["laptop"],
            "owner": f"{name}-owner@example.org",
            **fields,
        }

    def _blob(self, text: str) -> pygit2.Oid:
        return self.repo.create_blob(text.encode())

    def _tree(self, entries: Mapping[str, Any]) -> pygit2.Oid:
        builder = self.repo.TreeBuilder()
        for name, value in sorted(entries.items()):
            if isinstance(value, Mapping):
                builder.insert(name, self._tree(value), pygit2.enums.FileMode.TREE)
            else:
                builder.insert(name, self._blob(value), pygit2.enums.FileMode.BLOB)
        return builder.write()

    def fleet_yaml(self) -> str:
        data: dict[str, Any] = {
            "name": "test",
            "publishers": [{"principal": PUBLISHER, "key": public_line(self.publisher).strip()}],
            "agent": {"report_interval": "1h"},
            "thresholds": {"stale_after": "1d"},
        }
        if self.site:
            data["site"] = dict(self.site)
        if self.alerts:
            data["alerts"] = dict(self.alerts)
        return yaml.safe_dump(data)

    def commit_main(self, message: str, when: datetime, *, extra: Mapping[str, str] = {}) -> str:
        """Commit the current hosts/policies/settings to main; returns the sha."""
        hosts = {
            name: {
                "host.yaml": yaml.safe_dump(data),
                "configuration.nix": f'{{ ... }}: {{ networking.hostName = "{name}"; }}\n'
                + extra.get(name, ""),
            }
            for name, data in self.hosts.items()
        }
        tree = self._tree(
            {
                "fleet.yaml": self.fleet_yaml(),
                "flake.nix": "{ outputs = _: { }; }\n",
                "hosts": hosts,
                "profiles": {
                    "workstation.nix": "{ ... }: { }\n" + extra.get("workstation", ""),
                    "server.nix": "{ ... }: { }\n",
                },
                "policies": dict(self.policies),
            }
        )
        author = commits.signature_of("Alice Admin", "alice@example.org", when)
        head = commits.ref_target(self.repo, "refs/heads/main")
        parents = [head] if head is not None else []
        oid = self.repo.create_commit(None, author, author, message, tree, parents)
        self.repo.references.create("refs/heads/main", oid, force=True)
        return str(oid)

    def publish(self, when: datetime, *, only: tuple[str, ...] = ()) -> dict[str, str]:
        """Sign and write deploy commits for changed hosts, as ``gitops publish`` does."""
        plan = publish.make_plan(self.repo, "main", only=only)
        published = publish.write_commits(self.repo, plan, self.publisher, now=when)
        return {host: str(oid) for host, oid in published.commits.items()}

    def deploy_head(self, host: str) -> str:
        target = commits.ref_target(self.repo, deploy_ref(host))
        assert target is not None
        return str(target)

    def report(
        self,
        host: str,
        when: datetime,
        result: Result = Result.APPLIED,
        *,
        applied: str | None = None,
        key: ed25519.Ed25519PrivateKey | None = None,
        facts: Mapping[str, Any] | None = None,
        reboot: bool = False,
        running: str | None = None,
        log_tail: str = "",
        version: str = "25.05.20250601.abcdef0",
        move_ref: bool = True,
        action: str = "switch",
    ) -> str:
        """Write a signed report on reports/<host>; ``applied`` defaults to the deploy head."""
        deploy = applied if applied is not None else self.deploy_head(host)
        if result is Result.APPLIED:
            self.generations[host] = self.generations.get(host, 0) + 1
        generation = self.generations.get(host, 1)
        store = f"/nix/store/{deploy[:32]}-nixos-system-{host}-{version}"
        report = Report(
            host=host,
            time=when,
            agent_version="0.1.0",
            result=result,
            reason=f"{result} for the test",
            report_id=uuid.uuid4().hex,
            deploy_seen=self.deploy_head(host),
            deploy_applied=deploy,
            source_commit=None,
            system=SystemInfo(
                store_path=store,
                generation=generation,
                current_system=running or store,
                booted_system=store,
                nixos_version=version,
                current_kernel="/nix/store/k/bzImage",
                booted_kernel="/nix/store/k/bzImage",
                reboot_required=reboot,
            ),
            facts=dict(GOOD_FACTS if facts is None else facts),
            log_tail=log_tail,
            action=action,
        )
        ref = reports_ref(host)
        parent = commits.ref_target(self.repo, ref)
        oid = create_report_commit(self.repo, report, parent=parent, key=key or self.keys[host])
        if move_ref:
            self.repo.references.create(ref, oid, force=True)
        return str(oid)

    def raw_report(self, host: str, status: bytes, when: datetime, *, signed: bool = True) -> str:
        """A commit on reports/<host> holding ``status`` as its status.json, whatever it is:
        signed with the host's key, or not signed at all."""
        builder = self.repo.TreeBuilder()
        builder.insert("status.json", self.repo.create_blob(status), pygit2.enums.FileMode.BLOB)
        ref = reports_ref(host)
        parent = commits.ref_target(self.repo, ref)
        parents = [parent] if parent is not None else []
        identity = commits.signature_of(f"gitops-agent {host}", f"{host}@example.org", when)
        message = f"report {host}: by hand\n"
        if signed:
            oid = commits.create_signed_commit(
                self.repo,
                tree=builder.write(),
                parents=parents,
                message=message,
                author=identity,
                key=self.keys[host],
            )
        else:
            oid = self.repo.create_commit(
                None, identity, identity, message, builder.write(), parents
            )
        self.repo.references.create(ref, oid, force=True)
        return str(oid)

    def set_ref(self, ref: str, oid: str) -> None:
        self.repo.references.create(ref, pygit2.Oid(hex=oid), force=True)


def standard_fleet(path: Path) -> Fleet:
    """One host in each state; see test_site.py for what each must show."""
    fleet = Fleet.create(path)
    fleet.site = {
        "title": "Test fleet",
        "commit_url": "https://git.example.org/fleet/commit/{sha}",
        "pull_request_url": "https://git.example.org/fleet/pulls/{number}",
    }
    for name in (
        "up",
        "pending",
        "failed",
        "rolledback",
        "rejected",
        "stale",
        "never",
        "forged",
        "offline",
        "drifting",
        "reboot",
        "exempt",
        "server",
    ):
        fleet.add_host(name)
    fleet.hosts["server"].update(profiles=["server"], tags=["rack"])
    fleet.hosts["exempt"]["exemptions"] = [
        {"policy": "disk-encryption", "reason": "lab machine", "expires": "2099-01-01"},
        {"policy": "gc-timer-enabled", "reason": "old waiver", "expires": "2020-01-01"},
    ]
    start = NOW - timedelta(days=10)
    fleet.commit_main("Import the fleet", start)
    fleet.publish(start + timedelta(minutes=5))
    for name in fleet.hosts:
        if name not in ("never", "forged"):
            fleet.report(name, start + timedelta(hours=1))
    fleet.commit_main(
        "Merge pull request #12 from alice/tune\n\nTune the workstation profile\n",
        NOW - timedelta(days=2),
        extra={"workstation": "# tuned\n"},
    )
    fleet.publish(NOW - timedelta(days=2) + timedelta(minutes=5))
    recent = NOW - timedelta(hours=2)
    first = {name: fleet.deploy_head(name) for name in fleet.hosts}
    old = {}
    for name in fleet.hosts:
        chain = list(fleet.repo.walk(pygit2.Oid(hex=first[name])))
        old[name] = str(chain[-1].id)
    fleet.report("up", recent)
    fleet.report("pending", recent, Result.UNCHANGED, applied=old["pending"])
    fleet.report(
        "failed",
        recent - timedelta(hours=1),
        Result.BUILD_FAILED,
        applied=old["failed"],
        log_tail="error: builder for '/nix/store/x.drv' failed with exit code 1",
    )
    fleet.report(
        "failed",
        recent,
        Result.BUILD_FAILED,
        applied=old["failed"],
        log_tail="error: builder for '/nix/store/x.drv' failed with exit code 1",
    )
    fleet.report(
        "rolledback",
        recent,
        Result.ROLLED_BACK,
        applied=old["rolledback"],
        log_tail="unit foo.service failed",
    )
    fleet.report("rejected", recent, Result.REJECTED, applied=old["rejected"])
    fleet.report("stale", NOW - timedelta(days=3))
    fleet.report("offline", recent, Result.FETCH_FAILED, applied=old["offline"])
    fleet.report("drifting", recent, running="/nix/store/0000-hand-built-system")
    fleet.report("reboot", recent, reboot=True)
    fleet.report(
        "exempt", recent, facts={**GOOD_FACTS, "disk_encryption": "none", "gc_timer": "absent"}
    )
    fleet.report(
        "server", recent, facts={**GOOD_FACTS, "firewall": "inactive", "failed_units": "unknown"}
    )
    # "forged": every report is signed by a key that is not the host's.
    intruder = ed25519.Ed25519PrivateKey.generate()
    fleet.set_ref(
        reports_ref("forged"), fleet.report("forged", recent, key=intruder, move_ref=False)
    )
    return fleet


def copy_fleet(fleet: Fleet, path: Path) -> None:
    shutil.copytree(fleet.path, path)


class LinkParser(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.links: list[str] = []
        self.ids: set[str] = set()

    @override
    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        for name, value in attrs:
            if name in ("href", "src") and value:
                self.links.append(value)
            if name == "id" and value:
                self.ids.add(value)


def broken_links(site: Path) -> list[str]:
    """Every internal href/src of every page that points at nothing (file or #anchor)."""
    parsed: dict[Path, LinkParser] = {}
    for page in sorted(site.rglob("*.html")):
        parser = LinkParser()
        parser.feed(page.read_text(encoding="utf-8"))
        parsed[page.resolve()] = parser
    broken = []
    for page, parser in parsed.items():
        for link in parser.links:
            parts = urlsplit(link)
            if parts.scheme or parts.netloc:
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if not target.exists():
                broken.append(f"{page.relative_to(site.resolve())}: {link}")
                continue
            # "#q=..." is the inventory filter (assets/table.js), not an anchor.
            if parts.fragment and not parts.fragment.startswith("q=") and target.suffix == ".html":
                ids = parsed[target].ids if target in parsed else set()
                if parts.fragment not in ids:
                    broken.append(f"{page.relative_to(site.resolve())}: {link} (no such anchor)")
    return broken
