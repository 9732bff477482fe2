"""Monotonic source: no publish moves a host to a main older than the one it was last
published from, whether from ``--from`` an old commit, a stale clone, a shallow CI
checkout, or the slower of two concurrent CI jobs. Through the real CLI, against a bare
server repository."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from testing.helpers import git, git_out
from testing.publishing import HOSTS, ServedFleet, served_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> ServedFleet:
    return served_fleet(tmp_path)


def _sources(fleet: ServedFleet) -> dict[str, str]:
    """The Source-Commit of every host's deploy head on the server."""
    heads = {host: fleet.head(host) for host in HOSTS}
    return {host: fleet.trailers(head)["Source-Commit"] for host, head in heads.items() if head}


def test_every_deploy_commit_carries_its_source_generation(fleet: ServedFleet) -> None:
    assert fleet.publish("--push").returncode == 0
    assert {fleet.trailers(fleet.head(h) or "")["Source-Generation"] for h in HOSTS} == {"1"}
    fleet.change_every_host("two")
    merge_parent = git_out("rev-parse", "HEAD", cwd=fleet.root)
    git("checkout", "-q", "-b", "side", "HEAD~1", cwd=fleet.root)
    git("commit", "-q", "--allow-empty", "-m", "side 2", cwd=fleet.root)
    git("commit", "-q", "--allow-empty", "-m", "side 3", cwd=fleet.root)
    git("checkout", "-q", "main", cwd=fleet.root)
    git("merge", "-q", "--no-ff", "-m", "merge side", "side", cwd=fleet.root)
    git("push", "-q", "origin", "main", cwd=fleet.root)
    assert merge_parent != git_out("rev-parse", "HEAD", cwd=fleet.root)
    fleet.change_every_host("five")
    assert fleet.publish("--push").returncode == 0
    # root 1, "two" 2, side 2 and 3, the merge 1 + max(2, 3) = 4, "five" 5
    assert {fleet.trailers(fleet.head(h) or "")["Source-Generation"] for h in HOSTS} == {"5"}


def test_publishing_an_older_main_is_refused_naming_both_commits(fleet: ServedFleet) -> None:
    old = git_out("rev-parse", "HEAD", cwd=fleet.root)
    assert fleet.publish("--push").returncode == 0
    new = fleet.change_every_host("newer")
    assert fleet.publish("--push").returncode == 0
    before = {h: fleet.head(h) for h in HOSTS}
    done = fleet.publish("--push", "--from", old)
    assert done.returncode == 1
    assert (
        f"main {old[:8]} is older than {new[:8]}, already published to admin-1, dev-ws-1, "
        "web-1, web-2; fetch main ('git fetch origin main') and publish from the newer commit"
    ) in done.stderr
    assert "Traceback" not in done.stderr
    assert {h: fleet.head(h) for h in HOSTS} == before, "the server did not move"


def test_a_stale_clone_that_lacks_the_published_source_is_told_how_to_fetch_it(
    fleet: ServedFleet, tmp_path: Path
) -> None:
    assert fleet.publish("--push").returncode == 0
    stale = fleet.clone(tmp_path / "ci-old")
    new = fleet.change_every_host("newer")
    assert fleet.publish("--push").returncode == 0
    before = {h: fleet.head(h) for h in HOSTS}
    done = fleet.publish("--push", repo=stale)
    assert done.returncode == 1
    assert f"were last published from main {new[:8]}, which this clone does not have" in (
        done.stderr
    )
    assert "run 'git fetch origin main' and publish from the newest main commit" in done.stderr
    assert {h: fleet.head(h) for h in HOSTS} == before
    git("pull", "-q", "origin", "main", cwd=stale)
    assert fleet.publish("--push", repo=stale).returncode == 0


def test_a_shallow_clone_is_refused_with_the_command_that_fixes_it(
    fleet: ServedFleet, tmp_path: Path
) -> None:
    fleet.change_every_host("two")
    shallow = tmp_path / "shallow"
    git("clone", "-q", "--depth", "1", f"file://{fleet.server}", shallow, cwd=tmp_path)
    done = fleet.publish("--push", repo=shallow)
    assert done.returncode == 1
    assert "this clone is shallow" in done.stderr
    assert "git fetch --unshallow" in done.stderr
    assert all(fleet.head(h) is None for h in HOSTS)
    git("fetch", "-q", "--unshallow", cwd=shallow)
    assert fleet.publish("--push", repo=shallow).returncode == 0


def _start_publish(fleet: ServedFleet, repo: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "gitops",
            "publish",
            "--repo",
            str(repo),
            "--key",
            str(fleet.key_path),
            "--push",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _checkout(repo: Path, sha: str) -> None:
    git("fetch", "-q", "origin", "main", cwd=repo)
    git("reset", "-q", "--hard", sha, cwd=repo)


def test_two_concurrent_publishes_never_leave_a_host_on_the_older_source(
    fleet: ServedFleet, tmp_path: Path
) -> None:
    """Two CI jobs, one on an older main, race ``publish --push`` (6 rounds): whoever
    pushes first, every host ends on the newer main, and the newer job succeeds."""
    assert fleet.publish("--push").returncode == 0
    older_ci = fleet.clone(tmp_path / "ci-older")
    newer_ci = fleet.clone(tmp_path / "ci-newer")
    for round_ in range(6):
        older = fleet.change_every_host(f"round {round_} a")
        newer = fleet.change_every_host(f"round {round_} b")
        _checkout(older_ci, older)
        _checkout(newer_ci, newer)
        # Alternate who starts first, so both orders are raced.
        first, second = (older_ci, newer_ci) if round_ % 2 else (newer_ci, older_ci)
        runs = {first: _start_publish(fleet, first), second: _start_publish(fleet, second)}
        results = {
            repo: (proc.wait(timeout=120), *proc.communicate()) for repo, proc in runs.items()
        }
        newer_code, _, newer_err = results[newer_ci]
        older_code, _, older_err = results[older_ci]
        assert newer_code == 0, f"round {round_}: {newer_err}"
        assert older_code == 0 or f"main {older[:8]} is older than {newer[:8]}" in older_err, (
            f"round {round_}: {older_err}"
        )
        assert _sources(fleet) == dict.fromkeys(HOSTS, newer), f"round {round_}"
