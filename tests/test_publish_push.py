"""Pushing many deploy branches with a command line that does not grow with them:
``transport.push_commits`` stages the refs in a throwaway repository and pushes one
wildcard refspec, atomically, writing nothing in the publisher's repository."""

from __future__ import annotations

from pathlib import Path

import pygit2

from gitops.protocol import deploy_ref
from gitops.system import transport
from testing.helpers import commit_all, git, git_out, init_repo

HOSTS = [f"host-{n:03d}" for n in range(100)]


def _repo_with_deploy_commits(tmp_path: Path) -> tuple[Path, str, dict[str, str]]:
    """A repository with main (one directory per host) and one root commit per host
    reusing main's host directory, as deploy commits do; nothing on any ref."""
    root = init_repo(tmp_path / "fleet")
    for host in HOSTS:
        (root / "hosts" / host).mkdir(parents=True)
        (root / "hosts" / host / "host.yaml").write_text(f"name: {host}\n")
    main = commit_all(root, "fleet")
    repo = pygit2.Repository(str(root))
    hosts_tree = repo.revparse_single("main:hosts")
    assert isinstance(hosts_tree, pygit2.Tree)
    who = pygit2.Signature("p", "p@example.org", 0, 0)
    commits = {}
    for host in HOSTS:
        inner = repo.TreeBuilder()
        inner.insert(host, hosts_tree[host].id, pygit2.enums.FileMode.TREE)
        top = repo.TreeBuilder()
        top.insert("hosts", inner.write(), pygit2.enums.FileMode.TREE)
        oid = repo.create_commit(None, who, who, f"deploy {host}", top.write(), [])
        commits[deploy_ref(host)] = str(oid)
    return root, main, commits


def _server(tmp_path: Path, root: Path) -> Path:
    server = tmp_path / "server.git"
    git("init", "-q", "--bare", "-b", "main", server, cwd=tmp_path)
    git("push", "-q", str(server), "main", cwd=root)
    return server


def test_hundreds_of_refs_land_atomically_and_nothing_is_written_locally(tmp_path: Path) -> None:
    root, main, commits = _repo_with_deploy_commits(tmp_path)
    server = _server(tmp_path, root)
    refs_before = git_out("for-each-ref", cwd=root)
    # A remote reached through the repository's own configuration (insteadOf): the
    # throwaway repository must see it too.
    git("config", f"url.{tmp_path}/.insteadOf", "here:", cwd=root)
    git("remote", "add", "origin", "here:server.git", cwd=root)
    result = transport.push_commits(root / ".git", "origin", commits, atomic=True, outside=main)
    assert result.ok, result.message
    assert len(result.statuses) == len(HOSTS)
    listed = git_out(
        "for-each-ref", "--format=%(refname) %(objectname)", "refs/heads/deploy", cwd=server
    )
    assert dict(line.split() for line in listed.splitlines()) == commits
    assert git("fsck", "--connectivity-only", "--no-dangling", cwd=server).returncode == 0
    assert git_out("for-each-ref", cwd=root) == refs_before, "no staging or tracking refs"


def test_objects_the_server_has_through_main_are_not_sent(tmp_path: Path) -> None:
    root, main, commits = _repo_with_deploy_commits(tmp_path)
    sizes = {}
    for outside in (None, main):
        server = tmp_path / f"server-{outside is not None}.git"
        git("init", "-q", "--bare", "-b", "main", server, cwd=tmp_path)
        git("push", "-q", str(server), "main", cwd=root)
        before = int(git_out("count-objects", "-v", cwd=server).split("in-pack: ")[1].split()[0])
        result = transport.push_commits(root / ".git", str(server), commits, outside=outside)
        assert result.ok, result.message
        assert git("fsck", "--connectivity-only", "--no-dangling", cwd=server).returncode == 0
        after = int(git_out("count-objects", "-v", cwd=server).split("in-pack: ")[1].split()[0])
        sizes[outside is not None] = after - before
    # Per host: commit, root tree, hosts/ tree; with the hint not its host directory
    # and host.yaml again, which main already brought.
    assert sizes == {False: 5 * len(HOSTS), True: 3 * len(HOSTS)}


def test_a_refused_ref_refuses_the_whole_atomic_push(tmp_path: Path) -> None:
    root, main, commits = _repo_with_deploy_commits(tmp_path)
    server = _server(tmp_path, root)
    hook = server / "hooks" / "pre-receive"
    hook.write_text(
        "#!/bin/sh\nwhile read old new ref; do\n"
        '  [ "$ref" = refs/heads/deploy/host-007 ] && { echo frozen >&2; exit 1; }\n'
        "done\nexit 0\n"
    )
    hook.chmod(0o755)
    result = transport.push_commits(root / ".git", str(server), commits, atomic=True, outside=main)
    assert not result.ok
    assert not git_out("for-each-ref", "refs/heads/deploy", cwd=server)
