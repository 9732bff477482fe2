"""The fleet model and ``gitops check``: every problem listed, with file, field and fix."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.fleet.check import check_repository
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems, parse_duration
from gitops.fleet.source import DirSource
from gitops.protocol import is_host_name
from testing.helpers import gitops, public_line, write_fleet


@pytest.fixture
def fleet_dir(tmp_path: Path) -> Path:
    root = tmp_path / "fleet"
    hosts = {"web-1": ["server"], "dev-ws-1": ["workstation", "developer"]}
    write_fleet(
        root,
        publisher=ed25519.Ed25519PrivateKey.generate(),
        hosts=hosts,
        host_keys={h: ed25519.Ed25519PrivateKey.generate() for h in hosts},
        machines=tmp_path / "machines",
        extra_fleet={
            "agent": {"poll_interval": "5m", "report_interval": "1h"},
            "thresholds": {"stale_after": "3h"},
        },
    )
    return root


def test_valid_fleet_parses(fleet_dir: Path) -> None:
    problems = Problems()
    fleet = load_fleet(DirSource(fleet_dir), problems)
    assert not problems, problems.items
    assert sorted(fleet.hosts) == ["dev-ws-1", "web-1"]
    assert fleet.hosts["dev-ws-1"].profiles == ("workstation", "developer")
    assert fleet.settings.poll_interval == 300
    assert fleet.settings.report_interval == 3600
    assert fleet.settings.stale_after == 3 * 3600
    assert fleet.profiles == {"server", "workstation", "developer"}
    assert len(fleet.settings.publisher_trust().entries) == 1


def test_check_passes_and_parses_nix(fleet_dir: Path) -> None:
    result = check_repository(fleet_dir)
    assert result.problems == ()
    assert result.parsed_with_nix
    assert result.nix_files == 7  # flake, modules, 3 profiles, 2 hosts
    done = gitops("check", "--repo", fleet_dir)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("ok: 2 hosts, 3 profiles, 1 publisher keys; 7 .nix files parse")


def test_every_problem_is_listed_at_once(fleet_dir: Path) -> None:
    (fleet_dir / "hosts" / "Bad_Name").mkdir()
    host = fleet_dir / "hosts" / "web-1" / "host.yaml"
    data = yaml.safe_load(host.read_text())
    data["profiles"] = ["server", "nope"]
    data["key"] = "ssh-ed25519 !!!"
    data["ownr"] = "typo@example.org"
    host.write_text(yaml.safe_dump(data))
    (fleet_dir / "fleet.yaml").write_text(
        yaml.safe_dump({"publishers": [], "agent": {"poll_interval": "soon"}})
    )
    (fleet_dir / "modules" / "broken.nix").write_text("{ a = ; }\n")
    result = check_repository(fleet_dir)
    text = "\n".join(map(str, result.problems))
    expected = [
        "fleet.yaml:3: publishers: no publisher keys",
        "fleet.yaml:2: agent.poll_interval: 'soon' is not a duration",
        "hosts/Bad_Name: 'Bad_Name' is not a valid host name",
        "hosts/web-1/host.yaml:1: key: the key's base64 is invalid",
        "hosts/web-1/host.yaml:5: profiles[1]: unknown profile 'nope'; add profiles/nope.nix",
        "hosts/web-1/host.yaml:2: ownr: unknown setting",
        "modules/broken.nix: does not parse: syntax error",
    ]
    for line in expected:
        assert line in text, f"missing: {line}\nin:\n{text}"
    done = gitops("check", "--repo", fleet_dir)
    assert done.returncode == 1
    assert "Traceback" not in done.stderr
    assert done.stderr.startswith(f"gitops: error: {fleet_dir}: {len(result.problems)} problems\n")


def test_profile_imports_must_match_host_yaml(fleet_dir: Path) -> None:
    config = fleet_dir / "hosts" / "web-1" / "configuration.nix"
    config.write_text(
        "{\n  # ../../profiles/commented.nix is ignored\n"
        "  imports = [ ../../profiles/server.nix ../../profiles/developer.nix ];\n}\n"
    )
    data = yaml.safe_load((fleet_dir / "hosts" / "dev-ws-1" / "host.yaml").read_text())
    data["profiles"].append("server")
    (fleet_dir / "hosts" / "dev-ws-1" / "host.yaml").write_text(yaml.safe_dump(data))
    problems = [str(p) for p in check_repository(fleet_dir, parse_nix=False).problems]
    assert any("web-1/host.yaml: profiles: 'developer' is imported" in p for p in problems), (
        problems
    )
    assert any(
        "dev-ws-1/host.yaml: profiles: 'server' is listed but no .nix file" in p for p in problems
    )
    assert not any("commented" in p for p in problems)


def test_duplicate_host_keys_are_a_problem(fleet_dir: Path) -> None:
    shared = public_line(ed25519.Ed25519PrivateKey.generate())
    for name in ("web-1", "dev-ws-1"):
        path = fleet_dir / "hosts" / name / "host.yaml"
        data = yaml.safe_load(path.read_text())
        data["key"] = shared
        path.write_text(yaml.safe_dump(data))
    problems = [str(p) for p in check_repository(fleet_dir, parse_nix=False).problems]
    assert any("hosts/web-1/host.yaml: key: same key as host" in p for p in problems), problems


def test_bad_yaml_names_line_and_column(fleet_dir: Path) -> None:
    (fleet_dir / "hosts" / "web-1" / "host.yaml").write_text("profiles: [server\nkey: x\n")
    problems = [str(p) for p in check_repository(fleet_dir, parse_nix=False).problems]
    assert any(
        p.startswith("hosts/web-1/host.yaml:2:") and "invalid YAML" in p for p in problems
    ), problems


def test_check_json_output(fleet_dir: Path) -> None:
    done = gitops("check", "--repo", fleet_dir, "--json", "--no-nix")
    assert done.returncode == 0
    assert '"ok": true' in done.stdout
    assert '"nix_parsed": false' in done.stdout


@pytest.mark.parametrize("name", ["a", "web-1", "x" * 63, "0db"])
def test_host_names_valid(name: str) -> None:
    assert is_host_name(name)


@pytest.mark.parametrize("name", ["", "-a", "a-", "A", "a_b", "x" * 64, "a.b", "../x", "a/b"])
def test_host_names_invalid(name: str) -> None:
    assert not is_host_name(name)


def test_durations() -> None:
    assert parse_duration("90s") == 90
    assert parse_duration("5m") == 300
    assert parse_duration("2d") == 172800
    assert parse_duration(42) == 42
    with pytest.raises(ValueError, match="not a duration"):
        parse_duration("five minutes")
    with pytest.raises(ValueError):
        parse_duration(True)
