"""``gitops build`` and ``gitops publish --systems``: each changed host's system built once
from its deploy tree, signed with a real Nix key, copied to a real ``file://`` cache, and
pinned in the signed deploy commit (``System-Path``) only for the tree it was built from."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
import pytest

from gitops.demo import standin
from gitops.protocol import TRAILER_SYSTEM_PATH
from gitops.publish import build as central
from gitops.publish import plan as publishing
from testing.cache import signing_key
from testing.env import needs_nix
from testing.helpers import gitops
from testing.publishing import ServedFleet, served_fleet

pytestmark = [needs_nix, pytest.mark.slow]


def _narinfo(cache: Path, system: str) -> dict[str, str]:
    digest = Path(system).name.split("-", 1)[0]
    text = (cache / f"{digest}.narinfo").read_text()
    return dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)


def _build(fleet: ServedFleet, tmp_path: Path, *extra: str | Path) -> dict[str, object]:
    result = gitops("build", "--repo", fleet.root, "--json", *extra)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert isinstance(data, dict)
    return data


def test_build_signs_copies_and_publish_pins_only_the_tree_built(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    key = signing_key(tmp_path / "nix-key")
    cache = tmp_path / "cache"
    systems = tmp_path / "systems.json"
    args = ("--signing-key", key.secret_file, "--cache", f"file://{cache}")
    first = _build(fleet, tmp_path, *args, "--systems", str(systems))
    hosts = first["hosts"]
    assert isinstance(hosts, dict)
    assert sorted(hosts) == ["admin-1", "dev-ws-1", "web-1", "web-2"]
    assert json.loads(systems.read_text())["hosts"] == hosts
    for host, entry in hosts.items():
        assert f"-nixos-system-{host}-" in entry["system"]
        info = _narinfo(cache, entry["system"])
        assert info["StorePath"] == entry["system"]
        assert info["Sig"].startswith("fleet-cache-1:"), "signed with the fleet's key"
    # Each host's closure is in the cache too (the stand-in kernel it links to).
    assert len(list(cache.glob("*.narinfo"))) > len(hosts)

    published = fleet.publish("--push", "--systems", systems)
    assert published.returncode == 0, published.stderr
    for host, entry in hosts.items():
        head = fleet.head(host)
        assert head is not None
        assert fleet.trailers(head)[TRAILER_SYSTEM_PATH] == entry["system"]

    # A change to the server profile: only its two hosts are built again.
    fleet.change("profiles/server.nix", standin.profile_file("server", ["nginx"]), "nginx")
    stale = tmp_path / "stale.json"
    stale.write_text(systems.read_text())
    second = _build(fleet, tmp_path, *args, "--systems", str(systems))
    assert sorted(second["hosts"]) == ["web-1", "web-2"]  # type: ignore[call-overload]
    assert sorted(second["unchanged"]) == ["admin-1", "dev-ws-1"]  # type: ignore[call-overload]

    # The old systems file names other trees: those hosts are refused, not published unpinned.
    refused = fleet.publish("--push", "--systems", stale)
    assert refused.returncode != 0
    assert "names no system built from the deploy tree of web-1, web-2" in refused.stderr
    assert (
        fleet.trailers(fleet.head("web-1") or "")[TRAILER_SYSTEM_PATH] == (hosts["web-1"]["system"])
    ), "nothing was published"

    assert fleet.publish("--push", "--systems", systems).returncode == 0
    new = second["hosts"]
    assert isinstance(new, dict)
    for host in ("web-1", "web-2"):
        pinned = fleet.trailers(fleet.head(host) or "")[TRAILER_SYSTEM_PATH]
        assert pinned == new[host]["system"] != hosts[host]["system"]


def test_a_host_that_fails_to_build_is_listed_and_the_others_are_built(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    fleet.change(
        "hosts/admin-1/configuration.nix",
        standin.host_configuration(["workstation"], {"buildFails": "true"}),
        "admin-1: broken",
    )
    systems = tmp_path / "systems.json"
    result = gitops("build", "--repo", fleet.root, "--systems", systems, "--jobs", "2")
    assert result.returncode == 1
    assert "1 host failed to build:" in result.stderr
    assert "admin-1: nix build failed" in result.stderr
    built = json.loads(systems.read_text())["hosts"]
    assert sorted(built) == ["dev-ws-1", "web-1", "web-2"]
    # Publishing with it refuses only the host that has no system.
    published = fleet.publish("--push", "--systems", systems)
    assert "admin-1" in published.stderr and "web-1" not in published.stderr
    assert fleet.head("admin-1") is None and fleet.head("web-1") is not None


def test_a_heartbeat_keeps_the_pin_and_publish_without_systems_pins_nothing(
    tmp_path: Path,
) -> None:
    fleet = served_fleet(tmp_path, extra_fleet={"deploy": {"expires_after": "1h"}})
    systems = tmp_path / "systems.json"
    assert gitops("build", "--repo", fleet.root, "--systems", systems).returncode == 0
    assert fleet.publish("--push", "--systems", systems).returncode == 0
    pinned = fleet.trailers(fleet.head("web-1") or "")[TRAILER_SYSTEM_PATH]
    # Fifty minutes later every head expires within a third of expires_after: a heartbeat
    # (same tree) keeps the system its head pins, with or without a systems file.
    repo = pygit2.Repository(str(fleet.root))
    later = publishing.make_plan(repo, "main", now=datetime.now(UTC) + timedelta(minutes=50))
    assert {h.why for h in later.hosts} == {publishing.Why.RENEW}
    nothing: dict[str, central.BuiltSystem] = {}
    for built in (None, nothing):
        kept, missing = central.pins(repo, later, built)
        assert kept["web-1"] == pinned and not missing
    # A new tree published without a systems file is not pinned.
    fleet.change("profiles/server.nix", standin.profile_file("server", ["x"]), "x")
    assert fleet.publish("--push").returncode == 0
    assert TRAILER_SYSTEM_PATH not in fleet.trailers(fleet.head("web-1") or "")


def test_bad_systems_file_and_signing_key_say_what_is_wrong(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    bad = tmp_path / "bad.json"
    bad.write_text(
        json.dumps({"schema": 1, "hosts": {"web-1": {"tree": "0" * 40, "system": "/tmp/x"}}})
    )
    result = fleet.publish("--systems", bad)
    assert result.returncode != 0
    assert "hosts.web-1.system: '/tmp/x' is not a store path" in result.stderr
    missing = gitops("build", "--repo", fleet.root, "--signing-key", tmp_path / "nope")
    assert missing.returncode != 0 and "nix key generate-secret" in missing.stderr
