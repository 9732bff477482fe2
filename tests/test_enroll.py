"""Enrolment (a new machine proposes itself on enroll/<name>) and key escrow (recovery
material encrypted to the admins, in the host's reports branch).

Real git (a plain bare repository as the fleet's remote), real signatures, the real agent
cycle over stand-in systems, real pyrage.
"""

from __future__ import annotations

import functools
import os
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pyrage
import pytest

from gitops.agent import enrol
from gitops.agent.cycle import Cycle
from gitops.demo.scenario import DemoFleet
from gitops.protocol import Result, enroll_ref, reports_ref
from gitops.report_commits import create_report_commit, read_report_commit
from gitops.server import checks
from gitops.server.updates import Update
from gitops.trust import age, commits, keys
from gitops.trust.sshsig import PublicKey
from testing import helpers
from testing.env import needs_nix
from testing.helpers import git, git_out, published_demo

HOSTS = {"alpha": ["workstation"]}


gitops = functools.partial(helpers.gitops, timeout=120, env={"XDG_RUNTIME_DIR": ""})


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


def enroll(
    demo: DemoFleet, tmp_path: Path, name: str, key: Path
) -> subprocess.CompletedProcess[str]:
    root = tmp_path / f"root-{name}"
    root.mkdir(exist_ok=True)
    return gitops(
        "enroll", "--remote", demo.server, "--name", name, "--key", key,
        "--profile", "workstation", "--owner", "dana@example.org", "--root", root,
    )  # fmt: skip


def fetch_enrolments(demo: DemoFleet) -> None:
    git("fetch", "-q", "origin", "+refs/heads/enroll/*:refs/heads/enroll/*", cwd=demo.repo_dir)


def test_a_new_machine_proposes_itself_and_an_admin_accepts_it(
    demo: DemoFleet, tmp_path: Path
) -> None:
    key = tmp_path / "delta" / "ssh_host_ed25519_key"
    result = enroll(demo, tmp_path, "delta", key)
    assert result.returncode == 0, result.stderr
    assert "proposed delta on enroll/delta" in result.stdout
    assert key.exists() and key.with_name(key.name + ".pub").exists()  # made a host key
    public = PublicKey.parse(key.with_name(key.name + ".pub").read_text())

    server = pygit2.Repository(str(demo.server))
    proposal = server.references[enroll_ref("delta")].peel(pygit2.Commit)
    assert proposal.parent_ids == [server.references["refs/heads/main"].target]
    diff = proposal.parents[0].tree.diff_to_tree(proposal.tree)
    assert sorted(d.new_file.path for d in diff.deltas) == [
        "hosts/delta/configuration.nix",
        "hosts/delta/hardware-configuration.nix",
        "hosts/delta/host.yaml",
    ]
    host_yaml = server[proposal.tree["hosts/delta/host.yaml"].id].peel(pygit2.Blob).data.decode()
    assert public.openssh() in host_yaml and "dana@example.org" in host_yaml
    # Real git agrees that the machine's own key signed it.
    signers = tmp_path / "delta.allowed_signers"
    signers.write_text(f"delta {public.openssh()}\n")
    git(
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "verify-commit",
        str(proposal.id),
        cwd=demo.server,
    )

    fetch_enrolments(demo)
    listed = gitops("enroll", "list", "--repo", demo.repo_dir)
    assert f"delta {str(proposal.id)[:8]}: ready to accept" in listed.stdout, listed.stderr

    admin = tmp_path / "admin"
    keys.new_keypair(admin, "alice@example.org")
    accepted = gitops("enroll", "accept", "delta", "--key", admin, "--repo", demo.repo_dir)
    assert accepted.returncode == 0, accepted.stderr
    assert (demo.repo_dir / "hosts" / "delta" / "host.yaml").read_text() == host_yaml  # work tree
    merge = demo.repository().references["refs/heads/main"].peel(pygit2.Commit)
    assert merge.parent_ids[1] == proposal.id
    admin_signers = tmp_path / "admin.allowed_signers"
    admin_signers.write_text(f"alice@example.org {admin.with_name('admin.pub').read_text()}")
    git(
        "-c",
        f"gpg.ssh.allowedSignersFile={admin_signers}",
        "verify-commit",
        "main",
        cwd=demo.repo_dir,
    )
    assert gitops("check", "--no-nix", "--repo", demo.repo_dir).returncode == 0
    # Accepted: no longer pending (the name exists now).
    relisted = gitops("enroll", "list", "--repo", demo.repo_dir).stdout
    assert "a host named delta exists in main" in relisted
    # Once main is pushed, the machine running it again learns it is enrolled.
    git("push", "-q", "origin", "main", cwd=demo.repo_dir)
    again = enroll(demo, tmp_path, "delta", key)
    assert again.returncode == 0, again.stderr
    assert "delta is in main with this machine's key: enrolled" in again.stdout


def test_existing_names_and_reused_keys_are_refused_before_anything_is_pushed(
    demo: DemoFleet, tmp_path: Path
) -> None:
    taken = enroll(demo, tmp_path, "alpha", tmp_path / "k1")
    assert taken.returncode == 1
    assert "a host named alpha exists in main" in taken.stderr
    reused = enroll(demo, tmp_path, "epsilon", demo.keys_dir / "alpha")
    assert reused.returncode == 1
    assert "its key is host alpha's" in reused.stderr
    server = pygit2.Repository(str(demo.server))
    assert not [r for r in server.references if r.startswith("refs/heads/enroll/")]


def test_a_proposal_that_touches_anything_else_or_is_signed_by_another_key_is_refused(
    demo: DemoFleet, tmp_path: Path
) -> None:
    assert enroll(demo, tmp_path, "delta", tmp_path / "delta_key").returncode == 0
    fetch_enrolments(demo)
    repo = demo.repository()
    good = repo.references[enroll_ref("delta")].peel(pygit2.Commit)
    # The same files plus a change to fleet.yaml, signed by the machine's key.
    builder = repo.TreeBuilder(good.tree)
    builder.insert(
        "fleet.yaml", repo.create_blob(b"name: taken over\n"), pygit2.enums.FileMode.BLOB
    )
    who = commits.signature_of("x", "x@example.org")
    greedy = commits.create_signed_commit(
        repo, tree=builder.write(), parents=good.parent_ids, message="enroll\n", author=who,
        key=keys.load_signing_key(tmp_path / "delta_key"),
    )  # fmt: skip
    repo.references.create(enroll_ref("greedy"), greedy)
    # The good tree, signed by someone else's key.
    forged = commits.create_signed_commit(
        repo, tree=good.tree_id, parents=good.parent_ids, message="enroll\n", author=who,
        key=keys.load_signing_key(demo.keys_dir / "alpha"),
    )  # fmt: skip
    repo.references.create(enroll_ref("delta"), forged, force=True)
    listed = gitops("enroll", "list", "--repo", demo.repo_dir).stdout
    assert (
        "greedy" in listed and "it changes fleet.yaml; a proposal only adds hosts/greedy/" in listed
    )
    assert "not signed by the key in its host.yaml" in listed
    refused = gitops(
        "enroll", "accept", "delta", "--key", demo.publisher_key_path, "--repo", demo.repo_dir
    )
    assert refused.returncode == 1 and "not signed by the key in its host.yaml" in refused.stderr


def test_the_gitops_server_refuses_enrolment_branches_with_a_clear_line() -> None:
    update = Update(None, pygit2.Oid(hex="1" * 40), enroll_ref("delta"))
    assert "enrolment proposals go to the fleet's forge or plain repository" in (
        checks.enrolment_refusal(update) or ""
    )
    assert checks.enrolment_refusal(replace(update, ref=reports_ref("delta"))) is None


# -- waiting for the deploy branch -------------------------------------------------------


def test_waiting_looks_less_often_and_returns_when_the_branch_appears(tmp_path: Path) -> None:
    remote = tmp_path / "fleet.git"
    git("init", "-q", "--bare", "-b", "main", remote, cwd=tmp_path)
    work = tmp_path / "work"
    git("init", "-q", "-b", "main", work, cwd=tmp_path)
    (work / "README").write_text("fleet\n")
    git("add", "-A", cwd=work)
    git("-c", "user.name=t", "-c", "user.email=t@e", "commit", "-qm", "init", cwd=work)
    git("push", "-q", remote, "main", cwd=work)
    now = [0.0]
    pauses: list[float] = []

    def sleep(seconds: float) -> None:  # the publisher pushes during the third pause
        pauses.append(seconds)
        now[0] += seconds
        if len(pauses) == 3:
            git("push", "-q", remote, "main:refs/heads/deploy/delta", cwd=work)

    head = enrol.wait_for_deploy(str(remote), "delta", 3600, sleep=sleep, clock=lambda: now[0])
    assert head == git_out("rev-parse", "main", cwd=work)
    assert pauses == [5.0, 10.0, 20.0]  # doubling, not a busy loop
    assert [enrol.WaitBackoff().delay(n) for n in (4, 5, 6, 60)] == [40.0, 60.0, 60.0, 60.0]

    pauses.clear()
    now[0] = 0.0
    assert enrol.wait_for_deploy(str(remote), "echo", 12, sleep=sleep, clock=lambda: now[0]) is None
    assert pauses == [5.0, 7.0]  # never past the deadline


def test_enroll_wait_prints_the_next_step_once_deploy_appears(
    demo: DemoFleet, tmp_path: Path
) -> None:
    root = tmp_path / "root-delta"
    root.mkdir()
    waiting = subprocess.Popen(
        [sys.executable, "-m", "gitops", "enroll", "--remote", str(demo.server), "--name",
         "delta", "--key", str(tmp_path / "delta_key"), "--profile", "workstation",
         "--root", str(root), "--wait", "2m"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )  # fmt: skip
    assert waiting.stdout is not None
    try:
        assert "made a host key" in waiting.stdout.readline()
        assert "proposed delta on enroll/delta" in waiting.stdout.readline()
        # The admin merged and the publisher published (here: the ref, straight on the remote).
        git("update-ref", "refs/heads/deploy/delta", "refs/heads/enroll/delta", cwd=demo.server)
        out, err = waiting.communicate(timeout=60)
    finally:
        waiting.kill()
    assert waiting.returncode == 0, err
    assert "waiting up to 2m for deploy/delta" in err
    assert "deploy/delta is published" in out and 'hostName = "delta"' in out

    # Again (after a timeout, say): the proposal is there, so it only waits.
    again = enroll_waiting(demo, tmp_path, "delta", "1")
    assert again.returncode == 0, again.stderr
    assert "enroll/delta " in again.stdout and "is this machine's proposal already" in again.stdout
    assert "deploy/delta is published" in again.stdout
    late = enroll_waiting(demo, tmp_path, "echo", "1")
    assert late.returncode == 1
    assert "deploy/echo did not appear" in late.stderr and "within 1s" in late.stderr


def enroll_waiting(
    demo: DemoFleet, tmp_path: Path, name: str, wait: str
) -> subprocess.CompletedProcess[str]:
    root = tmp_path / f"root-{name}"
    root.mkdir(exist_ok=True)
    return gitops(
        "enroll", "--remote", demo.server, "--name", name, "--key", tmp_path / f"{name}_key",
        "--profile", "workstation", "--root", root, "--wait", wait,
    )  # fmt: skip


# -- escrow -------------------------------------------------------------------------------


@pytest.fixture
def admin(tmp_path: Path) -> tuple[Path, str]:
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "admin.agekey"
    path.write_text(f"{identity}\n")
    return path, str(identity.to_public())


@needs_nix
def test_the_agent_escrows_to_the_admins_only_and_again_only_on_change(
    demo: DemoFleet, admin: tuple[Path, str], tmp_path: Path
) -> None:
    recovery = tmp_path / "luks-recovery.key"
    recovery.write_text("RECOVERY-1111-2222-3333\n")
    config = replace(
        demo.agent_config("alpha"),
        escrow=(("luks-recovery", recovery), ("host-key", demo.keys_dir / "alpha")),
        escrow_recipients=(admin[1],),
    )
    assert Cycle(config).run().result == Result.APPLIED
    git("fetch", "-q", "origin", "+refs/heads/reports/*:refs/heads/reports/*", cwd=demo.repo_dir)
    shown = gitops(
        "escrow",
        "show",
        "alpha",
        "--name",
        "luks-recovery",
        "--repo",
        demo.repo_dir,
        "--identity",
        admin[0],
    )
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout == "RECOVERY-1111-2222-3333\n"
    key_copy = tmp_path / "alpha-key-copy"
    assert (
        gitops(
            "escrow",
            "show",
            "alpha",
            "--name",
            "host-key",
            "--out",
            key_copy,
            "--repo",
            demo.repo_dir,
            "--identity",
            admin[0],
        ).returncode
        == 0
    )
    assert key_copy.read_bytes() == (demo.keys_dir / "alpha").read_bytes()
    # Nobody else can read it: not the host's own key, not another age key.
    stranger = tmp_path / "stranger.agekey"
    stranger.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    for identity in (stranger, demo.keys_dir / "alpha"):
        refused = gitops(
            "escrow",
            "show",
            "alpha",
            "--name",
            "luks-recovery",
            "--repo",
            demo.repo_dir,
            "--identity",
            identity,
        )
        assert refused.returncode == 1 and "cannot decrypt" in refused.stderr
    server = pygit2.Repository(str(demo.server))
    for oid in server.odb:
        assert b"RECOVERY-1111" not in server.odb.read(oid)[1]

    # Nothing changed: the next report carries no escrow; a rotated key is escrowed again.
    assert Cycle(config, force_report=True).run().report is not None
    assert (
        read_report_commit(
            server, server.references[reports_ref("alpha")].peel(pygit2.Commit).id
        ).escrow
        == {}
    )
    recovery.write_text("RECOVERY-4444-5555-6666\n")
    Cycle(config, force_report=True).run()
    newest = read_report_commit(
        server, server.references[reports_ref("alpha")].peel(pygit2.Commit).id
    ).escrow
    assert sorted(newest) == ["luks-recovery"]
    assert (
        age.decrypt(newest["luks-recovery"], age.load_identity(admin[0]), "x")
        == b"RECOVERY-4444-5555-6666\n"
    )


def test_the_server_accepts_escrow_files_and_refuses_anything_else_there(
    demo: DemoFleet, admin: tuple[Path, str]
) -> None:
    from gitops.protocol import Report

    repo = pygit2.Repository(str(demo.server))
    key = keys.load_signing_key(demo.keys_dir / "alpha")
    report = Report(
        "alpha", datetime.now(UTC).replace(microsecond=0), "t", Result.UNCHANGED, "", "id-1"
    )
    public = PublicKey.from_crypto(key.public_key())
    good = age.encrypt(b"k", [age.parse_recipient(admin[1])])
    for escrow, problem in (
        ({"luks": good}, None),
        ({"luks": b"plain text"}, "not a binary age file"),
    ):
        oid = create_report_commit(repo, report, parent=None, key=key, escrow=escrow)
        found = checks.check_report_update(
            repo,
            Update(None, oid, reports_ref("alpha")),
            host="alpha",
            key=public,
            now=datetime.now(UTC),
        )
        assert (found is None) if problem is None else (problem in (found or "")), found


def test_the_site_lists_pending_enrolments_with_their_verdict(
    demo: DemoFleet, tmp_path: Path
) -> None:
    assert enroll(demo, tmp_path, "delta", tmp_path / "delta_key").returncode == 0
    fetch_enrolments(demo)
    out = tmp_path / "site"
    built = gitops("site", "build", "--repo", demo.repo_dir, "--out", out)
    assert built.returncode == 0, built.stderr
    index = (out / "index.html").read_text()
    assert "Pending enrolments" in index
    assert "<code>enroll/delta</code>" in index and "ready to accept" in index


def test_a_proposal_adds_only_regular_files_and_its_names_cannot_drive_a_terminal(
    demo: DemoFleet, tmp_path: Path
) -> None:
    """Whoever can push enroll/ is not trusted yet: a link (leading readers of a checkout
    out of the directory), a submodule or a dot file is refused, and the names it chose
    are printed with their control characters escaped."""
    repo = demo.repository()
    main = repo.references["refs/heads/main"].peel(pygit2.Commit)
    who = commits.signature_of("x", "x@example.org")
    blob, link = pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.LINK
    cases: dict[str, dict[str, tuple[bytes | pygit2.Oid, int]]] = {
        "linked": {"configuration.nix": (b"../alpha/configuration.nix", link)},
        "sub": {"vendor": (pygit2.Oid(hex="3" * 40), pygit2.enums.FileMode.COMMIT)},
        "dotted": {".gitattributes": (b"* filter=evil\n", blob)},
        "loud": {"\x1b]52;c;cm0gLXJmIH4=\x07\x1b[2J": (b"/etc/shadow", link)},
    }
    for name, extra in cases.items():
        key = tmp_path / f"{name}_key"
        public = keys.new_keypair(key, f"root@{name}")
        files: dict[str, tuple[bytes | pygit2.Oid, int]] = {
            "host.yaml": (f"key: {public.openssh()}\nprofiles: [workstation]\n".encode(), blob),
            "configuration.nix": (b"{ imports = [ ../../profiles/workstation.nix ]; }\n", blob),
            **extra,
        }
        host_dir = repo.TreeBuilder()
        for file, (data, mode) in files.items():
            oid = data if isinstance(data, pygit2.Oid) else repo.create_blob(data)
            host_dir.insert(file, oid, mode)
        hosts = repo.TreeBuilder(main.tree["hosts"].peel(pygit2.Tree))
        hosts.insert(name, host_dir.write(), pygit2.enums.FileMode.TREE)
        top = repo.TreeBuilder(main.tree)
        top.insert("hosts", hosts.write(), pygit2.enums.FileMode.TREE)
        proposal = commits.create_signed_commit(
            repo, tree=top.write(), parents=[main.id], message=f"enroll {name}\n", author=who,
            key=keys.load_signing_key(key),
        )  # fmt: skip
        repo.references.create(enroll_ref(name), proposal)
    listed = gitops("enroll", "list", "--repo", demo.repo_dir)
    assert listed.returncode == 0, listed.stderr
    lines = {line.split(" ")[0]: line for line in listed.stdout.splitlines()}
    assert "configuration.nix is a link or submodule" in lines["linked"]
    assert "hosts/sub/vendor is a link or submodule" in lines["sub"]
    assert "hosts/dotted/.gitattributes: a proposal adds no dot files" in lines["dotted"]
    assert "\x1b" not in listed.stdout and "\x07" not in listed.stdout
    assert "hosts/loud/\\x1b]52;c;cm0gLXJmIH4=\\x07\\x1b[2J" in listed.stdout
    admin = tmp_path / "admin"
    keys.new_keypair(admin, "alice@example.org")
    for name in ("linked", "sub", "dotted"):
        refused = gitops("enroll", "accept", name, "--key", admin, "--repo", demo.repo_dir)
        assert refused.returncode == 1, refused.stdout
    assert repo.references["refs/heads/main"].target == main.id
