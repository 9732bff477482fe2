"""``gitops status``: the fleet in the terminal, judged by the site's own code, on real
repositories with real signatures."""

from __future__ import annotations

import json
import queue
import re
import threading
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest

from gitops import cli
from gitops.errors import GitopsError
from gitops.protocol import Result
from gitops.sitegen import build as site_build
from gitops.sitegen import fleetstatus
from gitops.sitegen.model import State
from testing.site_helpers import NOW, Fleet, standard_fleet


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Fleet:
    return standard_fleet(tmp_path_factory.mktemp("status") / "fleet.git")


def _inventory(out: Path) -> list[dict[str, Any]]:
    hosts: list[dict[str, Any]] = json.loads((out / "inventory.json").read_text())["hosts"]
    return sorted(hosts, key=lambda h: h["name"])


def test_status_and_site_agree_on_every_host(fleet: Fleet, tmp_path: Path) -> None:
    out = tmp_path / "site"
    site_build.build(fleet.path, out, now=NOW, workers=1)
    found = fleetstatus.read_status(fleet.path, NOW).to_json()["hosts"]
    assert found == _inventory(out)
    # Every state of the standard fleet is there, so the agreement covers each rule.
    assert {h["state"] for h in found} >= {str(s) for s in State if s is not State.UNVERIFIED}


def test_status_and_an_incremental_site_agree_after_changes(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "site"
    site_build.build(fleet.path, out, now=NOW, workers=1)
    reader = fleetstatus.FleetReader(fleet.path)
    reader.read(NOW)
    later = NOW + timedelta(hours=1)
    fleet.report("pending", later - timedelta(minutes=5))  # now up to date
    fleet.report("up", later - timedelta(minutes=5), Result.SWITCH_FAILED)
    site_build.build(fleet.path, out, now=later, workers=1)  # from the cache
    assert reader.read(later).to_json()["hosts"] == _inventory(out)  # from what it kept


def test_table_one_row_per_host(fleet: Fleet) -> None:
    text = fleetstatus.table(fleetstatus.read_status(fleet.path, NOW))
    lines = text.splitlines()
    assert lines[0].split()[:2] == ["HOST", "STATE"]
    cells = {
        line.split()[0]: re.split(r"\s{2,}", line)
        for line in lines[1:]
        if line and not line[0].isdigit()
    }
    assert set(cells) == set(fleet.hosts)
    up = fleet.deploy_head("up")[:8]
    assert cells["up"] == ["up", "up to date", up, up, "2 h ago", "-", "-"]
    assert cells["failed"][1] == "failed"
    assert cells["failed"][2] != cells["failed"][3]  # applied an older commit
    assert cells["reboot"][5] == "needed"
    assert cells["server"][6] == "firewall-active"  # its failing policy
    assert cells["never"][2:5] == ["-", fleet.deploy_head("never")[:8], "never"]
    assert lines[-1].startswith("13 hosts: 5 up to date, 1 pending, 1 failed, 1 rolled back")


def test_cli_filters_by_state_and_tag(fleet: Fleet, capsys: pytest.CaptureFixture[str]) -> None:
    # Real time: every report of the fixture is days old by now, so filter on what time
    # cannot change (never reported, unverified) and on tags.
    cli.execute(["status", "--repo", str(fleet.path), "--json", "--state", "never"])
    assert [h["name"] for h in json.loads(capsys.readouterr().out)["hosts"]] == ["never"]
    cli.execute(
        [
            *("status", "--repo", str(fleet.path), "--json"),
            *("--state", "never-reported", "--state", "unverified"),
        ]
    )
    found = [h["name"] for h in json.loads(capsys.readouterr().out)["hosts"]]
    assert found == ["forged", "never"]
    cli.execute(["status", "--repo", str(fleet.path), "--tag", "rack"])
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[0] for line in lines[1:2]] == ["server"]
    assert lines[-1].startswith("1 host:")


def test_an_unknown_state_is_one_clear_line(fleet: Fleet) -> None:
    with pytest.raises(GitopsError, match="--state 'borked': no such state; use one of"):
        cli.execute(["status", "--repo", str(fleet.path), "--state", "borked"])


def test_watch_shows_the_fleet_again_when_the_repository_changes(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    shown: queue.Queue[fleetstatus.FleetStatus] = queue.Queue()
    stop = threading.Event()
    errors: list[GitopsError] = []
    clock = iter([NOW, NOW + timedelta(minutes=10), NOW + timedelta(minutes=20)])
    thread = threading.Thread(
        target=fleetstatus.watch,
        args=(fleet.path, shown.put, stop),
        kwargs={"fail": errors.append, "now": lambda: next(clock)},
    )
    thread.start()
    try:
        first = {r.host.name: r.status.state for r in shown.get(timeout=10).rows}
        assert first["pending"] is State.PENDING
        fleet.report("pending", NOW + timedelta(minutes=5))  # a report arrives (a fetch)
        second = {r.host.name: r.status.state for r in shown.get(timeout=10).rows}
        assert second["pending"] is State.UP_TO_DATE
        assert {k: v for k, v in second.items() if k != "pending"} == {
            k: v for k, v in first.items() if k != "pending"
        }
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()
    assert errors == []
