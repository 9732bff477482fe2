"""The gitops server over a real sshd on loopback: every (credential x action) pair.

A fleet of three hosts is published to a plain bare repository, then ``gitops server init``
(the real CLI) makes a server directory from it; OpenSSH's sshd reads the generated
authorized_keys, so every key runs ``gitops server serve --as ...`` and every push goes
through the generated hooks. The git CLI is the client, as an attacker's would be.
"""

from __future__ import annotations

import fcntl
import functools
import json
import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import IO

import pygit2
import pytest
import yaml

from gitops.agent import compact
from gitops.agent.mirror import Mirror
from gitops.agent.reporter import Reporter
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet
from gitops.fleet.rollout_record import Record, Status, WaveRecord, write_record
from gitops.protocol import (
    MAIN_REF,
    ROLLOUT_REF,
    TRAILER_HOST,
    Report,
    Result,
    deploy_ref,
    reports_ref,
)
from gitops.report_commits import create_report_commit
from gitops.server.layout import Layout
from gitops.system import transport
from gitops.trust import commits, keys
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey
from testing import servers
from testing.env import needs_nix
from testing.helpers import gitops, published_demo

HOSTS = {"web-1": ["server"], "web-2": ["server"], "db-1": ["server"]}
ADMIN = "alice@example.org"
ZERO = "0" * 40


# -- the world: a published fleet, a server made from it, sshd in front --------------------


@dataclass
class World:
    demo: DemoFleet
    layout: Layout
    ssh: servers.SshServer
    known_hosts: Path
    admin_key: Path

    def url(self, repo: str) -> str:
        return f"ssh://{self.ssh.user}@{servers.LOOPBACK}:{self.ssh.port}/{repo}"

    def env(self, key: Path) -> dict[str, str]:
        credentials = transport.Credentials(ssh_key=key, known_hosts=self.known_hosts)
        return {**os.environ, **credentials.env()}

    def host_key(self, host: str) -> Path:
        return self.demo.keys_dir / host

    @property
    def publisher_key(self) -> Path:
        return self.demo.publisher_key_path

    def repo(self, host: str | None = None) -> pygit2.Repository:
        path = self.layout.fleet if host is None else self.layout.host_repo(host)
        return pygit2.Repository(str(path))

    def head(self, ref: str, host: str | None = None) -> str | None:
        target = commits.ref_target(self.repo(host), ref)
        return None if target is None else str(target)


def init_server(directory: Path, source: Path, *extra: str | Path) -> Layout:
    done = gitops(
        "server", "init", "--dir", directory, "--repo", source,
        "--command", servers.gitops_command(), *extra,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return Layout(directory)


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    work = tmp_path_factory.mktemp("server")
    demo = published_demo(work / "demo", HOSTS)
    keys.new_keypair(work / "alice", ADMIN)
    layout = init_server(work / "srv", demo.server, "--admin", f"{ADMIN}={work / 'alice.pub'}")
    # sshd configured with the snippet the server ships (its Match block for this user).
    snippet = layout.sshd_snippet.read_text().splitlines()
    with servers.sshd(
        work / "sshd", authorized_keys=layout.authorized_keys, settings=snippet
    ) as ssh:
        yield World(demo, layout, ssh, ssh.write_known_hosts(work / "known_hosts"), work / "alice")


# -- a client --------------------------------------------------------------------------------


def client_git(
    world: World, key: Path, *args: str | Path, cwd: Path
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", *map(str, args)],
        cwd=cwd,
        env=world.env(key),
        capture_output=True,
        text=True,
        check=False,
    )


@pytest.fixture
def client(tmp_path: Path) -> pygit2.Repository:
    return pygit2.init_repository(str(tmp_path / "client.git"), bare=True)


def fetch_into(world: World, client: pygit2.Repository, key: Path, repo: str, ref: str) -> str:
    done = client_git(
        world, key, "fetch", "-q", world.url(repo), f"+{ref}:{ref}", cwd=client_dir(client)
    )
    assert done.returncode == 0, done.stderr
    return str(client.references[ref].target)


def client_dir(client: pygit2.Repository) -> Path:
    return Path(client.path)


def push(
    world: World, client: pygit2.Repository, key: Path, repo: str, *refspecs: str
) -> subprocess.CompletedProcess[str]:
    return client_git(
        world, key, "push", "--porcelain", world.url(repo), *refspecs, cwd=client_dir(client)
    )


def refusals(done: subprocess.CompletedProcess[str]) -> list[str]:
    """The server's own lines: ``remote: gitops: ...`` (hooks) or ``gitops: ...`` (serve)."""
    return [
        line.removeprefix("remote: ").strip()
        for line in done.stderr.splitlines()
        if line.startswith(("remote: gitops:", "gitops:"))
    ]


def assert_refused(done: subprocess.CompletedProcess[str], *fragments: str) -> None:
    assert done.returncode != 0, (done.stdout, done.stderr)
    lines = refusals(done)
    assert len(lines) == 1, done.stderr
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# -- commits a client makes ------------------------------------------------------------------


def report(host: str, **changes: object) -> Report:
    fields: dict[str, object] = {
        "host": host,
        "time": datetime.now(UTC).replace(microsecond=0),
        "agent_version": "test",
        "result": Result.UNCHANGED,
        "reason": "test report",
        "report_id": str(uuid.uuid4()),
    }
    fields.update(changes)
    return Report(**fields)  # type: ignore[arg-type]


def report_commit(
    client: pygit2.Repository, key: Path, about: str, parent: str | None
) -> pygit2.Oid:
    return create_report_commit(
        client,
        report(about),
        parent=pygit2.Oid(hex=parent) if parent else None,
        key=keys.load_signing_key(key),
    )


def files_commit(
    client: pygit2.Repository,
    files: dict[str, bytes],
    *,
    parent: str | None,
    message: str,
    key: Path | None,
) -> pygit2.Oid:
    builder = client.TreeBuilder()
    for name, data in files.items():
        builder.insert(name, client.create_blob(data), pygit2.enums.FileMode.BLOB)
    who = commits.signature_of("Someone", "someone@example.org")
    parents = [pygit2.Oid(hex=parent)] if parent else []
    if key is None:
        return client.create_commit(None, who, who, message, builder.write(), parents)
    return commits.create_signed_commit(
        client,
        tree=builder.write(),
        parents=parents,
        message=message,
        author=who,
        key=keys.load_signing_key(key),
    )


def reports_head(world: World, client: pygit2.Repository, host: str = "web-1") -> str | None:
    """The server's reports/<host>, fetched into the client (None before the first)."""
    if world.head(reports_ref(host), host) is None:
        return None
    return fetch_into(world, client, world.host_key(host), f"hosts/{host}.git", reports_ref(host))


def deploy_commit(
    world: World, client: pygit2.Repository, host: str, *, addressed: str, key: Path | None
) -> tuple[str, pygit2.Oid]:
    """A new commit on the server's deploy/<host> (fetched with the publisher's key)."""
    base = fetch_into(world, client, world.publisher_key, "fleet.git", deploy_ref(host))
    parent = client.get(pygit2.Oid(hex=base))
    assert isinstance(parent, pygit2.Commit)
    # The parent's trailers (Source-Commit, Source-Generation) carry over, as in a re-publish of
    # the same source: later tests on this module's world still find a provable lineage.
    carried = {**commits.trailers(parent.message), TRAILER_HOST: addressed}
    message = commits.format_message(f"deploy {host}: test", "", carried)
    who = commits.signature_of("Publisher", "publisher@example.org")
    if key is None:
        new = client.create_commit(None, who, who, message, parent.tree_id, [parent.id])
    else:
        new = commits.create_signed_commit(
            client,
            tree=parent.tree_id,
            parents=[parent.id],
            message=message,
            author=who,
            key=keys.load_signing_key(key),
        )
    return base, new


# -- host keys -------------------------------------------------------------------------------


def test_host_fetches_its_own_deploy_branch(world: World, client: pygit2.Repository) -> None:
    fetched = fetch_into(
        world, client, world.host_key("web-1"), "hosts/web-1.git", deploy_ref("web-1")
    )
    assert fetched == world.head(deploy_ref("web-1")) == world.head(deploy_ref("web-1"), "web-1")


@pytest.mark.parametrize("service", ["fetch", "push"])
@pytest.mark.parametrize(
    ("repo", "expected"),
    [
        ("hosts/web-2.git", "host:web-1 may use only hosts/web-1.git, not hosts/web-2.git"),
        ("hosts/web-2", "host:web-1 may use only hosts/web-1.git, not hosts/web-2.git"),
        ("fleet.git", "host:web-1 may use only hosts/web-1.git, not fleet.git"),
        ("hosts/web-1.git/../web-2.git", "no repository"),
        ("~/hosts/../fleet.git", "no repository"),
    ],
)
def test_host_reaches_no_other_repository(
    world: World, client: pygit2.Repository, service: str, repo: str, expected: str
) -> None:
    if service == "fetch":
        args = ["fetch", world.url(repo), f"+{deploy_ref('web-2')}:refs/x"]
    else:
        args = ["push", world.url(repo), f"{_any_commit(client)}:refs/heads/reports/web-1"]
    done = client_git(world, world.host_key("web-1"), *args, cwd=client_dir(client))
    assert_refused(done, expected)
    secret = world.head(deploy_ref("web-2"))
    assert secret is not None and secret not in client


def _any_commit(client: pygit2.Repository) -> str:
    return str(files_commit(client, {"x": b"x"}, parent=None, message="x\n", key=None))


@pytest.mark.parametrize("protocol", ["2", "0"])
def test_host_cannot_fetch_another_hosts_deploy_commit_by_id(
    world: World, client: pygit2.Repository, protocol: str
) -> None:
    """Knowing the id is not enough: web-2's commit is not in web-1's repository at all.
    (Over protocol v2 git serves any object a repository holds; see the next test.)"""
    secret = world.head(deploy_ref("web-2"))
    assert secret is not None
    key = world.host_key("web-1")
    by_id = client_git(
        world, key, "-c", f"protocol.version={protocol}", "fetch", world.url("hosts/web-1.git"),
        f"{secret}:refs/stolen", cwd=client_dir(client),
    )  # fmt: skip
    assert by_id.returncode != 0
    by_ref = client_git(
        world, key, "fetch", world.url("hosts/web-1.git"), f"{deploy_ref('web-2')}:refs/stolen",
        cwd=client_dir(client),
    )  # fmt: skip
    assert by_ref.returncode != 0 and "couldn't find remote ref" in by_ref.stderr
    # Asking the server to run upload-pack with permissive settings is not a request it serves.
    tricked = client_git(
        world, key, "fetch",
        "--upload-pack", "git -c uploadpack.allowAnySHA1InWant=true upload-pack",
        world.url("hosts/web-1.git"), f"{secret}:refs/stolen", cwd=client_dir(client),
    )  # fmt: skip
    assert_refused(tricked, "only git-upload-pack and git-receive-pack are served")
    assert secret not in client
    assert pygit2.Oid(hex=secret) not in world.repo("web-1").odb  # nothing to leak


def test_a_shared_repository_leaks_any_object_by_id_over_protocol_v2(
    world: World, tmp_path: Path
) -> None:
    """Why each host has its own repository: in one shared repository, hiding the other
    hosts' refs (as namespaces do) does not stop protocol v2 from serving their objects
    to whoever names them (gitnamespaces(7) warns of this)."""
    shared = tmp_path / "shared.git"
    subprocess.run(["git", "clone", "-q", "--bare", world.demo.server, shared], check=True)
    secret = str(pygit2.Repository(str(shared)).references[deploy_ref("web-2")].target)
    subprocess.run(
        ["git", "--git-dir", shared, "config", "uploadpack.hideRefs", deploy_ref("web-2")],
        check=True,
    )
    thief = pygit2.init_repository(str(tmp_path / "thief.git"), bare=True)
    listed = subprocess.run(
        ["git", "ls-remote", f"file://{shared}"], capture_output=True, text=True, check=True
    )
    assert deploy_ref("web-2") not in listed.stdout
    subprocess.run(
        ["git", "-c", "protocol.version=2", "--git-dir", thief.path, "fetch", "-q",
         f"file://{shared}", f"{secret}:refs/stolen"],
        check=True,
    )  # fmt: skip
    assert secret in thief


def test_host_pushes_a_signed_report_that_reaches_fleet_git(
    world: World, client: pygit2.Repository
) -> None:
    parent = reports_head(world, client)
    new = report_commit(client, world.host_key("web-1"), "web-1", parent)
    done = push(
        world, client, world.host_key("web-1"), "hosts/web-1.git", f"{new}:{reports_ref('web-1')}"
    )
    assert done.returncode == 0, done.stderr
    assert world.head(reports_ref("web-1"), "web-1") == str(new)
    assert world.head(reports_ref("web-1")) == str(new)  # fanned in for the site


def _bad_report(world: World, client: pygit2.Repository, kind: str) -> tuple[str, str]:
    """(refspec, expected words) for a report push the server must refuse."""
    key = world.host_key("web-1")
    parent = reports_head(world, client)
    ref = reports_ref("web-1")
    status = Report.to_json(report("web-1")).encode()
    match kind:
        case "unsigned":
            new = files_commit(
                client, {"status.json": status}, parent=parent, message="r\n", key=None
            )
            return f"{new}:{ref}", "is not signed by web-1's key in main's hosts/web-1/host.yaml"
        case "signed-by-another-host":
            new = report_commit(client, world.host_key("web-2"), "web-1", parent)
            return (
                f"{new}:{ref}",
                "web-1's key in main's hosts/web-1/host.yaml (signed by unknown key",
            )
        case "malformed":
            new = files_commit(
                client, {"status.json": b"{not json"}, parent=parent, message="r\n", key=key
            )
            return f"{new}:{ref}", "status.json is not a valid report (not JSON"
        case "about-another-host":
            new = report_commit(client, key, "web-2", parent)
            return f"{new}:{ref}", "status.json reports on 'web-2', not web-1"
        case "extra-file":
            files = {"status.json": status, "evil.nix": b"{}"}
            new = files_commit(client, files, parent=parent, message="r\n", key=key)
            return (
                f"{new}:{ref}",
                "must hold status.json and, optionally, sbom.cdx.json and escrow/: nothing else",
            )
        case "rewind":
            first = report_commit(client, key, "web-1", parent)
            second = report_commit(client, key, "web-1", str(first))
            ok = push(world, client, key, "hosts/web-1.git", f"{second}:{ref}")
            assert ok.returncode == 0, ok.stderr
            return f"+{first}:{ref}", "not a fast-forward"
        case "delete":
            return f":{ref}", "deleting it is not allowed"
    raise AssertionError(kind)


@pytest.mark.parametrize(
    "kind",
    [
        "unsigned",
        "signed-by-another-host",
        "malformed",
        "about-another-host",
        "extra-file",
        "rewind",
        "delete",
    ],
)
def test_host_report_push_is_refused(world: World, client: pygit2.Repository, kind: str) -> None:
    refspec, expected = _bad_report(world, client, kind)
    before = (world.head(reports_ref("web-1"), "web-1"), world.head(reports_ref("web-1")))
    done = push(world, client, world.host_key("web-1"), "hosts/web-1.git", refspec)
    assert_refused(done, "gitops: reports/web-1:", expected)
    assert (world.head(reports_ref("web-1"), "web-1"), world.head(reports_ref("web-1"))) == before


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (reports_ref("web-2"), "host web-1 may push only reports/web-1"),
        (deploy_ref("web-1"), "host web-1 may push only reports/web-1"),
        (MAIN_REF, "host web-1 may push only reports/web-1"),
        ("refs/tags/v1", "host web-1 may push only reports/web-1"),
    ],
)
def test_host_pushes_nothing_but_its_reports(
    world: World, client: pygit2.Repository, ref: str, expected: str
) -> None:
    new = report_commit(client, world.host_key("web-1"), "web-1", None)
    done = push(world, client, world.host_key("web-1"), "hosts/web-1.git", f"+{new}:{ref}")
    assert_refused(done, expected)
    assert world.head(ref, "web-1") != str(new)
    assert world.head(deploy_ref("web-1"), "web-1") == world.head(deploy_ref("web-1"))


# -- publisher keys --------------------------------------------------------------------------


def test_publisher_pushes_a_signed_deploy_commit_that_reaches_only_its_host(
    world: World, client: pygit2.Repository
) -> None:
    base, new = deploy_commit(world, client, "db-1", addressed="db-1", key=world.publisher_key)
    done = push(world, client, world.publisher_key, "fleet.git", f"{new}:{deploy_ref('db-1')}")
    assert done.returncode == 0, done.stderr
    assert "deploy branches handed to their hosts' repositories" in done.stderr
    assert world.head(deploy_ref("db-1")) == world.head(deploy_ref("db-1"), "db-1") == str(new)
    # The new commit went to db-1's repository only.
    for other in ("web-1", "web-2"):
        assert new not in world.repo(other).odb
        assert pygit2.Oid(hex=world.head(deploy_ref(other)) or ZERO) in world.repo(other).odb
    assert pygit2.Oid(hex=world.head(deploy_ref("web-1")) or ZERO) not in world.repo("db-1").odb
    # And the host fetches it over ssh.
    host_side = fetch_into(
        world, client, world.host_key("db-1"), "hosts/db-1.git", deploy_ref("db-1")
    )
    assert host_side == str(new) and base != str(new)


@pytest.mark.parametrize(
    ("kind", "expected"),
    [
        ("unsigned", "is not signed by a publisher in main's fleet.yaml (not signed)"),
        (
            "signed-by-a-host",
            "is not signed by a publisher in main's fleet.yaml (signed by unknown key",
        ),
        ("addressed-to-another-host", "is addressed to web-1 (Gitops-Host trailer), not web-2"),
        ("rewind", "not a fast-forward"),
        ("delete", "deleting it is not allowed"),
    ],
)
def test_publisher_deploy_push_is_refused(
    world: World, client: pygit2.Repository, kind: str, expected: str
) -> None:
    ref = deploy_ref("web-2")
    key = {"unsigned": None, "signed-by-a-host": world.host_key("web-2")}.get(
        kind, world.publisher_key
    )
    addressed = "web-1" if kind == "addressed-to-another-host" else "web-2"
    base, new = deploy_commit(world, client, "web-2", addressed=addressed, key=key)
    refspec = {"delete": f":{ref}", "rewind": f"+{base}:{ref}"}.get(kind, f"{new}:{ref}")
    if kind == "rewind":  # first move the branch on, then try to put it back
        ok = push(world, client, world.publisher_key, "fleet.git", f"{new}:{ref}")
        assert ok.returncode == 0, ok.stderr
    before = world.head(ref)
    done = push(world, client, world.publisher_key, "fleet.git", refspec)
    assert_refused(done, "gitops: deploy/web-2:", expected)
    assert world.head(ref) == before == world.head(ref, "web-2")


@pytest.mark.parametrize(
    ("ref", "expected"),
    [
        (reports_ref("web-1"), "publishers may push only deploy/<host> and rollout"),
        (MAIN_REF, "publishers may push only deploy/<host> and rollout"),
    ],
)
def test_publisher_pushes_nothing_but_deploy_branches(
    world: World, client: pygit2.Repository, ref: str, expected: str
) -> None:
    new = report_commit(client, world.publisher_key, "web-1", None)
    done = push(world, client, world.publisher_key, "fleet.git", f"+{new}:{ref}")
    assert_refused(done, expected)
    assert world.head(ref) != str(new)


@pytest.mark.parametrize("signer", ["publisher", "host", "nobody"])
def test_publisher_pushes_the_rollout_record_only_signed(
    world: World, client: pygit2.Repository, signer: str
) -> None:
    record = Record(
        source="0" * 40,
        status=Status.ABORTED,
        wave=0,
        waves=(WaveRecord("everyone", {"web-1": None}),),
        updated=datetime.now(UTC),
        by="publisher@example.org",
    )
    key = {"publisher": world.publisher_key, "host": world.host_key("web-1")}.get(signer)
    before = world.head(ROLLOUT_REF)
    parent = pygit2.Oid(hex=before) if before else None
    if parent is not None:  # a fast-forward of what an earlier case pushed
        fetch_into(world, client, world.publisher_key, "fleet.git", ROLLOUT_REF)
    if key is None:
        who = commits.signature_of("Publisher", "publisher@example.org")
        tree = client.TreeBuilder().write()
        new = client.create_commit(None, who, who, "rollout", tree, [parent] if parent else [])
    else:
        new = write_record(
            client, record, parent=parent, key=keys.load_signing_key(key), subject="test"
        )
    done = push(world, client, world.publisher_key, "fleet.git", f"{new}:{ROLLOUT_REF}")
    if signer == "publisher":
        assert done.returncode == 0, done.stderr
        assert world.head(ROLLOUT_REF) == str(new)
        return
    assert_refused(done, "gitops: rollout:", "is not signed by a publisher in main's fleet.yaml")
    assert world.head(ROLLOUT_REF) == before


def test_publisher_reaches_no_host_repository(world: World, client: pygit2.Repository) -> None:
    done = client_git(
        world, world.publisher_key, "fetch", world.url("hosts/web-1.git"), deploy_ref("web-1"),
        cwd=client_dir(client),
    )  # fmt: skip
    assert_refused(done, "publisher:publisher@example.org may use only fleet.git")


# -- admin keys: main ------------------------------------------------------------------------


def _admin_clone(world: World, tmp_path: Path) -> Path:
    work = tmp_path / "admin"
    env = world.env(world.admin_key)
    subprocess.run(["git", "clone", "-q", world.url("fleet.git"), work], env=env, check=True)
    for name, value in (
        ("user.name", "Alice Admin"),
        ("user.email", ADMIN),
        ("gpg.format", "ssh"),
        ("user.signingkey", f"{world.admin_key}.pub"),
    ):
        subprocess.run(["git", "config", name, value], cwd=work, check=True)
    return work


def _add_host(work: Path, host: str, key: Path) -> None:
    (work / "hosts" / host).mkdir(parents=True)
    line = (key.with_name(key.name + ".pub")).read_text().strip()
    (work / "hosts" / host / "host.yaml").write_text(f"key: {line}\nprofiles: [server]\n")


def test_admin_pushes_signed_main_and_the_server_follows(world: World, tmp_path: Path) -> None:
    """A signed main that enrols a host: the push's own post-receive syncs, so the new
    host has a repository and a key at once, with no hand-edited server configuration."""
    work = _admin_clone(world, tmp_path)
    keys.new_keypair(tmp_path / "new-1", "root@new-1")
    _add_host(work, "new-1", tmp_path / "new-1")
    subprocess.run(["git", "add", "-A"], cwd=work, check=True)
    subprocess.run(["git", "commit", "-q", "-S", "-m", "enrol new-1"], cwd=work, check=True)
    done = subprocess.run(
        ["git", "push", "origin", "main"], cwd=work, env=world.env(world.admin_key),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "remote: gitops: main " in done.stderr and "added new-1" in done.stderr
    assert world.layout.host_repo("new-1").is_dir()
    assert "--as host:new-1" in world.layout.authorized_keys.read_text()
    # The new host can talk to its repository straight away (nothing published yet).
    listed = subprocess.run(
        ["git", "ls-remote", world.url("hosts/new-1.git")], env=world.env(tmp_path / "new-1"),
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert listed.returncode == 0 and listed.stdout == "", listed.stderr


def _admin_push(world: World, work: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["git", "push", "--porcelain", "origin", *args], cwd=work,
        env=world.env(world.admin_key), capture_output=True, text=True, check=False,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("kind", "refspec", "expected"),
    [
        ("unsigned", "HEAD:main", "is not signed by an admin key in server.yaml (not signed)"),
        ("rewind", "+HEAD~1:main", "not a fast-forward"),
        ("delete", ":main", "deleting it is not allowed"),
        ("deploy", f"+HEAD:{deploy_ref('web-1')}", "admins may push only main"),
    ],
)
def test_admin_push_is_refused(
    world: World, tmp_path: Path, kind: str, refspec: str, expected: str
) -> None:
    work = _admin_clone(world, tmp_path)
    signed = [] if kind == "unsigned" else ["-S"]
    subprocess.run(
        ["git", "commit", "-q", "--allow-empty", *signed, "-m", "x"], cwd=work, check=True
    )
    if kind == "rewind":  # first move main on (allowed), then try to put it back
        ok = _admin_push(world, work, "HEAD:main")
        assert ok.returncode == 0, ok.stderr
    before = world.head(MAIN_REF), world.head(deploy_ref("web-1"))
    done = _admin_push(world, work, refspec)
    assert_refused(done, expected)
    assert (world.head(MAIN_REF), world.head(deploy_ref("web-1"))) == before


# -- pushes that do not come through sshd ---------------------------------------------------


def test_a_push_that_bypasses_serve_is_refused(world: World, client: pygit2.Repository) -> None:
    """Someone with a shell on the server pushes to a repository directly: the hooks
    still run, and without an identity from sshd's forced command they refuse."""
    new = report_commit(client, world.host_key("web-1"), "web-1", None)
    done = subprocess.run(
        ["git", "push", world.layout.host_repo("web-1"), f"+{new}:refs/heads/reports/web-1"],
        cwd=client_dir(client), capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert_refused(done, "pushes are accepted only through sshd's forced command")


# -- the agent and the publisher, end to end ------------------------------------------------


def test_a_gitops_refusal_reaches_the_agent_and_is_not_retried(
    world: World, tmp_path: Path
) -> None:
    """The agent's report signed with the wrong key: the server's own line is the
    outcome's message, and the agent does not try again (the answer would not change)."""
    mirror = Mirror(tmp_path / "state", "web-1")
    waits: list[float] = []
    reporter = Reporter(
        mirror,
        keys.load_signing_key(world.host_key("web-2")),
        world.url("hosts/web-1.git"),
        transport.Credentials(ssh_key=world.host_key("web-1"), known_hosts=world.known_hosts),
        sleep=waits.append,
    )
    reporter.add(report("web-1"))
    outcome = reporter.push()
    assert not outcome.pushed and outcome.pending == 1
    assert outcome.message.startswith("remote: gitops: reports/web-1: commit "), outcome.message
    assert "is not signed by web-1's key" in outcome.message
    assert waits == []


def test_an_agent_pushes_reports_from_a_compacted_mirror(world: World, tmp_path: Path) -> None:
    """The agent's mirror cut at its last pushed report (agent/compact.py, shallow): the
    server's hooks take the next reports all the same, and fan them in to fleet.git."""
    mirror = Mirror(tmp_path / "state", "web-2")
    reporter = Reporter(
        mirror,
        keys.load_signing_key(world.host_key("web-2")),
        world.url("hosts/web-2.git"),
        transport.Credentials(ssh_key=world.host_key("web-2"), known_hosts=world.known_hosts),
    )
    for _ in range(2):
        for _ in range(3):
            reporter.add(report("web-2"))
        assert reporter.push().pushed
        done = compact.compact(mirror, reporter.key)
        assert done.cut_at == str(mirror.target(reports_ref("web-2")))
        assert mirror.repo.is_shallow
    reporter.add(report("web-2"))
    outcome = reporter.push()
    assert outcome.pushed and outcome.pending == 0, outcome
    local = str(mirror.target(reports_ref("web-2")))
    assert world.head(reports_ref("web-2"), "web-2") == local == world.head(reports_ref("web-2"))
    assert sum(1 for _ in world.repo("web-2").walk(pygit2.Oid(hex=local))) >= 7


def _agent_config(world: World, host: str, path: Path) -> Path:
    config = world.demo.agent_config(host)
    data = {
        "host": host,
        "remote": world.url(f"hosts/{host}.git"),
        "ssh_key": str(world.host_key(host)),
        "known_hosts": str(world.known_hosts),
        "trusted_publishers": str(config.trusted_publishers),
        "signing_key": str(config.signing_key),
        "state_dir": str(config.state_dir),
        "system_profile": str(config.system_profile),
        "root": str(config.root),
        "health": {"grace": 0, "remote": True, "commands": [list(config.health.commands[0])]},
    }
    path.write_text(yaml.safe_dump(data))
    return path


@needs_nix
@pytest.mark.slow
def test_agent_and_publisher_work_through_the_server(world: World, tmp_path: Path) -> None:
    """``gitops agent once`` against its own repository over ssh applies and reports;
    ``gitops publish --push`` to fleet.git over ssh reaches the host; the site's copy
    in fleet.git holds the host's signed reports."""
    host = "db-1"
    config = _agent_config(world, host, tmp_path / "agent.yaml")
    first = gitops("agent", "--config", config, "once", "--json")
    assert first.returncode == 0, first.stderr
    result = json.loads(first.stdout)
    assert result["result"] == "applied" and result["pushed"], (result, first.stderr)
    assert world.head(reports_ref(host)) == world.head(reports_ref(host), host) is not None

    demo = world.demo
    demo.merge_change(
        {"profiles/server.nix": standin.profile_file("server", ["ripgrep"])}, "server: ripgrep"
    )
    publisher_ssh = transport.Credentials(
        ssh_key=world.publisher_key, known_hosts=world.known_hosts
    ).env()["GIT_SSH_COMMAND"]
    published = gitops(
        "publish", "--repo", demo.repo_dir, "--key", world.publisher_key, "--host", host,
        "--push", "--remote", world.url("fleet.git"),
        env={"GIT_SSH_COMMAND": publisher_ssh},
    )  # fmt: skip
    assert published.returncode == 0, published.stderr
    new = world.head(deploy_ref(host))
    assert new == world.head(deploy_ref(host), host)

    second = gitops("agent", "--config", config, "once", "--json")
    assert second.returncode == 0, second.stderr
    result = json.loads(second.stdout)
    assert result["result"] == "applied" and result["deploy_seen"] == new, result
    fleet = world.repo()
    head = commits.ref_target(fleet, reports_ref(host))
    assert head is not None
    trust = world.demo.host_keys[host]
    signers = AllowedSigners.of([(host, PublicKey.from_crypto(trust.public_key()))])
    assert commits.verify_commit(fleet, head, signers).principal == host


def _hold(paths: list[Path]) -> list[IO[str]]:
    held: list[IO[str]] = []
    for path in paths:
        handle = path.open("r+")
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        held.append(handle)
    return held


def test_a_push_with_no_slot_and_no_place_in_the_queue_is_told_the_server_is_busy(
    world: World, client: pygit2.Repository
) -> None:
    """The agent retries "busy" after a jittered wait; a fetch is not limited."""
    held = _hold(sorted(world.layout.slots_dir.iterdir()))
    try:
        slots = len([h for h in held if Path(h.name).name.startswith("push-")])
        parent = reports_head(world, client)  # fetching still works
        new = report_commit(client, world.host_key("web-1"), "web-1", parent)
        ref = reports_ref("web-1")
        busy = push(world, client, world.host_key("web-1"), "hosts/web-1.git", f"{new}:{ref}")
        assert_refused(busy, f"the gitops server is busy (all {slots} push slots in use)")
    finally:
        for handle in held:
            handle.close()
    done = push(world, client, world.host_key("web-1"), "hosts/web-1.git", f"{new}:{ref}")
    assert done.returncode == 0, done.stderr


def test_a_push_waits_in_the_queue_for_a_free_slot(world: World, client: pygit2.Repository) -> None:
    held = _hold(sorted(world.layout.slots_dir.glob("push-*")))
    parent = reports_head(world, client)
    new = report_commit(client, world.host_key("web-1"), "web-1", parent)
    ref = reports_ref("web-1")
    with ThreadPoolExecutor(1) as pool:
        pushing = pool.submit(
            push, world, client, world.host_key("web-1"), "hosts/web-1.git", f"{new}:{ref}"
        )
        time.sleep(2)
        assert not pushing.done()  # waiting for a slot, not sent away
        for handle in held:
            handle.close()
        done = pushing.result(timeout=60)
    assert done.returncode == 0, done.stderr
    assert world.head(ref, "web-1") == str(new)


def test_an_admins_signed_merge_vouches_for_a_pull_requests_commits(
    world: World, tmp_path: Path
) -> None:
    """``main: signed`` checks main's first-parent line: a contributor's unsigned commits
    come in through the admin's signed merge; the same merge unsigned is refused."""
    work = _admin_clone(world, tmp_path)
    run = functools.partial(subprocess.run, cwd=work, check=True)
    run(["git", "switch", "-q", "-c", "pr"])
    run(["git", "-c", "user.email=carol@example.org", "commit", "-q", "--allow-empty", "-m", "c"])
    run(["git", "switch", "-q", "main"])
    run(["git", "merge", "-q", "--no-ff", "--no-gpg-sign", "-m", "Merge pr", "pr"])
    refused = _admin_push(world, work, "HEAD:main")
    assert_refused(refused, "gitops: main: commit", "is not signed by an admin key")
    run(["git", "commit", "-q", "--amend", "-S", "--no-edit"])
    accepted = _admin_push(world, work, "HEAD:main")
    assert accepted.returncode == 0, accepted.stderr
    assert (
        world.head(MAIN_REF)
        == run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    )
