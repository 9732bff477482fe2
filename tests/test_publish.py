"""``gitops plan`` / ``gitops publish``: per-host trees, signed fast-forward commits, only
changed hosts, atomic pushes that roll back locally when refused."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pygit2
import pytest

from gitops.demo import standin
from gitops.errors import GitopsError
from gitops.protocol import deploy_ref
from gitops.publish import plan as publish
from gitops.trust import commits, keys
from testing.helpers import commit_all, fleet_repo, git, git_out, gitops, push_to_bare

HOSTS = {
    "web-1": ["server"],
    "web-2": ["server"],
    "dev-ws-1": ["workstation", "developer"],
    "admin-1": ["workstation"],
}


@dataclass
class Fleet:
    root: Path
    key_path: Path
    signers: Path
    remote: Path

    @property
    def repo(self) -> pygit2.Repository:
        return pygit2.Repository(str(self.root))

    def head(self, host: str, repo: Path | None = None) -> str | None:
        result = git(
            "rev-parse", "--verify", "-q", deploy_ref(host), cwd=repo or self.root, check=False
        )
        return result.stdout.strip() or None


@pytest.fixture
def fleet(tmp_path: Path) -> Fleet:
    root = tmp_path / "fleet"
    fleet_repo(root, HOSTS, publisher_key=tmp_path / "publisher", machines=tmp_path / "machines")
    commit_all(root, "Initial fleet")
    signers = tmp_path / "publishers.allowed_signers"
    signers.write_text(gitops("keys", "allowed-signers", "--repo", root).stdout)
    remote = push_to_bare(root, tmp_path / "server.git")
    return Fleet(root, tmp_path / "publisher", signers, remote)


def _publish(fleet: Fleet, *extra: str) -> subprocess.CompletedProcess[str]:
    return gitops("publish", "--repo", fleet.root, "--key", fleet.key_path, *extra)


def _tree_paths(repo: pygit2.Repository, rev: str) -> set[str]:
    commit = commits.resolve_commit(repo, rev)
    return set(publish._all_paths(commit.tree))


def test_first_publish_writes_one_signed_branch_per_host(fleet: Fleet) -> None:
    done = _publish(fleet)
    assert done.returncode == 0, done.stderr
    assert "published 4 deploy commits" in done.stdout
    main = git_out("rev-parse", "main", cwd=fleet.root)
    for host in HOSTS:
        head = fleet.head(host)
        assert head is not None
        verify = git(
            "-c",
            f"gpg.ssh.allowedSignersFile={fleet.signers}",
            "verify-commit",
            head,
            cwd=fleet.root,
            check=False,
        )
        assert verify.returncode == 0, verify.stderr
        trailers = commits.trailers(git_out("log", "-1", "--format=%B", head, cwd=fleet.root))
        assert trailers == {"Source-Commit": main, "Source-Generation": "1", "Gitops-Host": host}
    assert _tree_paths(fleet.repo, deploy_ref("dev-ws-1")) == {
        "flake.nix",
        "modules/default.nix",
        "hosts/dev-ws-1/host.yaml",
        "hosts/dev-ws-1/configuration.nix",
        "profiles/workstation.nix",
        "profiles/developer.nix",
    }
    assert "hosts/web-1/host.yaml" not in _tree_paths(fleet.repo, deploy_ref("web-2"))
    assert "fleet.yaml" not in _tree_paths(fleet.repo, deploy_ref("web-2"))


def test_only_hosts_whose_tree_changed_get_a_commit(fleet: Fleet) -> None:
    assert _publish(fleet).returncode == 0
    before = {h: fleet.head(h) for h in HOSTS}
    again = _publish(fleet)
    assert "published 0 deploy commits" in again.stdout
    assert {h: fleet.head(h) for h in HOSTS} == before
    (fleet.root / "profiles" / "workstation.nix").write_text(
        standin.profile_file("workstation", ["firefox"])
    )
    commit_all(fleet.root, "workstation: add firefox (#7)")
    planned = gitops("plan", "--repo", fleet.root)
    assert planned.returncode == 0
    assert "2 of 4 hosts would get a new deploy commit" in planned.stdout
    assert "admin-1 (changed): profiles/workstation.nix" in planned.stdout
    assert {h: fleet.head(h) for h in HOSTS} == before, "plan must write nothing"
    done = _publish(fleet)
    assert "published 2 deploy commits" in done.stdout
    for host in HOSTS:
        if "workstation" in HOSTS[host]:
            new = fleet.head(host)
            assert new is not None
            assert new != before[host]
            assert (
                git_out("rev-parse", f"{new}^", cwd=fleet.root) == before[host]
            )  # fast-forward chain
            body = git_out("log", "-1", "--format=%B", new, cwd=fleet.root)
            assert body.startswith(f"deploy {host}: workstation: add firefox (#7)")
            assert "Changed: profiles/workstation.nix" in body
        else:
            assert fleet.head(host) == before[host]


def test_plan_json_lists_paths(fleet: Fleet) -> None:
    done = gitops("plan", "--repo", fleet.root, "--json", "--host", "web-1")
    assert done.returncode == 0
    import json

    data = json.loads(done.stdout)
    assert [h["host"] for h in data["hosts"]] == ["web-1"]
    assert "profiles/server.nix" in data["hosts"][0]["paths"]
    unknown = gitops("plan", "--repo", fleet.root, "--host", "nope")
    assert unknown.returncode == 1
    assert (
        unknown.stderr.strip()
        == "gitops: error: unknown host(s): nope; hosts are the directories in hosts/"
    )


def test_key_that_is_not_a_publisher_is_refused(fleet: Fleet, tmp_path: Path) -> None:
    keys.new_keypair(tmp_path / "stranger")
    done = gitops("publish", "--repo", fleet.root, "--key", tmp_path / "stranger")
    assert done.returncode == 1
    assert "is not a publisher in fleet.yaml" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
    assert all(fleet.head(h) is None for h in HOSTS)


def test_invalid_fleet_at_main_publishes_nothing(fleet: Fleet) -> None:
    (fleet.root / "hosts" / "web-1" / "host.yaml").write_text("profiles: [missing]\n")
    commit_all(fleet.root, "break web-1")
    done = _publish(fleet)
    assert done.returncode == 1
    assert "is invalid" in done.stderr and "unknown profile 'missing'" in done.stderr
    assert all(fleet.head(h) is None for h in HOSTS)


def test_push_is_atomic_and_rolls_back_locally_when_refused(fleet: Fleet) -> None:
    hook = fleet.remote / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\nwhile read old new ref; do\n"
        '  if [ "$ref" = refs/heads/deploy/web-2 ]; then echo "web-2 is frozen" >&2; exit 1; fi\n'
        "done\n"
    )
    hook.chmod(0o755)
    done = _publish(fleet, "--push")
    assert done.returncode == 1
    assert "refused the push, so nothing was published (no local ref moved)" in done.stderr
    assert all(fleet.head(h, fleet.remote) is None for h in HOSTS), "atomic: nothing landed"
    assert all(fleet.head(h) is None for h in HOSTS), "no local ref moved"
    hook.unlink()
    ok = _publish(fleet, "--push")
    assert ok.returncode == 0, ok.stderr
    assert all(fleet.head(h, fleet.remote) == fleet.head(h) for h in HOSTS)


def test_push_refuses_rewound_or_unsigned_remote_heads(fleet: Fleet, tmp_path: Path) -> None:
    assert _publish(fleet, "--push").returncode == 0
    (fleet.root / "profiles" / "server.nix").write_text(standin.profile_file("server", ["nginx"]))
    commit_all(fleet.root, "server: nginx")
    assert _publish(fleet, "--push").returncode == 0
    # Someone rewinds web-1 on the server to its first commit.
    first = git_out("rev-list", "--max-parents=0", deploy_ref("web-1"), cwd=fleet.root)
    git("push", "-q", "--force", "origin", f"{first}:{deploy_ref('web-1')}", cwd=fleet.root)
    (fleet.root / "profiles" / "server.nix").write_text(
        standin.profile_file("server", ["nginx", "acme"])
    )
    commit_all(fleet.root, "server: acme")
    done = _publish(fleet, "--push")
    assert done.returncode == 1
    assert "1 host not published (web-1)" in done.stderr
    assert "deploy/web-1 on origin was rewound or rewritten" in done.stderr
    assert fleet.head("web-1", fleet.remote) == first, "nothing built on the rewound branch"
    assert fleet.head("web-2", fleet.remote) == fleet.head("web-2"), "web-2 was published"
    # Put it back, then someone pushes an unsigned commit on web-2.
    git(
        "push",
        "-q",
        "--force",
        "origin",
        f"{deploy_ref('web-1')}:{deploy_ref('web-1')}",
        cwd=fleet.root,
    )
    tree = git_out("rev-parse", f"{deploy_ref('web-2')}^{{tree}}", cwd=fleet.root)
    unsigned = git_out(
        "commit-tree", tree, "-p", deploy_ref("web-2"), "-m", "sneaky", cwd=fleet.root
    )
    git("push", "-q", "origin", f"{unsigned}:{deploy_ref('web-2')}", cwd=fleet.root)
    (fleet.root / "profiles" / "server.nix").write_text(standin.profile_file("server", ["acme"]))
    commit_all(fleet.root, "server: only acme")
    done = _publish(fleet, "--push")
    assert done.returncode == 1
    assert "deploy/web-2 on origin: its head is not signed by a publisher" in done.stderr
    assert fleet.head("web-2", fleet.remote) == unsigned


def test_expires_trailer(fleet: Fleet) -> None:
    path = fleet.root / "fleet.yaml"
    path.write_text(path.read_text() + "deploy:\n  expires_after: 7d\n")
    commit_all(fleet.root, "deploy commits expire after a week")
    assert _publish(fleet).returncode == 0
    trailers = commits.trailers(
        git_out("log", "-1", "--format=%B", deploy_ref("web-1"), cwd=fleet.root)
    )
    assert "Expires" in trailers


def test_render_is_deterministic_and_cheap(fleet: Fleet) -> None:
    repo = fleet.repo
    plan_a = publish.make_plan(repo, "main")
    plan_b = publish.make_plan(repo, "main")
    assert [h.new_tree for h in plan_a.hosts] == [h.new_tree for h in plan_b.hosts]
    with pytest.raises(GitopsError, match="no such revision"):
        publish.make_plan(repo, "does-not-exist")


def test_plan_json_into_a_closed_pipe_stops_quietly(fleet: Fleet) -> None:
    """``gitops plan --json | head -1``: the reader goes away before we write."""
    reader, writer = os.pipe()
    os.close(reader)
    try:
        done = subprocess.run(
            [sys.executable, "-m", "gitops", "plan", "--repo", str(fleet.root), "--json"],
            stdout=writer,
            stderr=subprocess.PIPE,
            text=True,
            check=False,
        )
    finally:
        os.close(writer)
    assert done.stderr == ""
    assert done.returncode == 141
