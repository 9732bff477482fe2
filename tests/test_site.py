"""The static site, built from real repositories with real signatures (no browser here;
see test_site_browser.py)."""

from __future__ import annotations

import hashlib
import json
import os
import time
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops import cli
from gitops.errors import GitopsError
from gitops.protocol import Result, deploy_ref, reports_ref
from gitops.sitegen import build as site_build
from gitops.sitegen import resources, workers
from gitops.sitegen.cache import cache_dir_for
from gitops.sitegen.model import HostData, State
from gitops.trust import commits
from testing.site_helpers import NOW, Fleet, broken_links, standard_fleet


def build(fleet: Fleet, out: Path, **kwargs: Any) -> site_build.BuildStats:
    return site_build.build(fleet.path, out, now=NOW, workers=1, **kwargs)


def load(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Fleet, Path]:
    root = tmp_path_factory.mktemp("site")
    fleet = standard_fleet(root / "fleet.git")
    out = root / "www" / "site"
    build(fleet, out)
    return fleet, out


def states(out: Path) -> dict[str, dict[str, Any]]:
    return {h["name"]: h for h in load(out, "inventory.json")["hosts"]}


def test_every_state_follows_the_rules(built: tuple[Fleet, Path]) -> None:
    _, out = built
    found = {name: row["state"] for name, row in states(out).items()}
    assert found == {
        "up": "up to date",
        "pending": "pending",
        "failed": "failed",
        "rolledback": "rolled back",
        "rejected": "rejected",
        "stale": "stale",
        "never": "never reported",
        "forged": "unverified",
        "offline": "offline",
        "drifting": "up to date",
        "reboot": "up to date",
        "exempt": "up to date",
        "server": "up to date",
    }


def test_flags_reboot_and_drift(built: tuple[Fleet, Path]) -> None:
    _, out = built
    rows = states(out)
    assert rows["reboot"]["flags"] == ["reboot needed"]
    assert rows["drifting"]["flags"] == ["drift"]
    assert "0000-hand-built-system" in rows["drifting"]["drift"]
    drift = load(out, "drift.json")["groups"]
    assert [h["host"] for h in drift["drift"]] == ["drifting"]
    assert rows["up"]["flags"] == []


def test_pending_host_names_the_change_it_misses(built: tuple[Fleet, Path]) -> None:
    fleet, out = built
    pending = next(h for h in load(out, "drift.json")["groups"]["pending"])
    assert pending["host"] == "pending"
    assert pending["published"] == fleet.deploy_head("pending")
    assert pending["pull_request"] == 12
    assert pending["since"] == "2026-11-21T12:05:00Z"
    html = (out / "drift.html").read_text()
    assert 'href="https://git.example.org/fleet/pulls/12"' in html
    assert f'href="https://git.example.org/fleet/commit/{pending["published_source"]}"' in html


def test_forged_reports_are_shown_but_never_counted(built: tuple[Fleet, Path]) -> None:
    _, out = built
    detail = load(out, "hosts/forged.json")
    assert [r["trust"] for r in detail["reports"]] == ["unknown key"]
    assert detail["reports"][0]["result"] == "applied"  # what it claims, shown as such
    assert detail["host"]["applied"] is None
    assert {p["outcome"] for p in detail["policies"]} == {"unknown"}
    assert detail["facts"] is None
    assert "unknown key" in (out / "hosts" / "forged.html").read_text()


def test_a_bad_signature_is_unverified_and_falls_back(tmp_path: Path) -> None:
    fleet = Fleet.create(tmp_path / "fleet.git")
    fleet.add_host("web")
    fleet.commit_main("Import", NOW - timedelta(days=2))
    fleet.publish(NOW - timedelta(days=2))
    old = fleet.deploy_head("web")
    fleet.report("web", NOW - timedelta(hours=5), Result.UNCHANGED, applied=old)
    fleet.commit_main("Change", NOW - timedelta(days=1), extra={"web": "# new\n"})
    fleet.publish(NOW - timedelta(days=1))
    # A report claiming the new head, its signature broken by editing the signed object.
    claim = fleet.report("web", NOW - timedelta(hours=1), move_ref=False)
    raw = commits.read_raw(fleet.repo, claim).replace(
        b"applied for the test", b"applied for the tesT"
    )
    tampered = fleet.repo.odb.write(pygit2.enums.ObjectType.COMMIT, raw)
    fleet.set_ref(reports_ref("web"), str(tampered))
    out = tmp_path / "out"
    build(fleet, out)
    detail = load(out, "hosts/web.json")
    assert [r["trust"] for r in detail["reports"]] == ["unverified", "verified"]
    assert detail["host"]["state"] == "pending"
    assert detail["host"]["applied"] == old
    assert "unverified report" in detail["host"]["flags"]


def test_an_unsigned_deploy_head_is_not_published(tmp_path: Path) -> None:
    fleet = Fleet.create(tmp_path / "fleet.git")
    fleet.add_host("web")
    fleet.commit_main("Import", NOW - timedelta(days=2))
    fleet.publish(NOW - timedelta(days=2))
    fleet.report("web", NOW - timedelta(hours=1))
    head = fleet.repo.get(fleet.deploy_head("web"))
    assert isinstance(head, pygit2.Commit)
    someone = ed25519.Ed25519PrivateKey.generate()
    rogue = commits.create_signed_commit(
        fleet.repo,
        tree=head.tree_id,
        parents=[head.id],
        message="deploy web: by hand\n",
        author=commits.signature_of("mallory", "m@example.org", NOW - timedelta(minutes=30)),
        key=someone,
    )
    fleet.set_ref(deploy_ref("web"), str(rogue))
    out = tmp_path / "out"
    build(fleet, out)
    row = states(out)["web"]
    assert row["published"] is None
    assert "deploy head unverified" in row["flags"]
    assert row["state"] == "pending"
    deploys = load(out, "hosts/web.json")["deploys"]
    assert [d["trust"] for d in deploys] == ["unknown key", "verified"]
    assert deploys[1]["signer"] == "ci@example.org"


def test_compliance_counts_and_exemptions(built: tuple[Fleet, Path]) -> None:
    _, out = built
    data = load(out, "compliance.json")
    policies = {p["name"]: p for p in data["policies"]}
    firewall = policies["firewall-active"]
    assert firewall["failing"] == ["server"]
    # never, forged: no verified report → unknown
    assert firewall["unknown"] == ["forged", "never"]
    units = policies["no-failed-units"]
    assert "server" in units["unknown"]
    encryption = policies["disk-encryption"]  # applies to tag laptop only
    assert "server" not in data["hosts"]["server"] or True
    assert "disk-encryption" not in data["hosts"]["server"]
    assert encryption["exempt"] == ["exempt"]
    assert data["hosts"]["exempt"]["disk-encryption"] == "exempt"
    # an expired exemption no longer applies
    assert data["hosts"]["exempt"]["gc-timer-enabled"] == "fail"
    assert data["hosts"]["stale"]["report-fresh"] == "fail"
    assert data["hosts"]["up"]["report-fresh"] == "pass"
    page = (out / "hosts" / "exempt.html").read_text()
    assert "exempt until 2099-01-01: lab machine" in page
    assert "exemption expired 2020-01-01" in page
    assert set(states(out)["server"]["failing_policies"]) == {"firewall-active"}


def test_overview_counts_charts_and_urgency(built: tuple[Fleet, Path]) -> None:
    _, out = built
    summary = load(out, "index.json")
    assert summary["states"]["up to date"] == 5
    assert summary["flags"] == {"reboot needed": 1, "drift": 1}
    kinds = [p["kind"] for p in summary["problems"]]
    assert kinds[:3] == ["failed", "rolled back", "rejected"]
    assert kinds.index("drift") < kinds.index("stale") < kinds.index("pending")
    history = summary["history"]
    assert len(history["days"]) == 30
    assert history["states"]["never reported"][0] == 13  # 30 days ago nobody had reported
    assert history["states"]["up to date"][-1] == 5
    html = (out / "index.html").read_text()
    assert html.count("<svg") == 2
    assert "failed at the end" not in html
    assert 'aria-label="Hosts by state, each day of the last 30 days"' in html
    failed_since = next(p for p in summary["problems"] if p["host"] == "failed")["since"]
    assert failed_since == "2026-11-23T09:00:00Z"


def test_audit_trail(built: tuple[Fleet, Path]) -> None:
    fleet, out = built
    events = load(out, "audit.json")["events"]
    changes = [e for e in events if e["kind"] == "change"]
    assert [c["pull_request"] for c in changes] == [12, None]
    assert changes[0]["who"] == "Alice Admin <alice@example.org>"
    publishes = [e for e in events if e["kind"] == "publish"]
    assert len(publishes) == 2
    assert all(p["who"] == "ci@example.org" and p["trust"] == "verified" for p in publishes)
    assert publishes[0]["host_count"] == 12  # the workstation change: every host but server
    assert publishes[0]["pull_request"] == 12
    applies = [e for e in events if e["kind"] == "apply"]
    assert {"trust": "unknown key", "host": "forged"} in [
        {"trust": a["trust"], "host": a["hosts"][0]} for a in applies
    ]
    page = (out / "audit.html").read_text()
    assert "gpg.ssh.allowedSignersFile" in page
    signers = (out / "keys" / "hosts.allowed_signers").read_text()
    assert signers.count("\n") == len(fleet.hosts)


def test_host_page_has_history_generations_and_failure_log(built: tuple[Fleet, Path]) -> None:
    _, out = built
    page = (out / "hosts" / "failed.html").read_text()
    assert "failed with exit code 1" in page
    assert "Generations" in page
    detail = load(out, "hosts/failed.json")
    assert [r["result"] for r in detail["reports"]] == ["build-failed", "build-failed", "applied"]
    assert detail["facts"]["firewall"] == "active"


def test_no_broken_internal_links(built: tuple[Fleet, Path]) -> None:
    _, out = built
    assert broken_links(out) == []
    assert (out / "assets" / "style.css").is_file()


def test_incremental_build_reads_and_renders_only_what_changed(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    first = build(fleet, out)
    assert first.hosts_read == 13
    assert first.pages_rendered == 13
    untouched = (out / "hosts" / "server.html").stat().st_ino
    again = build(fleet, out)
    assert (again.hosts_read, again.verified_now, again.pages_rendered) == (0, 0, 0)
    fleet.report("pending", NOW - timedelta(minutes=5))
    third = build(fleet, out)
    assert (third.hosts_read, third.verified_now, third.pages_rendered) == (1, 1, 1)
    assert states(out)["pending"]["state"] == "up to date"
    detail = load(out, "hosts/pending.json")
    assert len(detail["reports"]) == 3
    assert (out / "hosts" / "server.html").stat().st_ino == untouched  # hard-linked, not rewritten
    # The cache gives the same site as a build from scratch.
    fresh = tmp_path / "fresh"
    build(fleet, fresh, use_cache=False)
    for name in ("inventory.json", "compliance.json", "hosts/pending.json", "drift.json"):
        assert load(out, name) == load(fresh, name), name


def test_a_page_gone_from_the_store_is_rendered_again(tmp_path: Path) -> None:
    """Unchanged pages are hard-linked from the cache's page store while the aggregate
    pages render; one missing there (a disk cleaned by hand) is rendered again, and the
    build after that links it as usual."""
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    before = (out / "hosts" / "server.html").read_bytes()
    store = tmp_path / ".out.cache" / "pages"
    (store / hashlib.sha256(before).hexdigest()).unlink()
    again = build(fleet, out)
    assert (again.hosts_read, again.verified_now, again.pages_rendered) == (0, 0, 1)
    assert (out / "hosts" / "server.html").read_bytes() == before
    assert (out / "hosts" / "server.json").is_file()
    assert broken_links(out) == []
    third = build(fleet, out)
    assert third.pages_rendered == 0
    assert (out / "hosts" / "server.html").read_bytes() == before


def test_time_passing_is_judged_from_the_cache_like_from_scratch(tmp_path: Path) -> None:
    """Two days later nothing new arrived: hosts go stale, pages re-render from cached data."""
    fleet = standard_fleet(tmp_path / "fleet.git")
    out, fresh = tmp_path / "out", tmp_path / "fresh"
    build(fleet, out)
    later = NOW + timedelta(days=2, hours=3)
    stats = site_build.build(fleet.path, out, now=later, workers=1)
    assert stats.hosts_read == 0 and stats.pages_rendered > 0
    site_build.build(fleet.path, fresh, now=later, workers=1, use_cache=False)
    assert states(out)["up"]["state"] == "stale"
    for name in ("index.json", "inventory.json", "compliance.json", "audit.json", "hosts/up.json"):
        assert load(out, name) == load(fresh, name), name


def test_a_new_host_key_re_verifies_that_host(tmp_path: Path) -> None:
    fleet = Fleet.create(tmp_path / "fleet.git")
    fleet.add_host("web")
    fleet.commit_main("Import", NOW - timedelta(days=1))
    fleet.publish(NOW - timedelta(days=1))
    fleet.report("web", NOW - timedelta(hours=1))
    out = tmp_path / "out"
    build(fleet, out)
    assert states(out)["web"]["state"] == "up to date"
    fleet.add_host("web")  # a new key in host.yaml, by pull request
    fleet.commit_main("Re-key web", NOW - timedelta(minutes=30))
    stats = build(fleet, out)
    assert stats.hosts_read == 1
    assert states(out)["web"]["state"] == "unverified"


def test_parallel_build_equals_single_process(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    serial, parallel = tmp_path / "serial", tmp_path / "parallel"
    build(fleet, serial, use_cache=False)
    monkeypatch.setattr(workers, "PARALLEL_MIN", 1)
    site_build.build(fleet.path, parallel, now=NOW, workers=2)
    for name in ("inventory.json", "audit.json", "index.json", "hosts/failed.json"):
        assert load(serial, name) == load(parallel, name), name


def test_failed_build_keeps_the_old_site(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    before = (out / "index.html").read_text()
    fleet.policies["broken.yaml"] = "name: broken\ncondition: {fact: facts.firewall}\n"
    fleet.commit_main("Add a broken policy", NOW - timedelta(hours=1))
    with pytest.raises(GitopsError) as caught:
        build(fleet, out)
    message = str(caught.value)
    assert "policies/broken.yaml" in message and "condition" in message
    assert "\n" not in message
    assert (out / "index.html").read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".out.cache", "fleet.git", "out"]


def test_refuses_to_replace_a_directory_it_did_not_build(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    home = tmp_path / "home"
    home.mkdir()
    (home / "notes.txt").write_text("mine")
    with pytest.raises(GitopsError, match="not a site built by gitops"):
        build(fleet, home)
    assert (home / "notes.txt").read_text() == "mine"
    empty = tmp_path / "empty"
    empty.mkdir()
    build(fleet, empty)  # an empty directory (e.g. from mktemp -d) is fine
    assert (empty / "index.html").is_file()


def test_user_errors_are_one_clear_line(tmp_path: Path) -> None:
    with pytest.raises(GitopsError, match="no such directory"):
        site_build.build(tmp_path / "missing", tmp_path / "out")
    repo = pygit2.init_repository(str(tmp_path / "empty.git"), bare=True)
    assert repo is not None
    with pytest.raises(GitopsError, match="no branch 'main'"):
        site_build.build(tmp_path / "empty.git", tmp_path / "out")


def test_cli_site_build(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    code = cli.execute(["site", "build", "--repo", str(fleet.path), "--out", str(out)])
    assert code == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(out / "index.html")
    assert "signatures checked" in captured.err
    assert cache_dir_for(out).is_dir()
    # A second build swaps the new site in; the old one is deleted by a detached child.
    assert cli.execute(["site", "build", "--repo", str(fleet.path), "--out", str(out)]) == 0
    assert (out / "index.html").is_file()
    deadline = time.monotonic() + 30
    while any(p.name.startswith(".out.tmp-") for p in tmp_path.iterdir()):
        assert time.monotonic() < deadline, "the old site was never deleted"
        time.sleep(0.05)


def test_templates_are_found() -> None:
    assert (resources.templates_dir() / "base.html").is_file()
    assert (resources.assets_dir() / "table.js").is_file()


def test_docs_link_when_the_handbook_is_next_to_the_site(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    handbook = tmp_path / "handbook"
    handbook.mkdir()
    (handbook / "index.html").write_text("<!DOCTYPE html><title>h</title>")
    out = tmp_path / "out"
    build(fleet, out)
    assert 'href="../handbook/index.html"' in (out / "index.html").read_text()
    assert 'href="../../handbook/index.html"' in (out / "hosts" / "up.html").read_text()
    assert broken_links(out) == []
    os.remove(handbook / "index.html")


def test_fleet_parsed_in_parts_equals_one_pass(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from gitops.sitegen import collect

    fleet = standard_fleet(tmp_path / "fleet.git")
    head = collect.main_head(fleet.repo)
    whole, _ = collect.load_main(fleet.repo, head)
    monkeypatch.setattr(collect, "PARALLEL_FLEET_MIN", 2)
    parts, _ = collect.load_main(fleet.repo, head, workers=2)
    assert parts == whole
    fleet.hosts["up"]["key"] = fleet.hosts["stale"]["key"]  # hosts far apart in the list
    fleet.commit_main("Copy a key", NOW)
    bad = collect.main_head(fleet.repo)
    with pytest.raises(GitopsError, match="key: same key as host"):
        collect.load_main(fleet.repo, bad, workers=2)


def test_host_page_shows_what_changed_when_the_report_carries_it(tmp_path: Path) -> None:
    import json as json_module

    from gitops.report_commits import report_message

    fleet = Fleet.create(tmp_path / "fleet.git")
    fleet.add_host("web")
    fleet.commit_main("Import", NOW - timedelta(days=1))
    fleet.publish(NOW - timedelta(days=1))
    plain = fleet.report("web", NOW - timedelta(hours=1), move_ref=False)
    commit = fleet.repo.get(plain)
    assert isinstance(commit, pygit2.Commit)
    blob = commit.tree["status.json"]
    assert isinstance(blob, pygit2.Blob)
    status = json_module.loads(blob.data)
    status["changes"] = ["firefox: 128.0 → 129.0", "linux: 6.6.30 → 6.6.31"]
    builder = fleet.repo.TreeBuilder()
    builder.insert(
        "status.json",
        fleet.repo.create_blob(json_module.dumps(status).encode()),
        pygit2.enums.FileMode.BLOB,
    )
    from gitops.protocol import Report

    oid = commits.create_signed_commit(
        fleet.repo,
        tree=builder.write(),
        parents=[],
        message=report_message(Report.from_json(json_module.dumps(status))),
        author=commit.author,
        key=fleet.keys["web"],
    )
    fleet.set_ref(reports_ref("web"), str(oid))
    out = tmp_path / "out"
    build(fleet, out)
    page = (out / "hosts" / "web.html").read_text()
    assert "What changed in the last switch" in page
    assert "firefox: 128.0 → 129.0" in page
    assert states(out)["web"]["state"] == "up to date"


def test_tree_source_answers_like_pygit2_path_lookups(tmp_path: Path) -> None:
    import pygit2

    from gitops.fleet.source import TreeSource
    from gitops.sitegen import collect

    fleet = standard_fleet(tmp_path / "fleet.git")
    tree = collect.main_head(fleet.repo).tree
    source = TreeSource(fleet.repo, tree, "x")

    def direct(path: str) -> pygit2.Object | None:
        if not path:
            return tree
        try:
            return tree[path]
        except KeyError:
            return None

    for path in (
        "",
        "fleet.yaml",
        "hosts",
        "hosts/up",
        "hosts/up/host.yaml",
        "hosts/up/missing.yaml",
        "hosts/nobody/host.yaml",
        "fleet.yaml/inside",
        "profiles/workstation.nix",
        "policies",
    ):
        expected = direct(path)
        found = source.entry(path)
        assert (found.id if found is not None else None) == (
            expected.id if expected is not None else None
        ), path
        assert source.is_dir(path) == isinstance(expected, pygit2.Tree), path
        if isinstance(expected, pygit2.Blob):
            assert source.read(path) == bytes(expected.data), path


def _state_at(data: HostData, moment: datetime, stale_after: int) -> tuple[State, str | None]:
    """The host's state at ``moment`` the slow way: from the reports and deploy commits that
    existed then, newest first."""
    from gitops.sitegen import states

    report = next((r for r in data.reports if r.verified and r.when <= moment), None)
    published = next((d for d in data.deploys if d.verified and d.time <= moment), None)
    any_reports = any(r.commit_time <= moment for r in data.reports)
    state = states._state_of(report, published, moment, stale_after, any_reports)
    return state, (report.nixos_version if report is not None else None)


def test_chart_samples_equal_the_state_at_each_moment(tmp_path: Path) -> None:
    from gitops.sitegen import collect, states
    from gitops.sitegen.verify import trust_id

    fleet = standard_fleet(tmp_path / "fleet.git")
    head = collect.main_head(fleet.repo)
    model, _ = collect.load_main(fleet.repo, head)
    deploys, reports = collect.list_heads(fleet.repo)
    publishers = model.settings.publisher_trust()
    reader = collect.HostReader(fleet.repo)
    moments = [NOW - timedelta(hours=h) for h in range(0, 24 * 12, 7)][::-1]
    for name, host in model.hosts.items():
        data = reader.collect(
            name,
            host,
            reports_head=reports.get(name),
            deploy_head=deploys.get(name),
            publishers=publishers,
            publishers_id=trust_id(publishers),
            previous=None,
            now=NOW,
        )
        expected = tuple(_state_at(data, m, 86400) for m in moments)
        assert states.samples(data, moments, 86400) == expected, name


def test_a_removed_host_leaves_the_site(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    fleet.report("up", NOW - timedelta(minutes=1))  # a delta row for "up"
    build(fleet, out)
    del fleet.hosts["server"]
    fleet.commit_main("Retire server", NOW - timedelta(minutes=1))
    build(fleet, out)
    assert "server" not in states(out)
    assert not (out / "hosts" / "server.html").exists()
    again = build(fleet, out)
    assert again.pages_rendered == 0 and again.pages_reused == 12
    assert load(out, "index.json")["hosts"] == 12


def test_leftovers_of_a_killed_build_are_swept(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    build(fleet, out)
    for name in (".out.tmp-99999", ".out.old-99999"):
        (tmp_path / name / "hosts").mkdir(parents=True)
    (tmp_path / ".other.tmp-1").mkdir()
    build(fleet, out)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ".other.tmp-1",
        ".out.cache",
        "fleet.git",
        "out",
    ]
