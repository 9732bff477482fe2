"""``gitops check --eval``: every host's system evaluated (its .drvPath, nothing built) from
exactly its deploy tree, each failure one ``file: field: problem; fix`` line with Nix's
own error. Stand-in systems: nixpkgs is not available here, so the "wrong option" is an
evaluation error in a profile (a throw, as the NixOS module system raises for an
unknown option) and a missing attribute in a host's file."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.demo import standin
from gitops.fleet.check import check_repository
from testing.env import needs_nix
from testing.helpers import gitops, write_fleet

pytestmark = needs_nix

HOSTS = {"web-1": ["server"], "web-2": ["server"], "dev-ws-1": ["workstation"]}
UNKNOWN_OPTION = "The option `services.doesNotExist' does not exist."


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    write_fleet(
        root,
        publisher=ed25519.Ed25519PrivateKey.generate(),
        hosts=HOSTS,
        host_keys={h: ed25519.Ed25519PrivateKey.generate() for h in HOSTS},
        machines=tmp_path / "machines",
    )
    return root


def test_a_fleet_that_evaluates_passes_and_names_each_derivation(fleet_dir: Path) -> None:
    result = check_repository(fleet_dir, evaluate_hosts=True)
    assert not result.problems
    assert [e.host for e in result.evaluated] == sorted(HOSTS)
    for evaluated in result.evaluated:
        assert evaluated.drv_path is not None
        assert evaluated.drv_path.endswith(
            f"-nixos-system-{evaluated.host}-25.05.19700101.standin.drv"
        )
    done = gitops("check", "--repo", fleet_dir, "--eval")
    assert done.returncode == 0, done.stderr
    assert "3 hosts evaluate" in done.stdout


def test_each_host_that_fails_is_listed_with_nix_error(fleet_dir: Path) -> None:
    # A wrong option in the server profile (both web hosts), a missing attribute in dev-ws-1.
    (fleet_dir / "profiles" / "server.nix").write_text(
        f'{{\n  packages = [ "profile-server" ];\n  kernel = throw "{UNKNOWN_OPTION}";\n}}\n'
    )
    (fleet_dir / "hosts" / "dev-ws-1" / "configuration.nix").write_text(
        standin.host_configuration(["workstation"], {"nixosVersion": "{ }.doesNotExist"})
    )
    plain = gitops("check", "--repo", fleet_dir)
    assert plain.returncode == 0, "parsing alone sees nothing wrong"
    result = gitops("check", "--repo", fleet_dir, "--eval")
    assert result.returncode == 1
    lines = [line.strip() for line in result.stderr.splitlines()]
    assert "gitops: error: " + f"{fleet_dir}: 3 problems" in lines
    for host in ("web-1", "web-2"):
        assert (
            f"hosts/{host}: nixosConfigurations.{host}: does not evaluate: {UNKNOWN_OPTION}; "
            "fix the configuration (nix eval shows the whole trace with --show-trace)"
        ) in lines
    # Where Nix names a place, the problem is at that file and line, relative to the tree.
    assert (
        "hosts/dev-ws-1/configuration.nix:4: nixosConfigurations.dev-ws-1: does not evaluate: "
        "attribute 'doesNotExist' missing; fix the configuration (nix eval shows the whole "
        "trace with --show-trace)"
    ) in lines
    as_json = json.loads(gitops("check", "--repo", fleet_dir, "--eval", "--json").stdout)
    assert as_json["ok"] is False
    assert as_json["evaluated"]["dev-ws-1"] is None
    assert {(p["file"], p.get("line")) for p in as_json["problems"]} == {
        ("hosts/web-1", None),
        ("hosts/web-2", None),
        ("hosts/dev-ws-1/configuration.nix", 4),
    }
