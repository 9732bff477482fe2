"""End to end: the demo's scenario on this repository's own 8-host inventory, with real
git, real signatures, real Nix builds and profiles, and the site built from the server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from gitops.demo.scenario import DemoFleet, DemoOutcome, default_inventory, play, read_inventory
from gitops.protocol import Report, Result, deploy_ref, reports_ref
from gitops.report_commits import read_report_commit, walk_reports
from gitops.trust import commits
from testing.helpers import git, public_line

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoFleet, DemoOutcome]:
    import os

    os.environ.setdefault(
        "NIX_CONFIG",
        "build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command flakes",
    )
    root = tmp_path_factory.mktemp("demo") / "run"
    source = default_inventory()
    demo = DemoFleet(root, read_inventory(source), say=lambda _: None, policies=source / "policies")
    return demo, play(demo)


def test_inventory_is_this_repositorys_hosts(played: tuple[DemoFleet, DemoOutcome]) -> None:
    demo, _ = played
    repo_hosts = sorted(p.name for p in (Path(__file__).parent.parent / "hosts").iterdir())
    assert demo.hosts == repo_hosts
    assert len(demo.hosts) >= 5


def test_first_publish_and_every_agent_applies(played: tuple[DemoFleet, DemoOutcome]) -> None:
    demo, outcome = played
    assert outcome.first_publish == tuple(demo.hosts)
    assert {h: r.result for h, r in outcome.first_run.items()} == dict.fromkeys(
        demo.hosts, Result.APPLIED
    )


def test_profile_change_rebuilds_only_its_hosts(played: tuple[DemoFleet, DemoOutcome]) -> None:
    demo, outcome = played
    assert 0 < len(outcome.profile_users) < len(demo.hosts)
    assert outcome.second_publish == tuple(sorted(outcome.profile_users))
    for host, result in outcome.second_run.items():
        expected = Result.APPLIED if host in outcome.profile_users else Result.UNCHANGED
        assert result.result == expected, (host, result.reason)


def test_failures_are_contained(played: tuple[DemoFleet, DemoOutcome]) -> None:
    _, outcome = played
    assert outcome.failures[outcome.broken].result == Result.BUILD_FAILED
    assert outcome.failures[outcome.unhealthy].result == Result.ROLLED_BACK


def test_attacks_are_refused_and_reported(played: tuple[DemoFleet, DemoOutcome]) -> None:
    _, outcome = played
    unsigned = outcome.attacks[outcome.unsigned_victim]
    rolled = outcome.attacks[outcome.rollback_victim]
    assert unsigned.result == Result.REJECTED and "not signed" in unsigned.reason
    assert rolled.result == Result.REJECTED and "does not descend" in rolled.reason


def _reports(demo: DemoFleet, host: str) -> list[Report]:
    repo = pygit2.Repository(str(demo.server))
    head = commits.ref_target(repo, reports_ref(host))
    assert head is not None
    trust = demo.root / f"{host}.signers"
    trust.write_text(f"{host} {public_line(demo.host_keys[host])}\n")
    from gitops.trust.allowed_signers import AllowedSigners

    signers = AllowedSigners.load(trust)
    found = []
    for oid in walk_reports(repo, head):
        commits.verify_commit(repo, oid, signers)
        status = read_report_commit(repo, oid).status
        assert status is not None
        found.append(Report.from_json(status))
    return found[::-1]


def test_server_holds_the_signed_record(played: tuple[DemoFleet, DemoOutcome]) -> None:
    demo, outcome = played
    for host in demo.hosts:
        reports = _reports(demo, host)
        assert reports[0].result == Result.APPLIED
        ids = [r.report_id for r in reports]
        assert len(ids) == len(set(ids)), "no duplicated report"
    assert _reports(demo, outcome.unsigned_victim)[-1].result == Result.REJECTED
    assert _reports(demo, outcome.broken)[-1].result == Result.BUILD_FAILED
    # git, as an independent peer, accepts every branch head's signature.
    publishers = demo.keys_dir / "publishers.allowed_signers"
    for host in demo.hosts:
        if host in (outcome.unsigned_victim,):
            continue
        git(
            "-c",
            f"gpg.ssh.allowedSignersFile={publishers}",
            "verify-commit",
            deploy_ref(host),
            cwd=demo.server,
        )
        git(
            "-c",
            f"gpg.ssh.allowedSignersFile={demo.root / f'{host}.signers'}",
            "verify-commit",
            reports_ref(host),
            cwd=demo.server,
        )


def test_site_was_built(played: tuple[DemoFleet, DemoOutcome]) -> None:
    demo, outcome = played
    inventory = (outcome.site / "inventory.html").read_text()
    for host in demo.hosts:
        assert host in inventory
        assert (outcome.site / "hosts" / f"{host}.html").is_file()


def test_compliance_reflects_the_machines(played: tuple[DemoFleet, DemoOutcome]) -> None:
    import json

    _, outcome = played
    data = json.loads((outcome.site / "compliance.json").read_text())
    policies = {p["name"]: p for p in data["policies"]}
    # The laptop's owner turned password logins on; one workstation lacks automatic GC
    # (see gitops.demo.scenario.write_machine). Nothing else fails.
    assert policies["ssh-password-login-disabled"]["failing"] == ["laptop-anna"]
    assert policies["gc-timer-enabled"]["failing"] == ["media-ws-1"]
    assert policies["firewall-active"]["counts"]["pass"] == len(played[0].hosts)


def test_demo_command_prints_each_step(tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "gitops", "demo", "--dir", tmp_path / "cli-demo"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    for step in (
        "1. Keys",
        "2. Publish",
        "3. Every agent",
        "4. A pull request",
        "5. A change",
        "6. Attacks",
        "7. The site",
    ):
        assert step in done.stdout
    assert "stand-ins" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "gitops", "demo", "--dir", tmp_path / "cli-demo"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1
    assert again.stderr.strip().endswith("not empty; choose a new directory for the demo")
