"""The example fleet in this repository is valid and consistent with itself.

`gitops check` rules (fleet.yaml, host.yaml, profile imports, Nix syntax) plus what the
Nix modules cannot be evaluated for here (no nixpkgs offline): the trust the agents pin
equals the publishers in fleet.yaml, disk-encryption exemptions match the hosts that
turn the requirement off, platforms and ZFS host ids are declared.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from datetime import date
from pathlib import Path

import pytest
import yaml

from gitops.fleet.check import check_repository, nix_files
from gitops.fleet.model import Fleet, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.trust.allowed_signers import AllowedSigners
from testing.env import NIX_CONFIG

REPO = Path(__file__).resolve().parent.parent
HOSTS = REPO / "hosts"


@pytest.fixture(scope="module")
def fleet() -> Fleet:
    problems = Problems()
    loaded = load_fleet(DirSource(REPO), problems)
    assert problems.items == []
    return loaded


def hardware(host: str) -> str:
    return (HOSTS / host / "hardware-configuration.nix").read_text(encoding="utf-8")


def host_nix(host: str) -> str:
    return "".join(p.read_text(encoding="utf-8") for p in sorted((HOSTS / host).glob("*.nix")))


def test_fleet_loads_without_problems(fleet: Fleet) -> None:
    assert sorted(fleet.hosts) == sorted(p.name for p in HOSTS.iterdir() if p.is_dir())
    assert len(fleet.hosts) >= 8
    for host in fleet.hosts.values():
        assert host.key is not None and host.key.key_type == "ssh-ed25519", host.name
        assert host.owner and host.description and host.location, host.name


def test_gitops_check_passes() -> None:
    result = check_repository(REPO, parse_nix=shutil.which("nix-instantiate") is not None)
    assert result.problems == ()


def test_the_organisation_is_covered(fleet: Fleet) -> None:
    tags = {tag for host in fleet.hosts.values() for tag in host.tags}
    assert {"desktop", "laptop", "server", "kiosk"} <= tags
    used = {profile for host in fleet.hosts.values() for profile in host.profiles}
    assert {"office", "developer", "gis", "media", "laptop", "server", "kiosk"} <= used
    assert used == fleet.profiles  # no profile that no host uses


@pytest.mark.skipif(
    shutil.which("nix-instantiate") is None and not os.environ.get("CI"),
    reason="nix is not installed (CI installs it)",
)
def test_every_nix_file_parses() -> None:
    files = nix_files(REPO)
    assert len(files) >= 30
    for path in files:
        result = subprocess.run(
            ["nix-instantiate", "--parse", str(path)],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "NIX_CONFIG": NIX_CONFIG},
        )
        assert result.returncode == 0, f"{path.relative_to(REPO)}: {result.stderr}"


def test_agents_trust_exactly_the_publishers_of_fleet_yaml(fleet: Fleet) -> None:
    gitops_module = (REPO / "modules" / "gitops.nix").read_text(encoding="utf-8")
    file = re.search(r"trustedPublishersFile = \./([\w.-]+);", gitops_module)
    assert file is not None
    pinned = AllowedSigners.load(REPO / "modules" / file.group(1))
    published = fleet.settings.publisher_trust()
    assert [(e.principals, e.key.openssh(), e.namespaces) for e in pinned.entries] == [
        (e.principals, e.key.openssh(), e.namespaces) for e in published.entries
    ]


def test_the_git_server_key_is_pinned_for_the_remote() -> None:
    gitops_module = (REPO / "modules" / "gitops.nix").read_text(encoding="utf-8")
    remote = re.search(r'remote = "ssh://[^@]+@([^/:"]+)', gitops_module)
    known = re.search(r"knownHostsFile = \./([\w.-]+);", gitops_module)
    assert remote is not None and known is not None
    lines = (REPO / "modules" / known.group(1)).read_text(encoding="utf-8").split("\n")
    assert any(line.split(" ")[0] == remote.group(1) for line in lines if line)


def test_fleet_thresholds_match_the_agent_defaults(fleet: Fleet) -> None:
    """The site judges staleness with fleet.yaml; agents report on the module's defaults."""
    defaults = json.loads((REPO / "nixos" / "agent-defaults.json").read_text(encoding="utf-8"))
    assert fleet.settings.poll_interval == defaults["poll_interval"]
    assert fleet.settings.report_interval == defaults["report_interval"]
    assert fleet.settings.stale_after >= 2 * fleet.settings.report_interval


def test_deploy_trees_carry_what_the_flake_builds_from(fleet: Fleet) -> None:
    shared = set(fleet.settings.shared)
    # flake.nix imports nixos/ and modules/; nixos/package.nix builds from these.
    assert {"flake.nix", "flake.lock", "nixos", "modules"} <= shared
    assert {"pyproject.toml", "README.md", "gitops", "site"} <= shared
    package = (REPO / "nixos" / "package.nix").read_text(encoding="utf-8")
    for path in re.findall(r'root \+ "/([\w.-]+)"', package):
        assert path in shared, path


def test_platform_in_host_yaml_is_the_hardware_platform(fleet: Fleet) -> None:
    for name, host in fleet.hosts.items():
        platform = re.search(r'nixpkgs\.hostPlatform = lib\.mkDefault "([\w-]+)";', hardware(name))
        assert platform is not None, name
        assert platform.group(1) == host.system, name


def test_disk_encryption_is_declared_or_exempted(fleet: Fleet) -> None:
    """The Nix assertion in modules/security.nix, mirrored on the files."""
    for name, host in fleet.hosts.items():
        exempt = "fleet.security.requireDiskEncryption = false;" in host_nix(name)
        exemptions = [e for e in host.exemptions if e.policy == "disk-encryption"]
        if exempt:
            assert exemptions, f"{name}: turns encryption off without an exemption"
            assert all(e.expires > date.today() and e.reason for e in exemptions), name
        else:
            assert not exemptions, f"{name}: exempted but encrypted"
            assert "boot.initrd.luks.devices." in hardware(name), name


def test_zfs_hosts_have_a_host_id(fleet: Fleet) -> None:
    for name, host in fleet.hosts.items():
        text = host_nix(name) + "".join(
            (REPO / "profiles" / f"{p}.nix").read_text(encoding="utf-8") for p in host.profiles
        )
        if '"zfs"' in text:
            assert re.search(r'networking\.hostId = "[0-9a-f]{8}";', text), name


def test_host_yaml_files_are_plain_mappings() -> None:
    for path in sorted(HOSTS.glob("*/host.yaml")):
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
        assert isinstance(data, dict), path
        assert set(data) <= {
            "key",
            "profiles",
            "tags",
            "owner",
            "description",
            "system",
            "location",
            "exemptions",
        }


def test_the_secrets_the_modules_name_are_declared_and_encrypted_right(fleet: Fleet) -> None:
    """A module names /run/gitops-secrets/<name>: the fleet declares <name>, and its file is
    encrypted to exactly its hosts and the admins (gitops check would say otherwise)."""
    nix_text = "".join(p.read_text(encoding="utf-8") for p in REPO.glob("*/*.nix"))
    named = set(re.findall(r"/run/gitops-secrets/([\w.-]+)", nix_text))
    declared = {s.name: s for s in fleet.secrets}
    assert named and named <= set(declared)
    assert "laptop-anna" in declared["wifi-office"].readers
    assert fleet.settings.admins


def test_no_name_that_nixos_26_05_renamed_or_removed() -> None:
    """docs/nixos-versions.md lists the names 25.11 and 26.05 renamed or removed, checked
    against nixpkgs sources; none of them is back in the fleet's Nix files. Only these
    names: nixpkgs is not evaluated here (the stand-in tests cannot see an unknown option)."""
    table = (REPO / "docs" / "nixos-versions.md").read_text(encoding="utf-8")
    old_names = re.findall(r"^\| `([\w.-]+)` \|", table, flags=re.MULTILINE)
    assert {"systemd.watchdog.runtimeTime", "nixfmt-rfc-style"} <= set(old_names)
    tops = ("hosts", "profiles", "modules", "nixos")
    files = [REPO / "flake.nix", *sorted(p for top in tops for p in (REPO / top).rglob("*.nix"))]
    assert len(files) >= 30
    for path in files:
        text = path.read_text(encoding="utf-8")
        for name in old_names:
            found = re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", text)
            assert found is None, f"{path.relative_to(REPO)}: {name} (docs/nixos-versions.md)"
