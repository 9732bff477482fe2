"""``gitops publish --recover``: after a legitimate rewrite of the server's history (a
restore from backup), one command writes a publisher-signed commit on top of what the
server holds that names the deploy commit the host applied (``Recovers``); publishing
then goes on from it, from the admin's clone and from a fresh CI clone."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.demo import standin
from testing.helpers import git, git_out, gitops
from testing.publishing import ServedFleet, served_fleet


@dataclass(frozen=True)
class Restored:
    fleet: ServedFleet
    backup: str  # web-1's head in the backup the server was restored from
    applied: str  # what web-1 applied before the restore (gone from the server)


def _servers(fleet: ServedFleet, packages: list[str]) -> str:
    return fleet.change(
        "profiles/server.nix", standin.profile_file("server", packages), "server change"
    )


@pytest.fixture
def restored(tmp_path: Path) -> Restored:
    fleet = served_fleet(tmp_path)
    assert fleet.publish("--push").returncode == 0
    backup = fleet.head("web-1")
    _servers(fleet, ["nginx"])
    assert fleet.publish("--push").returncode == 0
    applied = fleet.head("web-1")
    assert backup is not None and applied is not None
    fleet.report_applied("web-1", applied)
    fleet.force("web-1", backup)  # restored from last week's backup
    git("gc", "-q", "--prune=now", cwd=fleet.server)
    return Restored(fleet, backup, applied)


def _signers(fleet: ServedFleet, tmp_path: Path) -> Path:
    path = tmp_path / "publishers.allowed_signers"
    path.write_text(gitops("keys", "allowed-signers", "--repo", fleet.root).stdout)
    return path


def test_recover_writes_a_signed_commit_naming_what_the_host_applied(
    restored: Restored, tmp_path: Path
) -> None:
    fleet = restored.fleet
    done = fleet.publish("--recover", "--host", "web-1", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    head = fleet.head("web-1")
    assert result == {
        "host": "web-1",
        "commit": head,
        "recovers": restored.applied,
        "parent": restored.backup,
    }
    assert head is not None
    assert git_out("rev-parse", f"{head}^", cwd=fleet.server) == restored.backup
    main = git_out("rev-parse", "main", cwd=fleet.server)
    assert fleet.trailers(head) == {
        "Source-Commit": main,
        "Source-Generation": "2",
        "Gitops-Host": "web-1",
        "Recovers": restored.applied,
    }
    verify = git(
        "-c",
        f"gpg.ssh.allowedSignersFile={_signers(fleet, tmp_path)}",
        "verify-commit",
        head,
        cwd=fleet.server,
        check=False,
    )
    assert verify.returncode == 0, verify.stderr


def test_publishing_goes_on_from_the_recovery_commit(restored: Restored, tmp_path: Path) -> None:
    fleet = restored.fleet
    assert fleet.publish("--recover", "--host", "web-1").returncode == 0
    recovery = fleet.head("web-1")
    _servers(fleet, ["nginx", "acme"])
    # A fresh CI clone: web-1's report still names the lost commit; the recovery covers it.
    ci = fleet.publish("--push", repo=fleet.clone(tmp_path / "ci"))
    assert ci.returncode == 0, ci.stderr
    after_ci = fleet.head("web-1")
    assert git_out("rev-parse", f"{after_ci}^", cwd=fleet.server) == recovery
    _servers(fleet, ["acme"])
    admin = fleet.publish("--push")
    assert admin.returncode == 0, admin.stderr
    assert git_out("rev-parse", f"{fleet.head('web-1')}^", cwd=fleet.server) == after_ci


def test_recover_reads_applied_from_the_flag_when_the_host_never_reported(
    tmp_path: Path,
) -> None:
    fleet = served_fleet(tmp_path)
    assert fleet.publish("--push").returncode == 0
    backup = fleet.head("web-1")
    _servers(fleet, ["nginx"])
    assert fleet.publish("--push").returncode == 0
    applied = fleet.head("web-1")
    assert backup is not None and applied is not None
    fleet.force("web-1", backup)
    asked = fleet.publish("--recover", "--host", "web-1")
    assert asked.returncode == 1
    assert "no report on reports/web-1 signed by web-1's key" in asked.stderr
    assert "pass --applied <sha>" in asked.stderr
    short = fleet.publish("--recover", "--host", "web-1", "--applied", applied[:8])
    assert short.returncode == 1
    assert "give the full 40-character id" in short.stderr
    done = fleet.publish("--recover", "--host", "web-1", "--applied", applied)
    assert done.returncode == 0, done.stderr
    assert fleet.trailers(fleet.head("web-1") or "")["Recovers"] == applied


def test_a_report_signed_by_another_key_does_not_count(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    assert fleet.publish("--push").returncode == 0
    backup = fleet.head("web-1")
    _servers(fleet, ["nginx"])
    assert fleet.publish("--push").returncode == 0
    applied = fleet.head("web-1")
    assert backup is not None and applied is not None
    fleet.report_applied("web-1", applied, key=ed25519.Ed25519PrivateKey.generate())
    fleet.force("web-1", backup)
    done = fleet.publish("--recover", "--host", "web-1")
    assert done.returncode == 1
    assert "ignored, not signed by web-1's key" in done.stderr
    assert "pass --applied <sha>" in done.stderr
    assert fleet.head("web-1") == backup


def test_recover_refuses_when_nothing_was_lost(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    assert fleet.publish("--push").returncode == 0
    head = fleet.head("web-1")
    assert head is not None
    fleet.report_applied("web-1", head)
    done = fleet.publish("--recover", "--host", "web-1")
    assert done.returncode == 1
    assert f"nothing to recover: deploy/web-1 on origin contains {head[:8]}" in done.stderr
    assert fleet.head("web-1") == head


def test_recover_takes_exactly_one_host(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path)
    for hosts in ([], ["--host", "web-1", "--host", "web-2"]):
        done = fleet.publish("--recover", *hosts)
        assert done.returncode == 2
        assert "--recover needs exactly one --host" in done.stderr
    alone = fleet.publish("--applied", "0" * 40)
    assert alone.returncode == 2
    assert "--applied goes with --recover" in alone.stderr
