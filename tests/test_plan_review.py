"""``gitops plan`` for a reviewer: in a CI checkout that fetched only main, with
comment-only edits, and as a pull-request comment (``--format markdown``)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest

from gitops.commands.plan_cmd import MARKER
from gitops.demo import standin
from testing.env import needs_nix
from testing.helpers import commit_all, fleet_repo, git, gitops, push_to_bare

HOSTS = {
    "web-1": ["server"],
    "web-2": ["server"],
    "dev-ws-1": ["workstation", "developer"],
    "admin-1": ["workstation"],
}


@pytest.fixture
def published(tmp_path: Path) -> tuple[Path, Path]:
    """A fleet published to a bare server repository: (the publisher's clone, the server)."""
    root = tmp_path / "fleet"
    fleet_repo(root, HOSTS, publisher_key=tmp_path / "publisher", machines=tmp_path / "machines")
    commit_all(root, "Initial fleet")
    server = push_to_bare(root, tmp_path / "server.git")
    done = gitops("publish", "--repo", root, "--key", tmp_path / "publisher", "--push")
    assert done.returncode == 0, done.stderr
    return root, server


def _ci_checkout(server: Path, where: Path) -> Path:
    """What actions/checkout does: main only, one commit deep, no other branch."""
    git(
        "clone",
        "-q",
        "--depth",
        "1",
        "--single-branch",
        "-b",
        "main",
        f"file://{server}",
        where,
        cwd=where.parent,
    )
    return where


def _edit(root: Path, path: str, text: str, message: str) -> None:
    (root / path).write_text(text)
    commit_all(root, message)


def test_a_ci_checkout_says_in_one_line_what_to_fetch_and_the_fetch_fixes_it(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    _, server = published
    ci = _ci_checkout(server, tmp_path / "ci")
    blind = gitops("plan", "--repo", ci, "--from", "HEAD")
    assert blind.returncode == 0, blind.stderr
    assert "4 of 4 hosts would get a new deploy commit" in blind.stdout
    notes = [line for line in blind.stdout.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1
    assert "--remote origin" in notes[0]
    command = notes[0].split("run: ", 1)[1]
    git(*shlex.split(command)[1:], cwd=ci)  # exactly what the note says
    fetched = gitops("plan", "--repo", ci, "--from", "HEAD")
    assert "0 of 4 hosts would get a new deploy commit" in fetched.stdout
    assert "note:" not in fetched.stdout


def test_plan_remote_fetches_the_deploy_heads_it_needs(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    root, server = published
    ci = _ci_checkout(server, tmp_path / "ci")
    _edit(
        ci,
        "profiles/workstation.nix",
        standin.profile_file("workstation", ["firefox"]),
        "workstation: firefox",
    )
    done = gitops("plan", "--repo", ci, "--from", "HEAD", "--remote", "origin", "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data["heads_from"] == "origin"
    assert data["note"] is None
    verdicts = {h["host"]: h["verdict"] for h in data["hosts"]}
    assert verdicts == {
        "admin-1": "changed",
        "dev-ws-1": "changed",
        "web-1": "unchanged",
        "web-2": "unchanged",
    }
    # A host the server has no branch for is new, whatever this clone holds.
    git("push", "-q", str(server), ":deploy/web-1", cwd=root)
    again = json.loads(
        gitops("plan", "--repo", ci, "--from", "HEAD", "--remote", "origin", "--json").stdout
    )
    assert {h["host"]: h["verdict"] for h in again["hosts"]}["web-1"] == "new"


def test_plan_remote_names_an_unreachable_remote(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    root, _ = published
    done = gitops("plan", "--repo", root, "--remote", str(tmp_path / "nowhere.git"))
    assert done.returncode == 1
    assert done.stderr.startswith("gitops: error: cannot reach ")
    assert len(done.stderr.strip().splitlines()) == 1


@needs_nix
def test_a_comment_only_edit_changes_no_hosts_system(published: tuple[Path, Path]) -> None:
    root, _ = published
    server_nix = (root / "profiles/server.nix").read_text()
    reflowed = "# Servers: reviewed by ops.\n" + server_nix.replace(
        "  packages", "\n  /* what */ packages   "
    )
    _edit(root, "profiles/server.nix", reflowed, "server: comments")
    done = gitops("plan", "--repo", root)
    assert done.returncode == 0, done.stderr
    assert (
        "2 of 4 hosts would get a new deploy commit, 2 of them for comments or formatting only"
        in done.stdout
    )
    assert (
        "web-1 (comments or formatting only): profiles/server.nix; same parsed .nix" in done.stdout
    )
    data = json.loads(gitops("plan", "--repo", root, "--json").stdout)
    by_host = {h["host"]: h for h in data["hosts"]}
    assert by_host["web-1"]["changes_system"] is False
    assert by_host["web-1"]["formatting_only_paths"] == ["profiles/server.nix"]
    assert data["nix_normalised"] is True
    # A real change next to a comment is a change.
    _edit(
        root,
        "profiles/server.nix",
        "# still a comment\n" + standin.profile_file("server", ["nginx"]),
        "server: nginx",
    )
    changed = json.loads(gitops("plan", "--repo", root, "--json").stdout)
    assert {h["host"]: h["verdict"] for h in changed["hosts"]}["web-2"] == "changed"


@needs_nix
def test_markdown_groups_hosts_for_a_pull_request_comment(published: tuple[Path, Path]) -> None:
    root, _ = published
    _edit(
        root,
        "profiles/workstation.nix",
        standin.profile_file("workstation", ["firefox"]),
        "workstation: firefox",
    )
    server_nix = (root / "profiles/server.nix").read_text()
    _edit(root, "profiles/server.nix", "# only a comment\n" + server_nix, "server: comment")
    done = gitops("plan", "--repo", root, "--format", "markdown")
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert text.startswith(MARKER + "\n### gitops plan\n")
    assert "**2 of 4 hosts change** with `" in text
    assert "| changed | 2 |" in text
    assert "| new | 0 |" in text
    assert "| comments or formatting only | 2 |" in text
    assert "| unchanged | 0 |" in text
    # The two workstations changed the same file: one collapsible group.
    assert (
        "<details><summary><b>admin-1</b>, <b>dev-ws-1</b>: 1 file</summary>\n\n"
        "- `profiles/workstation.nix`\n\n</details>"
    ) in text
    assert "#### Comments or formatting only: 2 hosts" in text
    assert text.index("#### Changed") < text.index("#### Comments or formatting only")
    assert "Unchanged:" not in text  # no unchanged hosts, no empty section
    assert "note:" not in text.lower()


def test_markdown_in_a_ci_checkout_carries_the_fetch_note(
    published: tuple[Path, Path], tmp_path: Path
) -> None:
    _, server = published
    ci = _ci_checkout(server, tmp_path / "ci")
    text = gitops("plan", "--repo", ci, "--from", "HEAD", "--format", "markdown").stdout
    assert "> **Note:** this clone has no deploy branches" in text
    assert "#### New: 4 hosts" in text
