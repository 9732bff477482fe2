"""End to end: the demo's walkthrough on this repository's own 8-host inventory, with real
git, real signatures, real Nix builds and profiles, everything through the gitops server
(a stand-in for sshd runs the generated forced commands), and the site built from it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pygit2
import pytest

from gitops.demo.scenario import default_inventory, read_inventory
from gitops.demo.served import ServedFleet
from gitops.demo.walkthrough import DemoOutcome, play
from gitops.fleet.rollout_record import Status
from gitops.protocol import ROLLOUT_REF, Report, Result, deploy_ref, reports_ref
from gitops.report_commits import read_report_commit, walk_reports
from gitops.trust import commits, keys
from testing.helpers import git, git_out, public_line

pytestmark = pytest.mark.slow


SAID: list[str] = []  # what the walkthrough printed


@pytest.fixture(scope="module")
def played(tmp_path_factory: pytest.TempPathFactory) -> tuple[ServedFleet, DemoOutcome]:
    os.environ.setdefault(
        "NIX_CONFIG",
        "build-users-group =\nsandbox = false\nsubstituters =\nexperimental-features = nix-command flakes",
    )
    root = tmp_path_factory.mktemp("demo") / "run"
    source = default_inventory()
    demo = ServedFleet(root, read_inventory(source), say=SAID.append, policies=source / "policies")
    return demo, play(demo, SAID.append)


def test_inventory_is_this_repositorys_hosts(played: tuple[ServedFleet, DemoOutcome]) -> None:
    demo, _ = played
    repo_hosts = sorted(p.name for p in (Path(__file__).parent.parent / "hosts").iterdir())
    assert demo.hosts == repo_hosts
    assert len(demo.hosts) >= 5


def test_first_publish_and_every_agent_applies(played: tuple[ServedFleet, DemoOutcome]) -> None:
    demo, outcome = played
    assert outcome.first_publish == tuple(demo.hosts)
    assert {h: r.result for h, r in outcome.first_run.items()} == dict.fromkeys(
        demo.hosts, Result.APPLIED
    )


def test_profile_change_rebuilds_only_its_hosts(played: tuple[ServedFleet, DemoOutcome]) -> None:
    demo, outcome = played
    assert 0 < len(outcome.profile_users) < len(demo.hosts)
    assert outcome.second_publish == tuple(sorted(outcome.profile_users))
    for host, result in outcome.second_run.items():
        expected = Result.APPLIED if host in outcome.profile_users else Result.UNCHANGED
        assert result.result == expected, (host, result.reason)


def test_hosts_substitute_the_pinned_system(played: tuple[ServedFleet, DemoOutcome]) -> None:
    demo, outcome = played
    assert outcome.cache_key.startswith("demo-fleet-cache-1:")
    # Every host fetched its system in step 3, the profile's users again in step 4.
    assert outcome.substituted == tuple(demo.hosts)
    for host in outcome.profile_users:
        # The deploy commit the step-4 report applied (later steps may move the branch).
        report = outcome.second_run[host].report
        assert report is not None and report.deploy_applied is not None
        applied = demo.repository().get(report.deploy_applied)
        assert isinstance(applied, pygit2.Commit)
        pinned = commits.trailers(applied.message)["System-Path"]
        assert report.system.store_path == pinned
        assert "substitute" in report.durations and "build" not in report.durations
        narinfo = demo.cache / (Path(pinned).name.split("-")[0] + ".narinfo")
        assert "Sig: demo-fleet-cache-1:" in narinfo.read_text()
    assert any(f"substitute mode: {len(demo.hosts)} hosts realised" in line for line in SAID)
    assert any("share one Nix store" in line for line in SAID)
    config = demo.agent_config(demo.hosts[0])
    assert config.mode.value == "substitute" and config.substituters == (demo.cache_url,)
    assert config.trusted_public_keys == (outcome.cache_key,)


def test_failures_are_contained(played: tuple[ServedFleet, DemoOutcome]) -> None:
    demo, outcome = played
    # The broken change fails on the build host: held back, its host never sees it.
    assert outcome.held_back == (outcome.broken,)
    assert outcome.failures[outcome.broken].result == Result.UNCHANGED
    assert any(f"{outcome.broken}: does not build" in line for line in SAID)
    head = demo.repository().revparse_single(deploy_ref(outcome.broken)).peel(pygit2.Commit)
    assert "buildFails" not in git_out(
        "show", f"{head.id}:hosts/{outcome.broken}/configuration.nix", cwd=demo.repo_dir
    )
    assert outcome.failures[outcome.unhealthy].result == Result.ROLLED_BACK


def test_attacks_through_the_server_are_refused_there(
    played: tuple[ServedFleet, DemoOutcome],
) -> None:
    demo, outcome = played
    attacker, unsigned, rolled = outcome.attacker, outcome.unsigned_victim, outcome.rollback_victim
    lines = [r.line for r in outcome.refusals]
    assert (
        lines[0]
        == f"gitops: error: host:{attacker} may use only hosts/{attacker}.git, not fleet.git"
    )
    assert lines[1].endswith(f"may use only hosts/{attacker}.git, not hosts/{unsigned}.git")
    assert "upload-pack: not our ref" in lines[2]
    assert lines[3].startswith(f"remote: gitops: deploy/{unsigned}: commit ")
    assert "is not signed by a publisher in main's fleet.yaml" in lines[3]
    assert lines[4].startswith(f"remote: gitops: deploy/{rolled}: not a fast-forward")
    # Nothing moved on the server: main is the forge's, deploy heads are the publisher's.
    fleet = pygit2.Repository(str(demo.record))
    assert git_out("rev-parse", "main", cwd=demo.forge) == str(
        fleet.references["refs/heads/main"].target
    )
    for host in (unsigned, rolled):
        ref = deploy_ref(host)
        assert git_out("rev-parse", ref, cwd=demo.repo_dir) == str(fleet.references[ref].target)


def test_the_standin_sshd_refuses_a_key_not_in_authorized_keys(
    played: tuple[ServedFleet, DemoOutcome], tmp_path: Path
) -> None:
    demo, _ = played
    keys.new_keypair(tmp_path / "stranger")
    done = subprocess.run(
        ["git", "ls-remote", demo.url(f"hosts/{demo.hosts[0]}.git")],
        env={**os.environ, "GIT_SSH_COMMAND": f"{demo.bin_dir / 'ssh'} -i {tmp_path / 'stranger'}"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode != 0
    assert "Permission denied (publickey)" in done.stderr


def test_attacks_past_the_server_are_refused_and_reported(
    played: tuple[ServedFleet, DemoOutcome],
) -> None:
    _, outcome = played
    unsigned = outcome.attacks[outcome.unsigned_victim]
    rolled = outcome.attacks[outcome.rollback_victim]
    assert unsigned.result == Result.REJECTED and "not signed" in unsigned.reason
    assert rolled.result == Result.REJECTED and "does not descend" in rolled.reason


def _reports(demo: ServedFleet, host: str) -> list[Report]:
    repo = pygit2.Repository(str(demo.record))
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


def test_server_holds_the_signed_record(played: tuple[ServedFleet, DemoOutcome]) -> None:
    demo, outcome = played
    for host in demo.hosts:
        reports = _reports(demo, host)
        assert reports[0].result == Result.APPLIED
        ids = [r.report_id for r in reports]
        assert len(ids) == len(set(ids)), "no duplicated report"
    assert _reports(demo, outcome.unsigned_victim)[-1].result == Result.REJECTED
    # The broken change never reached its host (held back at the build); the unhealthy one did.
    assert _reports(demo, outcome.broken)[-1].result == Result.APPLIED
    assert _reports(demo, outcome.unhealthy)[-1].result == Result.ROLLED_BACK
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
            cwd=demo.record,
        )
        git(
            "-c",
            f"gpg.ssh.allowedSignersFile={demo.root / f'{host}.signers'}",
            "verify-commit",
            reports_ref(host),
            cwd=demo.record,
        )


def test_a_new_machine_enrols_and_its_secret_reaches_only_it(
    played: tuple[ServedFleet, DemoOutcome], tmp_path: Path
) -> None:
    demo, outcome = played
    enrolled = outcome.enrolment
    host = enrolled.host
    assert host not in demo.hosts and enrolled.verdict == ()
    # The proposal was signed by the machine's own key, the merge by the admin.
    fleet = pygit2.Repository(str(demo.record))
    merge = fleet.get(enrolled.merge)
    assert isinstance(merge, pygit2.Commit) and str(merge.parent_ids[1]) == enrolled.proposal
    signers = tmp_path / "signers"
    signers.write_text(
        f"{host} {public_line(demo.host_keys[host])}\n"
        f"alice@example.org {demo.admin_key_path.with_name('admin.pub').read_text()}"
    )
    for commit in (enrolled.proposal, enrolled.merge):
        git("-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", commit, cwd=demo.record)
    assert not [r for r in fleet.references if r.startswith("refs/heads/enroll/")]
    # Published to it alone, applied through its own repository on the server.
    assert enrolled.published == (host,)
    assert enrolled.deploy_files == ("secrets/secrets.json", "secrets/wifi-lab.age")
    assert enrolled.result.result == Result.APPLIED, enrolled.result.reason
    assert demo.layout.host_repo(host).is_dir()
    git("-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", reports_ref(host),
        cwd=demo.record)  # fmt: skip
    for other in demo.hosts:
        tree = fleet.revparse_single(deploy_ref(other)).peel(pygit2.Tree)
        assert "secrets" not in tree, other
    # The secret arrived, 0400, and is nowhere else in plaintext; its tmpfs directory is gone.
    assert enrolled.delivered and enrolled.mode == 0o400
    assert enrolled.found == () and enrolled.objects > 100 and enrolled.store_paths >= 1
    assert not enrolled.secrets_dir.exists()
    assert not str(enrolled.secrets_dir).startswith("/run")
    # Debian's age opens the forge's copy with the admin's key; the output never shows it.
    plaintext = subprocess.run(
        ["age", "--decrypt", "-i", str(demo.admin_key_path), str(demo.repo_dir / enrolled.secret_file)],
        capture_output=True, check=True,
    ).stdout  # fmt: skip
    assert plaintext.startswith(b"psk=")
    assert SAID and not [line for line in SAID if plaintext.strip().decode() in line]
    report = _reports(demo, host)[-1]
    assert plaintext.strip().decode() not in report.to_json()


def test_a_canary_wave_halts_a_bad_change_before_the_other_hosts(
    played: tuple[ServedFleet, DemoOutcome],
) -> None:
    demo, outcome = played
    staged = outcome.waves
    assert staged is not None
    assert staged.started.status is Status.ROLLING and staged.started.current.name == "canary"
    assert staged.canary_run.result == Result.ROLLED_BACK
    assert staged.halted.status is Status.HALTED
    assert staged.halted.reason.startswith(
        f"wave canary: 1 of 1 hosts failed ({staged.canary} (rolled-back))"
    )
    assert sorted(staged.untouched) == sorted(h for h in demo.hosts if h != staged.canary)
    # The record is on the gitops server, and the site shows it.
    assert commits.ref_target(pygit2.Repository(str(demo.record)), ROLLOUT_REF) is not None
    data = json.loads((outcome.site / "rollout.json").read_text())["rollout"]
    assert (data["status"], data["wave"]) == ("halted", "canary")


def test_site_was_built(played: tuple[ServedFleet, DemoOutcome]) -> None:
    demo, outcome = played
    inventory = (outcome.site / "inventory.html").read_text()
    for host in demo.hosts:
        assert host in inventory
        assert (outcome.site / "hosts" / f"{host}.html").is_file()


def test_compliance_reflects_the_machines(played: tuple[ServedFleet, DemoOutcome]) -> None:
    import json

    _, outcome = played
    data = json.loads((outcome.site / "compliance.json").read_text())
    policies = {p["name"]: p for p in data["policies"]}
    # The laptop's owner turned password logins on; one workstation lacks automatic GC
    # (see gitops.demo.scenario.write_machine). Nothing else fails.
    assert policies["ssh-password-login-disabled"]["failing"] == ["laptop-anna"]
    assert policies["gc-timer-enabled"]["failing"] == ["media-ws-1"]
    # Every host, the one enrolled in step 7 too.
    assert policies["firewall-active"]["counts"]["pass"] == len(played[0].hosts) + 1


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
        "7. A new machine, lab-ws-1, enrols itself",
        "8. Waves",
        "9. The site",
    ):
        assert step in done.stdout
    assert "stand-ins" in done.stdout
    assert "No sshd in the demo: a stand-in ssh" in done.stdout
    assert "every host runs its agent in substitute mode" in done.stdout
    assert "gitops build: 8 changed hosts built on the build host" in done.stdout
    assert "substitute mode: 8 hosts realised the store path" in done.stdout
    assert "gitops: error: host:" in done.stdout  # the server's own refusal, shown
    assert "gitops enroll list: lab-ws-1 " in done.stdout and ": ready to accept" in done.stdout
    assert "the secret arrived: " in done.stdout
    assert "its plaintext is in none of the demo's git repositories" in done.stdout
    again = subprocess.run(
        [sys.executable, "-m", "gitops", "demo", "--dir", tmp_path / "cli-demo"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert again.returncode == 1
    assert again.stderr.strip().endswith("not empty; choose a new directory for the demo")
