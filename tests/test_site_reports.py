"""What the site makes of reports and branches it cannot take at their word: malformed
reports, reports from the future, a rewritten reports branch, a rewound deploy head, and
boot-mode hosts waiting for a reboot. Real repositories, real signatures."""

from __future__ import annotations

import json
import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from gitops import cli
from gitops.protocol import Report, Result, deploy_ref, reports_ref
from gitops.sitegen import build as site_build
from testing.site_helpers import GOOD_FACTS, NOW, Fleet

RECENT = NOW - timedelta(hours=2)


def build(fleet: Fleet, out: Path, *, now: datetime = NOW, **kwargs: Any) -> site_build.BuildStats:
    return site_build.build(fleet.path, out, now=now, workers=1, **kwargs)


def load(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


def host(out: Path, name: str) -> dict[str, Any]:
    rows: dict[str, dict[str, Any]] = {h["name"]: h for h in load(out, "inventory.json")["hosts"]}
    return rows[name]


def two_hosts(path: Path) -> Fleet:
    """``web`` (where things go wrong) and ``ok`` (which must render whatever web does),
    both up to date."""
    fleet = Fleet.create(path)
    fleet.add_host("web")
    fleet.add_host("ok")
    fleet.commit_main("Import", NOW - timedelta(days=2))
    fleet.publish(NOW - timedelta(days=2))
    fleet.report("web", NOW - timedelta(hours=5))
    fleet.report("ok", RECENT)
    return fleet


def good_status(fleet: Fleet, name: str) -> dict[str, Any]:
    report = Report.from_json(_status_of(fleet, name))
    return report.to_dict()


def _status_of(fleet: Fleet, name: str) -> bytes:
    head = fleet.repo.get(fleet.repo.references[reports_ref(name)].target)
    return bytes(head.tree["status.json"].data)  # type: ignore[union-attr]


def _deep(levels: int) -> Any:
    value: Any = "bottom"
    for _ in range(levels):
        value = [value]
    return value


MALFORMED: dict[str, Any] = {
    "generation is a word": {"system": {"generation": "seven"}},
    "deploy_seen is a number": {"deploy_seen": 5},
    "nixos_version is a number": {"system": {"nixos_version": 5}},
    "store_path is a list": {"system": {"store_path": ["/nix/store/x"]}},
    "facts nested 900 deep": {"facts": {"deep": _deep(900)}},
    "result unknown": {"result": "fine"},
    "time is not a time": {"time": "yesterday"},
}


def _malformed(good: dict[str, Any], change: dict[str, Any]) -> bytes:
    status = json.loads(json.dumps(good))
    status["time"] = "2026-11-23T11:00:00Z"
    for key, value in change.items():
        if key == "system":
            status["system"] = {**status["system"], **value}
        else:
            status[key] = value
    return json.dumps(status).encode()


@pytest.mark.parametrize("signed", [True, False], ids=["signed", "unsigned"])
def test_a_malformed_report_is_an_invalid_entry_and_every_other_host_renders(
    tmp_path: Path, signed: bool
) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    before = {"web": host_state_after(fleet, tmp_path / "before", "web")}
    good = good_status(fleet, "web")
    bad = {
        name: fleet.raw_report("web", _malformed(good, change), RECENT, signed=signed)
        for name, change in MALFORMED.items()
    }
    infinite = _malformed(good, {}).replace(b'"generation": 1', b'"generation": Infinity')
    assert b"Infinity" in infinite
    bad["Infinity"] = fleet.raw_report("web", infinite, RECENT, signed=signed)
    bad["not JSON"] = fleet.raw_report("web", b"\xff{{{", RECENT, signed=signed)
    out = tmp_path / "out"
    stats = build(fleet, out)
    assert host(out, "ok")["state"] == "up to date"
    assert (out / "hosts" / "ok.html").is_file()
    web = host(out, "web")
    # None of them counts: the host is judged from its last valid report, as before.
    assert web["applied"] == before["web"]["applied"]
    assert web["last_seen"] == before["web"]["last_seen"]
    detail = load(out, "hosts/web.json")
    errors = {r["commit"]: r["error"] for r in detail["reports"]}
    assert all(errors[sha] for sha in bad.values())
    assert "system.generation: a string, not an integer" in errors[bad["generation is a word"]]
    assert "deploy_seen: an integer, not a string" in errors[bad["deploy_seen is a number"]]
    assert "nested deeper than 32" in errors[bad["facts nested 900 deep"]]
    assert "Infinity" in errors[bad["Infinity"]]
    page = (out / "hosts" / "web.html").read_text()
    assert page.count("<strong>invalid report</strong>") == len(bad)
    assert "invalid report" in web["flags"]
    assert stats.invalid_reports == {"web": len(bad)}


def host_state_after(fleet: Fleet, out: Path, name: str) -> dict[str, Any]:
    build(fleet, out, use_cache=False)
    return host(out, name)


def test_a_host_whose_only_reports_are_invalid_counts_as_nothing(tmp_path: Path) -> None:
    fleet = Fleet.create(tmp_path / "fleet.git")
    fleet.add_host("web")
    fleet.add_host("ok")
    fleet.commit_main("Import", NOW - timedelta(days=1))
    fleet.publish(NOW - timedelta(days=1))
    fleet.report("ok", RECENT)
    fleet.raw_report("web", b'{"schema": 1, "host": "web", "deploy_seen": 5}', RECENT)
    out = tmp_path / "out"
    build(fleet, out)
    web = host(out, "web")
    assert web["state"] == "unverified"
    assert "invalid" in web["reason"]
    assert web["applied"] is None
    assert set(load(out, "compliance.json")["hosts"]["web"].values()) == {"unknown"}


def test_a_report_from_the_future_is_flagged_and_not_counted_as_fresh(tmp_path: Path) -> None:
    fleet = Fleet.create(tmp_path / "fleet.git")
    fleet.add_host("web")
    fleet.commit_main("Import", NOW - timedelta(days=5))
    fleet.publish(NOW - timedelta(days=5))
    fleet.report("web", NOW - timedelta(days=3))  # stale by itself (stale_after: 1 day)
    future = fleet.report("web", datetime(2100, 1, 1, tzinfo=NOW.tzinfo))
    out = tmp_path / "out"
    build(fleet, out)
    web = host(out, "web")
    assert web["state"] == "stale"
    assert "report from the future" in web["flags"]
    assert future[:8] in web["notes"]["report from the future"]
    problems = load(out, "index.json")["problems"]
    assert [(p["host"], p["kind"]) for p in problems] == [("web", "report from the future")]
    assert "not counted: dated ahead of this build" in (out / "hosts" / "web.html").read_text()


def test_year_9999_and_a_slightly_fast_clock(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    status = good_status(fleet, "web")
    status["time"] = "9999-12-31T23:59:59Z"
    fleet.raw_report("web", json.dumps(status).encode(), datetime(9999, 12, 31, tzinfo=NOW.tzinfo))
    out = tmp_path / "out"
    build(fleet, out)
    assert "report from the future" in host(out, "web")["flags"]
    # Two minutes ahead is a clock, not an attack: counted.
    fleet.report("ok", NOW + timedelta(minutes=2))
    build(fleet, out)
    assert host(out, "ok")["last_seen"] == "2026-11-23T12:02:00Z"
    assert host(out, "ok")["flags"] == []


def test_a_report_an_hour_ahead_counts_once_its_time_comes(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    fleet.report("web", NOW + timedelta(hours=1), Result.BUILD_FAILED)
    out = tmp_path / "out"
    build(fleet, out)
    assert host(out, "web")["state"] == "up to date"
    assert "report from the future" in host(out, "web")["flags"]
    later = NOW + timedelta(hours=2)
    stats = build(fleet, out, now=later)  # nothing new in git: the cache must see it
    assert stats.hosts_read == 0
    assert host(out, "web")["state"] == "failed"
    fresh = tmp_path / "fresh"
    build(fleet, fresh, now=later, use_cache=False)
    assert load(out, "inventory.json") == load(fresh, "inventory.json")


def test_a_rewritten_reports_branch_is_flagged_with_the_missing_commits(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    kept = fleet.report("web", NOW - timedelta(hours=3))
    failed = fleet.report("web", RECENT, Result.BUILD_FAILED, log_tail="error: build failed")
    out = tmp_path / "out"
    build(fleet, out)
    assert host(out, "web")["state"] == "failed"
    # The host force-pushes its branch back, to hide the failure, then reports again.
    fleet.set_ref(reports_ref("web"), kept)
    fleet.report("web", NOW - timedelta(minutes=30))
    build(fleet, out)
    web = host(out, "web")
    assert "reports rewritten" in web["flags"]
    assert failed[:8] in web["notes"]["reports rewritten"]
    dropped = load(out, "hosts/web.json")["dropped_reports"]
    assert [(d["commit"], d["result"]) for d in dropped] == [(failed, "build-failed")]
    problems = load(out, "index.json")["problems"]
    assert problems[0]["host"] == "web" and problems[0]["kind"] == "reports rewritten"
    assert failed[:8] in (out / "index.html").read_text()
    assert "Reports gone from the branch" in (out / "hosts" / "web.html").read_text()
    # Remembered: the next build, with nothing new, still says so.
    build(fleet, out)
    assert "reports rewritten" in host(out, "web")["flags"]
    assert "reports rewritten" in load(out, "drift.json")["groups"]


def test_a_deleted_reports_branch_names_every_report_it_held(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    seen = load(out, "hosts/web.json")["reports"]
    fleet.repo.references.delete(reports_ref("web"))
    build(fleet, out)
    dropped = load(out, "hosts/web.json")["dropped_reports"]
    assert [d["commit"] for d in dropped] == [r["commit"] for r in seen]


def test_fast_forward_reports_are_not_a_rewrite(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    fleet.report("web", RECENT)
    build(fleet, out)
    assert host(out, "web")["flags"] == []


def rewound(path: Path) -> tuple[Fleet, str, str]:
    """web applied the second of two publishes; then deploy/web is set back to the first
    (validly signed) one, as the demo's attacker does."""
    fleet = two_hosts(path)
    first = fleet.deploy_head("web")
    fleet.commit_main("Change", NOW - timedelta(days=1), extra={"web": "# new\n"})
    fleet.publish(NOW - timedelta(days=1))
    second = fleet.deploy_head("web")
    fleet.report("web", NOW - timedelta(hours=3))
    return fleet, first, second


def test_a_rewound_deploy_head_is_refused_not_published(tmp_path: Path) -> None:
    fleet, first, second = rewound(tmp_path / "fleet.git")
    fleet.set_ref(deploy_ref("web"), first)
    fleet.report("web", RECENT, Result.UNCHANGED, applied=second)
    out = tmp_path / "out"
    build(fleet, out)
    web = host(out, "web")
    assert web["published"] is None
    assert web["missing"] == []
    assert "deploy head rewound" in web["flags"]
    assert "deploy head unverified" not in web["flags"]
    note = web["notes"]["deploy head rewound"]
    assert first[:8] in note and second[:8] in note and "applied by the host" in note
    page = (out / "hosts" / "web.html").read_text()
    assert "Published, not applied" not in page
    assert "refused" in page
    published = re.search(r"<dt>Published</dt><dd>(.*?)</dd>", page)
    assert published is not None and "verified" not in published.group(1)
    groups = load(out, "drift.json")["groups"]
    assert [h["host"] for h in groups["deploy head rewound"]] == ["web"]
    assert all(h["missing"] == [] for hosts in groups.values() for h in hosts)
    # The agent refuses it: its report says rejected, and the site still never shows it
    # as published.
    fleet.report("web", RECENT + timedelta(minutes=1), Result.REJECTED, applied=second)
    build(fleet, out)
    web = host(out, "web")
    assert web["state"] == "rejected" and web["published"] is None


def test_a_head_set_below_what_the_site_saw_published_is_refused(tmp_path: Path) -> None:
    fleet, first, second = rewound(tmp_path / "fleet.git")
    fleet.set_ref(reports_ref("web"), fleet.report("web", RECENT, move_ref=False, applied=first))
    out = tmp_path / "out"
    build(fleet, out)
    assert host(out, "web")["published"] == second
    fleet.set_ref(deploy_ref("web"), first)  # web applied first: only the cache knows
    build(fleet, out)
    web = host(out, "web")
    assert web["published"] is None
    assert "published before" in web["notes"]["deploy head rewound"]


def test_a_normal_publish_is_not_a_rewind(tmp_path: Path) -> None:
    fleet, _, second = rewound(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    fleet.commit_main("Again", NOW - timedelta(hours=1), extra={"web": "# newer\n"})
    fleet.publish(NOW - timedelta(hours=1))
    build(fleet, out)
    web = host(out, "web")
    assert web["flags"] == [] and web["published"] == fleet.deploy_head("web")
    assert web["state"] == "pending" and web["applied"] == second


def test_a_boot_mode_host_shows_reboot_pending_not_drift(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    old_system = "/nix/store/0000aaaa-nixos-system-web-25.05"
    fleet.report("web", NOW - timedelta(hours=4), action="boot", running=old_system, reboot=True)
    fleet.report("web", RECENT, Result.UNCHANGED, action="boot", running=old_system, reboot=True)
    out = tmp_path / "out"
    build(fleet, out)
    web = host(out, "web")
    assert web["state"] == "up to date"
    assert web["flags"] == ["reboot pending"]
    assert web["reboot_pending_since"] == "2026-11-23T08:00:00Z"
    assert web["drift"] is None
    assert [p["host"] for p in load(out, "index.json")["problems"]] == []
    assert "reboot pending since 2026-11-23 08:00 UTC" in (out / "hosts" / "web.html").read_text()
    # After the reboot the host runs what it applied: nothing pending.
    fleet.report("web", RECENT + timedelta(minutes=30), Result.UNCHANGED, action="boot")
    build(fleet, out)
    assert host(out, "web")["flags"] == []


def test_a_switch_mode_host_running_something_else_is_still_drift(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    fleet.report("web", RECENT, running="/nix/store/0000-hand-built-system")
    out = tmp_path / "out"
    build(fleet, out)
    assert host(out, "web")["flags"] == ["drift"]


def test_cli_site_build_json_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    fleet.raw_report("web", b'{"schema": 1, "deploy_seen": 5}', RECENT)
    fleet.report("ok", datetime(2100, 1, 1, tzinfo=NOW.tzinfo))
    out = tmp_path / "out"
    args = ["site", "build", "--repo", str(fleet.path), "--out", str(out), "--json"]
    assert cli.execute(args) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["site"] == str(out / "index.html")
    assert summary["hosts"] == 2
    assert summary["invalid_reports"] == {"web": 1}
    assert summary["flagged_hosts"]["ok"] == ["report from the future"]
    assert summary["flagged_hosts"]["web"] == ["invalid report"]
    assert summary["seconds"] > 0
    assert sum(summary["states"].values()) == 2


def test_overview_inventory_and_host_page_say_the_truth(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    inventory = (out / "inventory.html").read_text()
    assert "Every host in main's <code>hosts/</code>: 2." in inventory
    index = (out / "index.html").read_text()
    assert index.index('id="urgent"') < index.index('id="trend"')
    # Zero counts are quiet: no alarm colour, no link.
    assert re.search(r'class="tile state-failed zero"><span class="count">0</span>', index)
    assert 'class="tile state-up-to-date"' in index
    page = (out / "hosts" / "web.html").read_text()
    assert "/: 50.0 GiB; /nix: 80.0 GiB" in page  # disk_free_bytes
    assert "1 h" in page  # uptime_seconds: 3600
    assert str(GOOD_FACTS["disk_free_bytes"]["/"]) not in page


def test_inventory_state_sorts_by_urgency(tmp_path: Path) -> None:
    fleet = two_hosts(tmp_path / "fleet.git")
    fleet.report("web", RECENT, Result.BUILD_FAILED)
    out = tmp_path / "out"
    build(fleet, out)
    rows = (out / "inventory.html").read_text()
    keys = dict(re.findall(r'hosts/([a-z]+)\.html">.*?<td data-sort="(\d+)">', rows))
    assert int(keys["web"]) < int(keys["ok"])
