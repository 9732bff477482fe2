"""A build reads the whole month of reports of at most ``--history-hosts`` hosts and the
newest reports of the others; later builds read on. Whatever the order, the site that
results is the one a build reading everything at once makes."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest

from gitops.protocol import reports_ref
from gitops.sitegen import build as site_build
from gitops.sitegen.collect import QUICK_READ
from testing.helpers import gitops
from testing.sboms import HOST_PACKAGES, NOW, WHEN, SoftwareFleet
from testing.site_helpers import NOW as STANDARD_NOW
from testing.site_helpers import Fleet, standard_fleet

HOURS = 3 * QUICK_READ  # a history longer than a quick read


def build(path: Path, out: Path, history_hosts: int, now: datetime = NOW) -> site_build.BuildStats:
    return site_build.build(path, out, now=now, workers=1, history_hosts=history_hosts)


def load(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


def same_pages(left: Path, right: Path) -> None:
    """The two sites' host JSON and aggregate JSON agree (``generated`` aside)."""
    names = sorted(p.relative_to(left).as_posix() for p in left.rglob("*.json"))
    assert names == sorted(p.relative_to(right).as_posix() for p in right.rglob("*.json"))
    for name in names:
        a, b = load(left, name), load(right, name)
        for page in (a, b):
            if isinstance(page, dict):
                page.pop("generated", None)
        assert a == b, name


@pytest.fixture
def fleet(tmp_path: Path) -> SoftwareFleet:
    """Hosts with an SBOM in their first report, then hours of heartbeats."""
    fleet = SoftwareFleet(
        tmp_path / "fleet.git", pygit2.init_repository(tmp_path / "fleet.git", True)
    )
    for name in HOST_PACKAGES:
        fleet.add_host(name)
    fleet.commit_main("hosts", WHEN - timedelta(days=1))
    for name, packages in HOST_PACKAGES.items():
        fleet.send(name, packages, WHEN - timedelta(hours=HOURS))
        for hour in range(HOURS - 1, 0, -1):
            fleet.send(name, packages, NOW - timedelta(hours=hour), with_sbom=False)
    return fleet


def test_a_quick_first_build_shows_the_newest_reports_and_says_more_come(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    whole = tmp_path / "whole"
    build(fleet.path, whole, history_hosts=len(HOST_PACKAGES))
    out = tmp_path / "site"
    stats = build(fleet.path, out, history_hosts=0)
    assert stats.history_pending == len(HOST_PACKAGES)
    assert "read in the next builds" in stats.summary()
    page = load(out, "hosts/web-1.json")
    assert page["history_pending"] is True
    assert len(page["reports"]) == QUICK_READ
    # The current state is all there already.
    assert page["host"] == load(whole, "hosts/web-1.json")["host"]
    assert load(out, "software.json")["sboms"]["web-1"]["commit"] is None  # further down
    html = (out / "hosts" / "web-1.html").read_text()
    assert "Older reports are not read yet" in html
    assert "searched in a next build" in html
    overview = (out / "index.html").read_text()
    assert f"older reports of\n{len(HOST_PACKAGES)} hosts are read in the next builds" in overview

    stats = build(fleet.path, out, history_hosts=len(HOST_PACKAGES))
    assert stats.history_pending == 0
    page = load(out, "hosts/web-1.json")
    assert page["history_pending"] is False
    assert len(page["reports"]) == HOURS
    assert load(out, "software.json")["sboms"]["web-1"]["commit"] is not None
    assert "Older reports are not read yet" not in (out / "hosts" / "web-1.html").read_text()
    assert "read in the next builds" not in (out / "index.html").read_text()
    same_pages(out, whole)


def test_each_build_reads_on_for_its_budget_of_hosts(fleet: SoftwareFleet, tmp_path: Path) -> None:
    out = tmp_path / "site"
    budget = 1
    pending = [build(fleet.path, out, history_hosts=budget).history_pending]
    while pending[-1]:
        assert len(pending) <= len(HOST_PACKAGES), "the backfill must end"
        pending.append(build(fleet.path, out, history_hosts=budget).history_pending)
    hosts = len(HOST_PACKAGES)
    # More hosts never read than the budget: all read quickly, then one a build.
    assert pending == list(range(hosts, -1, -budget))
    whole = tmp_path / "whole"
    build(fleet.path, whole, history_hosts=hosts)
    same_pages(out, whole)


def test_new_reports_while_older_ones_wait(fleet: SoftwareFleet, tmp_path: Path) -> None:
    out = tmp_path / "site"
    build(fleet.path, out, history_hosts=0)
    fleet.send("web-1", HOST_PACKAGES["web-1"], NOW - timedelta(minutes=20), with_sbom=False)
    stats = build(fleet.path, out, history_hosts=0)  # the new report, nothing older yet
    page = load(out, "hosts/web-1.json")
    assert stats.hosts_read == 1 and page["history_pending"] is True
    assert page["reports"][0]["commit"] == str(fleet.repo.references[reports_ref("web-1")].target)
    build(fleet.path, out, history_hosts=len(HOST_PACKAGES))
    whole = tmp_path / "whole"
    build(fleet.path, whole, history_hosts=len(HOST_PACKAGES))
    same_pages(out, whole)


def test_a_quick_read_goes_on_to_a_report_it_can_count(tmp_path: Path) -> None:
    """Unsigned commits on top of a host's branch (a server that lies) do not hide its
    state until a later build: the quick read reads on to a verified report."""
    fleet: Fleet = standard_fleet(tmp_path / "fleet.git")
    for minute in range(QUICK_READ + 5):
        when = STANDARD_NOW - timedelta(minutes=50 - minute)
        fleet.raw_report("up", b"{}", when, signed=False)
    whole = tmp_path / "whole"
    build(fleet.path, whole, history_hosts=100, now=STANDARD_NOW)
    out = tmp_path / "site"
    build(fleet.path, out, history_hosts=0, now=STANDARD_NOW)
    page = load(out, "hosts/up.json")
    assert page["host"] == load(whole, "hosts/up.json")["host"]
    assert page["host"]["state"] == "up to date"
    unsigned = [r for r in page["reports"] if r["trust"] != "verified"]
    assert len(unsigned) == QUICK_READ + 5


def test_the_cli_takes_a_budget_and_says_what_waits(fleet: SoftwareFleet, tmp_path: Path) -> None:
    out = tmp_path / "site"
    done = gitops(
        "site",
        "build",
        "--repo",
        str(fleet.path),
        "--out",
        str(out),
        "--history-hosts",
        "0",
        "--json",
        "--no-alerts",
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["history_pending"] == len(HOST_PACKAGES)
    bad = gitops(
        "site", "build", "--repo", str(fleet.path), "--out", str(out), "--history-hosts", "-1"
    )
    assert bad.returncode == 2
    assert "--history-hosts" in bad.stderr and "Traceback" not in bad.stderr


def test_a_branch_rewritten_while_its_history_waits(fleet: SoftwareFleet, tmp_path: Path) -> None:
    """The server force-pushes web-1's branch back to an older report between builds:
    the next build reads the branch as it is and lists what it dropped, as a whole build
    of the same sequence does."""
    out, whole = tmp_path / "site", tmp_path / "whole"
    build(fleet.path, out, history_hosts=0)
    build(fleet.path, whole, history_hosts=len(HOST_PACKAGES))
    ref = reports_ref("web-1")
    head = fleet.repo.references[ref].peel(pygit2.Commit)
    older = head.parents[0].parents[0]
    fleet.repo.references.create(ref, older.id, force=True)
    build(fleet.path, out, history_hosts=0)
    page = load(out, "hosts/web-1.json")
    assert page["reports"][0]["commit"] == str(older.id)
    assert {d["commit"] for d in page["dropped_reports"]} == {str(head.id), str(head.parents[0].id)}
    build(fleet.path, out, history_hosts=len(HOST_PACKAGES))
    build(fleet.path, whole, history_hosts=len(HOST_PACKAGES))
    same_pages(out, whole)


def test_a_new_host_key_while_history_waits(fleet: SoftwareFleet, tmp_path: Path) -> None:
    """main gives web-1 a new key while its older reports wait: every report read is
    checked against the new key (those signed by the old one no longer count), and the
    history read on later is checked against it too."""
    out = tmp_path / "site"
    build(fleet.path, out, history_hosts=0)
    fleet.add_host("web-1")  # a new key in host.yaml; its reports stay signed by the old
    fleet.commit_main("web-1: new key", WHEN)
    build(fleet.path, out, history_hosts=0)
    page = load(out, "hosts/web-1.json")
    assert page["reports"] and all(r["trust"] == "unknown key" for r in page["reports"])
    build(fleet.path, out, history_hosts=len(HOST_PACKAGES))
    page = load(out, "hosts/web-1.json")
    assert page["history_pending"] is False
    assert len(page["reports"]) == HOURS
    assert all(r["trust"] == "unknown key" for r in page["reports"])
    whole = tmp_path / "whole"
    build(fleet.path, whole, history_hosts=len(HOST_PACKAGES))
    same_pages(out, whole)
