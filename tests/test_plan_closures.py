"""``gitops plan --systems FILE``: per host, the system ``gitops build`` built against the one
its deploy commit pins; the same store path is "same system", different ones are compared
with the real ``nix store diff-closures``, and anything less says plainly why not."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from gitops.demo import standin
from gitops.system import closure_diff
from gitops.system.closure_diff import Kind, PackageChange
from testing.env import needs_nix
from testing.helpers import gitops
from testing.publishing import ServedFleet, served_fleet

# -- Nix's format, parsed ----------------------------------------------------------------


def test_each_kind_of_line_nix_prints_is_parsed() -> None:
    output = (
        "big: 1 \u2192 2, \x1b[31;1m+42.5 KiB\x1b[0m\n"
        "lib-a: 2.0 \u2192 \u2205\n"
        "nginx: 1.24.0 \u2192 1.26.1\n"
        "redis: \u2205 \u2192 7.2.4, \x1b[31;1m+1.5 MiB\x1b[0m\n"
        "glibc: 2.39, 2.40 \u2192 2.41, \x1b[32;1m-8.0 KiB\x1b[0m\n"
        "profile-server: \u03b5 \u2192 \u2205\n"
        "linux-firmware: \x1b[32;1m-9.1 KiB\x1b[0m\n"
        "\n"
        "warning: something else entirely\n"
    )
    diff = closure_diff.parse(output)
    assert diff.changes == (
        PackageChange("big", ("1",), ("2",), 43520),
        PackageChange("lib-a", ("2.0",), (), None),
        PackageChange("nginx", ("1.24.0",), ("1.26.1",), None),
        PackageChange("redis", (), ("7.2.4",), 1572864),
        PackageChange("glibc", ("2.39", "2.40"), ("2.41",), -8192),
        PackageChange("profile-server", ("",), (), None),
        PackageChange("linux-firmware", (), (), -9318),
    )
    kinds = [c.kind for c in diff.changes]
    assert kinds == [
        Kind.VERSION,
        Kind.REMOVED,
        Kind.VERSION,
        Kind.ADDED,
        Kind.VERSION,
        Kind.REMOVED,
        Kind.SIZE,
    ]
    assert diff.summary() == (
        "1 added, 2 removed, 3 version changes, 1 size change, +1.5 MiB"
    )  # 43520 + 1572864 - 8192 - 9318 bytes
    # Each line prints back as Nix wrote it, without the colours.
    assert [c.describe() for c in diff.changes] == [
        "big: 1 \u2192 2, +42.5 KiB",
        "lib-a: 2.0 \u2192 \u2205",
        "nginx: 1.24.0 \u2192 1.26.1",
        "redis: \u2205 \u2192 7.2.4, +1.5 MiB",
        "glibc: 2.39, 2.40 \u2192 2.41, -8.0 KiB",
        "profile-server: \u03b5 \u2192 \u2205",
        "linux-firmware: -9.1 KiB",
    ]
    assert closure_diff.parse("").summary() == "no package changes"


# -- plan --systems, with real builds of the stand-in systems ----------------------------


def _set_server_packages(fleet: ServedFleet, packages: list[str]) -> None:
    fleet.change("profiles/server.nix", standin.profile_file("server", packages), "server")


def _build(fleet: ServedFleet, systems: Path) -> None:
    built = gitops("build", "--repo", fleet.root, "--systems", systems)
    assert built.returncode == 0, built.stderr


def _plan(fleet: ServedFleet, systems: Path, *extra: str) -> Any:
    done = gitops("plan", "--repo", fleet.root, "--systems", systems, *extra)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout) if "--json" in extra else done.stdout


@needs_nix
@pytest.mark.slow
def test_plan_shows_what_changes_in_each_built_system(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    _set_server_packages(fleet, ["nginx-1.24.0", "lib-a-2.0"])
    first = tmp_path / "first.json"
    _build(fleet, first)

    # Nothing published yet: every host is new, with nothing to compare with.
    new = _plan(fleet, first, "--json")
    assert {h["host"]: h["system"]["note"] for h in new["hosts"]} == dict.fromkeys(
        ["admin-1", "dev-ws-1", "web-1", "web-2"],
        "no closure diff: no published system to compare with (a new host)",
    )
    assert fleet.publish("--push", "--systems", first).returncode == 0
    pinned = json.loads(first.read_text())["hosts"]

    # nginx gets a new version, lib-a goes, redis comes; admin-1's configuration gains a
    # setting nothing reads: its tree (and its parsed .nix) change, its system does not.
    _set_server_packages(fleet, ["nginx-1.26.1", "redis-7.2.4"])
    fleet.change(
        "hosts/admin-1/configuration.nix",
        standin.host_configuration(["workstation"], {"reviewedBy": '"ops"'}),
        "admin-1: reviewed",
    )
    second = tmp_path / "second.json"
    _build(fleet, second)
    built = json.loads(second.read_text())["hosts"]
    assert sorted(built) == ["admin-1", "web-1", "web-2"]
    assert built["admin-1"]["system"] == pinned["admin-1"]["system"]

    data = _plan(fleet, second, "--json")
    hosts = {h["host"]: h for h in data["hosts"]}
    web = hosts["web-1"]
    assert web["verdict"] == "changed" and web["changes_system"] is True
    assert web["system"]["previous"] == pinned["web-1"]["system"]
    assert web["system"]["new"] == built["web-1"]["system"]
    assert web["system"]["changes"] == [
        {"package": "lib-a", "kind": "removed", "old": ["2.0"], "new": [], "size_delta": None},
        {
            "package": "nginx",
            "kind": "version changed",
            "old": ["1.24.0"],
            "new": ["1.26.1"],
            "size_delta": None,
        },
        {"package": "redis", "kind": "added", "old": [], "new": ["7.2.4"], "size_delta": None},
    ]
    assert hosts["web-2"]["system"]["changes"] == web["system"]["changes"]
    admin = hosts["admin-1"]
    assert admin["why"] == "changed" and admin["paths"] == ["hosts/admin-1/configuration.nix"]
    assert admin["verdict"] == "same system" and admin["changes_system"] is False
    assert admin["system"]["same"] is True and admin["system"]["changes"] is None
    assert hosts["dev-ws-1"]["verdict"] == "unchanged" and hosts["dev-ws-1"]["system"] is None
    assert data["closure_totals"] == {
        "hosts_diffed": 2,
        "hosts_same_system": 1,
        "hosts_without_diff": 0,
        "added": 2,
        "removed": 2,
        "version_changes": 2,
        "size_changes": 0,
        "size_delta": 0,
    }

    text = _plan(fleet, second)
    assert (
        "3 of 4 hosts would get a new deploy commit, 1 of them with the system already published"
        in text
    )
    assert (
        "  web-1 (changed): profiles/server.nix\n"
        "    system: 1 added, 1 removed, 1 version change\n"
        "      lib-a: 2.0 \u2192 \u2205\n"
        "      nginx: 1.24.0 \u2192 1.26.1\n"
        "      redis: \u2205 \u2192 7.2.4\n"
    ) in text
    assert (
        "  admin-1 (same system): hosts/admin-1/configuration.nix; "
        "builds the system already published\n"
    ) in text
    assert (
        "built systems: 2 hosts diffed (2 added, 2 removed, 2 version changes), 1 same system"
        in text
    )

    markdown = _plan(fleet, second, "--format", "markdown")
    assert "**2 of 4 hosts change** with" in markdown
    assert "| same system | 1 |" in markdown
    assert "#### Same system: 1 host" in markdown
    assert (
        "<details><summary><b>web-1</b>, <b>web-2</b>: 1 added, 1 removed, 1 version change"
        "</summary>\n\n"
        "| package | before | after | size |\n| --- | --- | --- | ---: |\n"
        "| `lib-a` | 2.0 | \u2205 |  |\n"
        "| `nginx` | 1.24.0 | 1.26.1 |  |\n"
        "| `redis` | \u2205 | 7.2.4 |  |\n\n</details>"
    ) in markdown
    assert "Built systems: 2 hosts diffed" in markdown
    assert "Built systems are not compared here" not in markdown


@needs_nix
@pytest.mark.slow
def test_without_a_pin_or_the_paths_here_the_plan_says_so(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    # Published without --systems: the deploy commits pin no system.
    assert fleet.publish("--push").returncode == 0
    _set_server_packages(fleet, ["nginx-1.26.1"])
    systems = tmp_path / "systems.json"
    _build(fleet, systems)
    data = _plan(fleet, systems, "--json")
    notes = {h["host"]: h["system"] and h["system"]["note"] for h in data["hosts"]}
    head = fleet.head("web-1") or ""
    assert notes["web-1"] == (
        f"no closure diff: deploy {head[:7]} pins no system "
        "(System-Path; published without --systems)"
    )
    assert {h["host"]: h["verdict"] for h in data["hosts"]}["web-1"] == "changed"
    assert notes["admin-1"] is None  # its tree did not change: nothing to compare

    # Pinned now; then a system that is not in this store, and a stale systems file.
    assert fleet.publish("--push", "--systems", systems).returncode == 0
    _set_server_packages(fleet, ["nginx-1.27.0"])
    stale = tmp_path / "stale.json"
    stale.write_text(systems.read_text())
    _build(fleet, systems)
    elsewhere = json.loads(systems.read_text())
    gone = "/nix/store/" + "0" * 32 + "-nixos-system-web-2-elsewhere"
    elsewhere["hosts"]["web-2"]["system"] = gone
    systems.write_text(json.dumps(elsewhere))
    text = _plan(fleet, systems)
    assert "      nginx: 1.26.1 \u2192 1.27.0\n" in text  # web-1 is still compared
    assert (
        f"    no closure diff: the new system {gone} is not in this machine's store "
        f"(fetch it with: nix copy --from CACHE {gone})\n"
    ) in text
    old_tree = json.loads(stale.read_text())["hosts"]["web-1"]["tree"]
    stale_text = _plan(fleet, stale)
    assert (
        "    no closure diff: the systems file's system for web-1 was built from another "
        f"deploy tree ({old_tree[:12]}, this plan's is "
    ) in stale_text
    assert "built systems: 0 hosts diffed (no package changes), 2 without a closure diff" in (
        stale_text
    )
