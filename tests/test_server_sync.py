"""``gitops server init`` and ``sync`` through the real CLI: the server directory follows
main (hosts added, removed, rekeyed, broken), twice is the same as once, and a mirrored
main never rewinds. Also ``serve``'s answers to requests it does not serve, run as sshd
would run it (SSH_ORIGINAL_COMMAND), and the hooks as git runs them."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest
import yaml

from gitops.demo.scenario import DemoFleet
from gitops.protocol import MAIN_REF, Report, Result, deploy_ref, reports_ref
from gitops.report_commits import create_report_commit
from gitops.server.layout import Layout
from gitops.server.sync import sshd_snippet
from gitops.trust import commits, keys
from testing.helpers import git, gitops, published_demo

HOSTS = {"web-1": ["server"], "web-2": ["server"], "db-1": ["server"]}


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


@pytest.fixture
def mirrored(demo: DemoFleet, tmp_path: Path) -> Layout:
    """A server whose main is mirrored from the demo's plain repository (the "forge")."""
    done = gitops("server", "init", "--dir", tmp_path / "srv", "--repo", demo.server, "--mirror")
    assert done.returncode == 0, done.stderr
    assert "added db-1, web-1, web-2" in done.stdout
    return Layout(tmp_path / "srv")


def sync(layout: Layout) -> subprocess.CompletedProcess[str]:
    done = gitops("server", "sync", "--dir", layout.root)
    assert done.returncode == 0, done.stderr
    return done


def key_lines(layout: Layout) -> dict[str, str]:
    """identity → key, from the generated authorized_keys."""
    found = {}
    for line in layout.authorized_keys.read_text().splitlines():
        if line.startswith("command="):
            identity = line.split("--as ", 1)[1].split('"', 1)[0]
            found[identity] = " ".join(line.split('",restrict ', 1)[1].split()[:2])
    return found


def head(repo: Path, ref: str) -> str | None:
    target = commits.ref_target(pygit2.Repository(str(repo)), ref)
    return None if target is None else str(target)


def snapshot(layout: Layout) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every generated file: an idle sync must not touch one."""
    files = [layout.authorized_keys, layout.sshd_snippet, layout.fleet / "config"]
    files += sorted(layout.hooks_dir.iterdir()) + sorted(layout.hosts_dir.glob("*.git/config"))
    return {str(f): (f.stat().st_ino, f.stat().st_mtime_ns) for f in files}


# -- init and sync ---------------------------------------------------------------------------


def test_init_makes_one_repository_and_one_key_per_host(demo: DemoFleet, mirrored: Layout) -> None:
    assert sorted(p.name for p in mirrored.hosts_dir.iterdir()) == [
        "db-1.git",
        "web-1.git",
        "web-2.git",
    ]
    for host in HOSTS:
        # Each host's repository holds its own deploy branch and nothing else.
        assert head(mirrored.host_repo(host), deploy_ref(host)) == head(
            demo.server, deploy_ref(host)
        )
        refs = list(pygit2.Repository(str(mirrored.host_repo(host))).references)
        assert refs == [deploy_ref(host)]
    lines = key_lines(mirrored)
    assert set(lines) == {
        "publisher:publisher@example.org",
        "host:db-1",
        "host:web-1",
        "host:web-2",
    }
    host_yaml = yaml.safe_load((demo.repo_dir / "hosts" / "web-1" / "host.yaml").read_text())
    assert lines["host:web-1"] == " ".join(host_yaml["key"].split()[:2])
    assert all(
        line.startswith('command="') and '",restrict ssh-' in line
        for line in mirrored.authorized_keys.read_text().splitlines()[1:]
    )
    assert mirrored.authorized_keys.stat().st_mode & 0o777 == 0o600
    assert f"AuthorizedKeysFile {mirrored.authorized_keys}" in mirrored.sshd_snippet.read_text()


def test_a_second_sync_changes_nothing(mirrored: Layout) -> None:
    before = snapshot(mirrored)
    done = sync(mirrored)
    assert "3 hosts; no host added, removed or rekeyed" in done.stdout
    assert "authorized_keys rewritten" not in done.stdout
    assert "brought up to date" not in done.stdout
    assert snapshot(mirrored) == before


def test_sync_follows_main_enrol_remove_rekey_and_a_broken_host_file(
    demo: DemoFleet, mirrored: Layout, tmp_path: Path
) -> None:
    # A report that reached db-1's repository but not fleet.git (say the fan-in was cut off).
    db1 = pygit2.Repository(str(mirrored.host_repo("db-1")))
    report = Report(
        host="db-1",
        time=datetime.now(UTC).replace(microsecond=0),
        agent_version="t",
        result=Result.UNCHANGED,
        reason="last words",
        report_id="r-1",
    )
    last = create_report_commit(db1, report, parent=None, key=demo.host_keys["db-1"])
    db1.references.create(reports_ref("db-1"), last)
    # Main changes on the forge: new-1 joins, db-1 leaves, web-2 gets a new key, and
    # someone breaks web-1's host.yaml.
    keys.new_keypair(tmp_path / "new-1", "root@new-1")
    keys.new_keypair(tmp_path / "web-2-new", "root@web-2")
    repo = demo.repo_dir
    (repo / "hosts" / "new-1").mkdir()
    new_key = (tmp_path / "new-1.pub").read_text().strip()
    (repo / "hosts" / "new-1" / "host.yaml").write_text(f"key: {new_key}\nprofiles: [server]\n")
    git("rm", "-q", "-r", "hosts/db-1", cwd=repo)
    web2 = yaml.safe_load((repo / "hosts" / "web-2" / "host.yaml").read_text())
    web2["key"] = (tmp_path / "web-2-new.pub").read_text().strip()
    (repo / "hosts" / "web-2" / "host.yaml").write_text(yaml.safe_dump(web2))
    (repo / "hosts" / "web-1" / "host.yaml").write_text("key: [unclosed\n")
    demo.merge_change({}, "enrol new-1, retire db-1, rekey web-2")

    done = sync(mirrored)

    assert "added new-1" in done.stdout and "removed db-1" in done.stdout
    assert "new key for host:web-2" in done.stdout
    assert "warning:" in done.stdout and "hosts/web-1/host.yaml" in done.stdout
    lines = key_lines(mirrored)
    assert set(lines) == {"publisher:publisher@example.org", "host:new-1", "host:web-2"}
    assert lines["host:web-2"] == " ".join(web2["key"].split()[:2])
    # web-1 keeps its repository (a broken file is fixed by the next pull request), but
    # nobody can log in as web-1 until it is.
    assert mirrored.host_repo("web-1").is_dir() and mirrored.host_repo("new-1").is_dir()
    # db-1's repository is retired, and its last report is kept in fleet.git.
    assert not mirrored.host_repo("db-1").exists()
    assert (mirrored.retired_dir / "db-1.git").is_dir()
    assert head(mirrored.fleet, reports_ref("db-1")) == str(last)
    assert head(mirrored.fleet, MAIN_REF) == head(demo.server, MAIN_REF)


def test_a_mirrored_main_is_never_rewound(demo: DemoFleet, mirrored: Layout) -> None:
    before = head(mirrored.fleet, MAIN_REF)
    git("commit", "-q", "--amend", "-m", "rewritten history", cwd=demo.repo_dir)
    git("push", "-q", "--force", "origin", "main", cwd=demo.repo_dir)
    done = gitops("server", "sync", "--dir", mirrored.root)
    assert done.returncode == 1
    assert done.stderr.startswith(f"gitops: error: cannot mirror main from {demo.server}")
    assert "never rewritten" in done.stderr and len(done.stderr.splitlines()) == 1
    assert head(mirrored.fleet, MAIN_REF) == before


def test_init_refuses_an_existing_server_and_a_source_without_main(
    demo: DemoFleet, mirrored: Layout, tmp_path: Path
) -> None:
    again = gitops("server", "init", "--dir", mirrored.root, "--repo", demo.server)
    assert again.returncode == 1 and "already a gitops server" in again.stderr
    empty = tmp_path / "empty.git"
    git("init", "-q", "--bare", empty, cwd=tmp_path)
    none = gitops("server", "init", "--dir", tmp_path / "srv2", "--repo", empty)
    assert none.returncode == 1 and "has no main branch" in none.stderr
    assert not (tmp_path / "srv2" / "fleet.git").exists()
    nothing = gitops("server", "sync", "--dir", tmp_path)
    assert nothing.returncode == 1 and "not a gitops server directory" in nothing.stderr


def test_init_refuses_a_bad_admin_key(demo: DemoFleet, tmp_path: Path) -> None:
    (tmp_path / "bad.pub").write_text("ssh-ed25519 not-base64!\n")
    done = gitops(
        "server", "init", "--dir", tmp_path / "srv", "--repo", demo.server,
        "--admin", f"alice@example.org={tmp_path / 'bad.pub'}",
    )  # fmt: skip
    assert done.returncode == 1 and "not an ssh public key" in done.stderr
    assert len(done.stderr.splitlines()) == 1


# -- serve, as sshd runs it ------------------------------------------------------------------


def serve(layout: Layout, identity: str, command: str | None) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_ORIGINAL_COMMAND"}
    if command is not None:
        env["SSH_ORIGINAL_COMMAND"] = command
    return gitops("server", "serve", "--dir", layout.root, "--as", identity, environ=env, input="")


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (None, "no shell is offered"),
        ("sh -c 'cat /etc/passwd'", "only git-upload-pack and git-receive-pack are served"),
        ("git-upload-archive 'hosts/web-1.git'", "only git-upload-pack and git-receive-pack"),
        ("git-upload-pack '/srv/elsewhere.git'", "no repository '/srv/elsewhere.git' here"),
        (
            "git-upload-pack 'hosts/web-1.git'; rm -rf /",
            "only git-upload-pack and git-receive-pack",
        ),
        ("git-receive-pack 'hosts/web-2.git'", "host:web-1 may use only hosts/web-1.git"),
    ],
)
def test_serve_refuses_with_one_line(mirrored: Layout, command: str | None, expected: str) -> None:
    done = serve(mirrored, "host:web-1", command)
    assert done.returncode == 1
    assert done.stdout == ""
    assert done.stderr.startswith("gitops: error: ") and expected in done.stderr
    assert len(done.stderr.splitlines()) == 1


def test_serve_refuses_an_unknown_identity(mirrored: Layout) -> None:
    done = serve(mirrored, "root:web-1", "git-upload-pack 'hosts/web-1.git'")
    assert done.returncode == 1 and "the role must be host, publisher or admin" in done.stderr


def test_serve_runs_upload_pack_on_the_hosts_own_repository(mirrored: Layout) -> None:
    """What the host sees: git's ref advertisement of its repository, one branch."""
    done = serve(mirrored, "host:web-1", "git-upload-pack '/hosts/web-1.git'")
    assert deploy_ref("web-1") in done.stdout
    assert "web-2" not in done.stdout and "main" not in done.stdout.replace("HEAD", "")


# -- the hooks as git runs them (a push on the server itself) ---------------------------------


def local_push(
    repo: Path, target: Path, refspec: str, identity: str | None
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "GITOPS_SERVER_IDENTITY"}
    if identity is not None:
        env["GITOPS_SERVER_IDENTITY"] = identity  # what serve sets
    return subprocess.run(
        ["git", "push", target, refspec], cwd=repo, env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip


def test_a_mirrored_main_takes_no_push(demo: DemoFleet, tmp_path: Path) -> None:
    keys.new_keypair(tmp_path / "alice", "alice@example.org")
    done = gitops(
        "server", "init", "--dir", tmp_path / "srv", "--repo", demo.server, "--mirror",
        "--admin", f"alice@example.org={tmp_path / 'alice.pub'}",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    layout = Layout(tmp_path / "srv")
    git("commit", "-q", "--allow-empty", "-m", "x", cwd=demo.repo_dir)
    pushed = local_push(demo.repo_dir, layout.fleet, "HEAD:main", "admin:alice@example.org")
    assert pushed.returncode == 1
    assert f"remote: gitops: main: main is mirrored from {demo.server}" in pushed.stderr
    assert head(layout.fleet, MAIN_REF) == head(demo.server, MAIN_REF)


def test_the_docs_show_the_sshd_snippet_the_server_writes() -> None:
    page = (Path(__file__).resolve().parent.parent / "docs" / "server.md").read_text()
    snippet = sshd_snippet(Layout(Path("/srv/gitops")), "git")
    assert f"```\n{snippet}```" in page


def test_serve_in_the_shape_sync_writes_skips_the_argument_parser(tmp_path: Path) -> None:
    """sshd starts serve for every connection: it loads neither argparse nor the parser
    of every subcommand (the shape of authorized_keys' command; other shapes still work)."""
    probe = (
        "import sys\nfrom gitops import cli\n"
        "try:\n    cli.execute(sys.argv[1:])\nexcept Exception as err:\n    print(err)\n"
        "print('argparse' in sys.modules)\n"
    )
    for shape, parsed in (
        (["--dir", str(tmp_path), "--as", "host:web-1"], "False"),
        (["--as", "host:web-1", "--dir", str(tmp_path)], "True"),
    ):
        done = subprocess.run(
            [sys.executable, "-c", probe, "server", "serve", *shape],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if k != "SSH_ORIGINAL_COMMAND"},
        )
        refusal, loaded = done.stdout.splitlines()
        assert refusal == "this key only serves git (fetch and push); no shell is offered"
        assert loaded == parsed
