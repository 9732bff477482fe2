"""Secrets: age files in the fleet repository, only a host's own in its deploy tree, and
decrypted by its agent into a tmpfs before the switch; never in plaintext in the Nix
store, a log, a report or git.

Real pyrage, the real ``age`` CLI (Debian's), real git, real Nix builds of stand-in systems.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import stat
import subprocess
import tempfile
import zlib
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path

import pygit2
import pyrage
import pytest
import yaml

from gitops.agent import secrets as agent_secrets
from gitops.agent.cycle import Cycle
from gitops.demo.scenario import DemoFleet
from gitops.errors import GitopsError
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.protocol import (
    SECRETS_MANIFEST,
    Result,
    SecretFile,
    deploy_ref,
    parse_secrets_manifest,
    secrets_manifest,
)
from gitops.system import memfs, nix
from gitops.trust import age
from testing import helpers
from testing.env import have, needs_nix
from testing.helpers import published_demo, remote_reports

# In CI (where .ci/setup installs age) a missing CLI fails the interop tests, not skips them.
needs_age = pytest.mark.skipif(
    not have("age") and not os.environ.get("CI"),
    reason="Debian's age CLI is not installed (.ci/setup test installs it)",
)
PLAINTEXT = "wifi-psk=correct-horse-battery-staple-7f3a"
HOSTS = {"alpha": ["workstation"], "gamma": ["server"]}


gitops = functools.partial(helpers.gitops, timeout=120)


@pytest.fixture
def shm() -> Iterator[Path]:
    """A directory on a tmpfs (where decrypted secrets may go), removed after."""
    directory = Path(tempfile.mkdtemp(prefix="gitops-test-", dir=memfs.memory_dir()))
    yield directory
    shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def admin(tmp_path: Path) -> tuple[Path, str]:
    """An admin's age identity file and recipient, as age-keygen makes them."""
    identity = pyrage.x25519.Identity.generate()
    path = tmp_path / "admin.agekey"
    path.write_text(f"# admin\n{identity}\n")
    path.chmod(0o600)
    return path, str(identity.to_public())


def editor_writing(tmp_path: Path, text: str) -> str:
    """An $EDITOR that replaces the file with ``text`` and records where the file was."""
    script = tmp_path / f"editor-{len(list(tmp_path.glob('editor-*')))}.sh"
    script.write_text(
        f'#!/bin/sh\necho "$1" >> {tmp_path}/edited-paths\nprintf %s "{text}" > "$1"\n'
    )
    script.chmod(0o755)
    return str(script)


def declare(demo: DemoFleet, admin_recipient: str, secrets: dict[str, dict[str, object]]) -> None:
    fleet_yaml = demo.repo_dir / "fleet.yaml"
    data = yaml.safe_load(fleet_yaml.read_text())
    data["admins"] = [{"name": "alice@example.org", "key": admin_recipient}]
    fleet_yaml.write_text(yaml.safe_dump(data, sort_keys=False))
    (demo.repo_dir / "secrets").mkdir(exist_ok=True)
    (demo.repo_dir / "secrets" / "secrets.yaml").write_text(yaml.safe_dump(secrets))


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


# -- age: interop with the age CLI, headers ---------------------------------------------


@needs_age
def test_our_files_open_with_the_age_cli_and_theirs_with_us(
    demo: DemoFleet, admin: tuple[Path, str], tmp_path: Path
) -> None:
    host_key = demo.keys_dir / "alpha"
    host_pub = (demo.keys_dir / "alpha.pub").read_text()
    recipients = [age.parse_recipient(host_pub), age.parse_recipient(admin[1])]
    ours = tmp_path / "ours.age"
    ours.write_bytes(age.encrypt(PLAINTEXT.encode(), recipients))
    for identity in (host_key, admin[0]):
        opened = subprocess.run(
            ["age", "-d", "-i", str(identity), str(ours)], capture_output=True, check=True
        )
        assert opened.stdout.decode() == PLAINTEXT
    theirs = tmp_path / "theirs.age"
    subprocess.run(
        ["age", "-e", "-R", str(demo.keys_dir / "alpha.pub"), "-r", admin[1], "-o", str(theirs)],
        input=PLAINTEXT.encode(),
        check=True,
    )
    for identity in (host_key, admin[0]):
        assert (
            age.decrypt(theirs.read_bytes(), age.load_identity(identity), "theirs")
            == PLAINTEXT.encode()
        )
    # Their header names exactly the recipients it was made for, read without decrypting.
    assert age.header_problem(theirs.read_bytes(), recipients, "theirs") is None
    gamma = age.parse_recipient((demo.keys_dir / "gamma.pub").read_text())
    problem = age.header_problem(theirs.read_bytes(), [gamma, recipients[1]], "theirs")
    assert problem is not None and "not encrypted to 1 declared SSH key" in problem
    assert "no longer declared" in problem
    with pytest.raises(age.AgeError, match="cannot decrypt"):
        age.decrypt(theirs.read_bytes(), age.load_identity(demo.keys_dir / "gamma"), "theirs")


def test_a_header_with_one_admin_too_few_or_an_armored_file_is_a_problem(
    admin: tuple[Path, str],
) -> None:
    other = str(pyrage.x25519.Identity.generate().to_public())
    one = [age.parse_recipient(admin[1])]
    data = age.encrypt(b"x", one)
    assert age.header_problem(data, one, "f") is None
    problem = age.header_problem(data, [*one, age.parse_recipient(other)], "f")
    assert problem is not None and "1 age (X25519) recipient(s), 2 declared" in problem
    assert "not a binary age file" in (age.header_problem(b"-----BEGIN AGE", one, "f") or "")


def test_keys_age_cannot_use_are_refused_with_a_reason() -> None:
    with pytest.raises(ValueError, match="cannot receive age files"):
        age.parse_recipient("ecdsa-sha2-nistp256 AAAAE2VjZHNh")
    with pytest.raises(ValueError, match="expected an age1"):
        age.parse_recipient("age1notakey")


def test_the_manifest_round_trips_and_refuses_what_could_escape() -> None:
    files = [SecretFile("wifi", "root", "wheel", 0o440, "/etc/wifi.env"), SecretFile("vpn")]
    assert parse_secrets_manifest(secrets_manifest(files)) == tuple(
        sorted(files, key=lambda f: f.name)
    )
    bad: dict[str, dict[str, str]]
    for bad in (
        {"../etc": {"mode": "0400"}},
        {"x": {"path": "/nix/store/x"}},
        {"x": {"path": "relative"}},
        {"x": {"owner": "a b"}},
        {"x": {"mode": "9"}},
    ):
        with pytest.raises(ValueError):
            parse_secrets_manifest(json.dumps({"schema": 1, "secrets": bad}))


# -- the commands -------------------------------------------------------------------------


@pytest.fixture
def with_secret(demo: DemoFleet, admin: tuple[Path, str], tmp_path: Path) -> DemoFleet:
    """alpha reads `wifi` (created with `gitops secrets edit`), merged into main."""
    declare(
        demo,
        admin[1],
        {
            "wifi": {
                "hosts": ["alpha"],
                "owner": "root",
                "group": "root",
                "mode": "0440",
                "path": str(tmp_path / "etc" / "wifi.env"),
            }
        },
    )
    result = gitops(
        "secrets",
        "edit",
        "wifi",
        "--repo",
        demo.repo_dir,
        env={"EDITOR": editor_writing(tmp_path, PLAINTEXT), "GITOPS_AGE_IDENTITY": str(admin[0])},
    )
    assert result.returncode == 0, result.stderr
    assert "wrote secrets/wifi.age for alpha, admin alice@example.org" in result.stdout
    demo.commit("wifi for alpha")
    demo.publish()
    return demo


def test_edit_writes_only_ciphertext_and_keeps_the_plaintext_on_a_tmpfs(
    with_secret: DemoFleet, admin: tuple[Path, str], tmp_path: Path
) -> None:
    data = (with_secret.repo_dir / "secrets" / "wifi.age").read_bytes()
    assert PLAINTEXT.encode() not in data
    edited = Path((tmp_path / "edited-paths").read_text().split()[0])
    assert memfs.in_memory(edited.parent.parent)
    assert not edited.exists() and not edited.parent.exists()  # wiped and removed
    # A second edit decrypts the current text for the editor and re-encrypts the new one.
    result = gitops(
        "secrets",
        "edit",
        "wifi",
        "--repo",
        with_secret.repo_dir,
        env={"EDITOR": editor_writing(tmp_path, "v2"), "GITOPS_AGE_IDENTITY": str(admin[0])},
    )
    assert result.returncode == 0, result.stderr
    identity = age.load_identity(with_secret.keys_dir / "alpha")
    assert (
        age.decrypt((with_secret.repo_dir / "secrets" / "wifi.age").read_bytes(), identity, "wifi")
        == b"v2"
    )


def test_edit_refuses_an_undeclared_secret(with_secret: DemoFleet, tmp_path: Path) -> None:
    result = gitops(
        "secrets",
        "edit",
        "nope",
        "--repo",
        with_secret.repo_dir,
        env={"EDITOR": editor_writing(tmp_path, "x")},
    )
    assert result.returncode == 1
    assert "'nope' is not declared in secrets/secrets.yaml" in result.stderr
    assert not (with_secret.repo_dir / "secrets" / "nope.age").exists()


def test_list_and_check_say_who_reads_what_and_catch_a_stale_file(
    with_secret: DemoFleet, admin: tuple[Path, str]
) -> None:
    listed = json.loads(gitops("secrets", "list", "--json", "--repo", with_secret.repo_dir).stdout)
    assert listed["secrets"] == [
        {
            "name": "wifi",
            "file": "secrets/wifi.age",
            "hosts": ["alpha"],
            "admins": ["alice@example.org"],
            "owner": "root",
            "group": "root",
            "mode": "0440",
            "path": listed["secrets"][0]["path"],
            "state": "ok",
        }
    ]
    assert gitops("secrets", "check", "--repo", with_secret.repo_dir).returncode == 0
    # gamma joins the readers: the file now lacks a recipient, check and gitops check say so.
    secrets_yaml = with_secret.repo_dir / "secrets" / "secrets.yaml"
    data = yaml.safe_load(secrets_yaml.read_text())
    data["wifi"]["hosts"].append("gamma")
    secrets_yaml.write_text(yaml.safe_dump(data))
    (with_secret.repo_dir / "secrets" / "old.age").write_bytes(b"age-encryption.org/v1\n")
    checked = gitops("secrets", "check", "--repo", with_secret.repo_dir)
    assert checked.returncode == 1
    assert "not encrypted to 1 declared SSH key(s); run 'gitops secrets rekey'" in checked.stderr
    assert "secrets/old.age: not declared" in checked.stderr
    assert (
        "not encrypted to 1 declared"
        in gitops("check", "--no-nix", "--repo", with_secret.repo_dir).stderr
    )
    (with_secret.repo_dir / "secrets" / "old.age").unlink()
    rekeyed = gitops(
        "secrets", "rekey", "--json", "--repo", with_secret.repo_dir, "--identity", admin[0]
    )
    assert json.loads(rekeyed.stdout) == {"rekeyed": ["secrets/wifi.age"]}, rekeyed.stderr
    assert gitops("secrets", "check", "--repo", with_secret.repo_dir).returncode == 0
    gamma = age.load_identity(with_secret.keys_dir / "gamma")
    assert (
        age.decrypt((with_secret.repo_dir / "secrets" / "wifi.age").read_bytes(), gamma, "wifi")
        == PLAINTEXT.encode()
    )


def test_rotating_a_host_key_locks_the_old_key_out_of_new_ciphertext(
    with_secret: DemoFleet, admin: tuple[Path, str], tmp_path: Path
) -> None:
    new_key = tmp_path / "alpha-new"
    assert gitops("keys", "new", new_key).returncode == 0
    result = gitops(
        "hosts",
        "rotate-key",
        "alpha",
        "--key",
        f"{new_key}.pub",
        "--repo",
        with_secret.repo_dir,
        "--identity",
        admin[0],
    )
    assert result.returncode == 0, result.stderr
    assert "rekeyed secrets/wifi.age" in result.stdout
    host_yaml = (with_secret.repo_dir / "hosts" / "alpha" / "host.yaml").read_text()
    assert (new_key.with_suffix(".pub").read_text().split()[1]) in host_yaml
    data = (with_secret.repo_dir / "secrets" / "wifi.age").read_bytes()
    assert age.decrypt(data, age.load_identity(new_key), "wifi") == PLAINTEXT.encode()
    with pytest.raises(age.AgeError):
        age.decrypt(data, age.load_identity(with_secret.keys_dir / "alpha"), "wifi")
    assert gitops("secrets", "check", "--repo", with_secret.repo_dir).returncode == 0


# -- publish: only the host's own --------------------------------------------------------


def test_a_deploy_tree_carries_only_its_hosts_ciphertext(with_secret: DemoFleet) -> None:
    repo = with_secret.repository()
    alpha = repo.revparse_single(deploy_ref("alpha")).peel(pygit2.Tree)
    gamma = repo.revparse_single(deploy_ref("gamma")).peel(pygit2.Tree)
    assert sorted(str(e.name) for e in alpha["secrets"].peel(pygit2.Tree)) == [
        "secrets.json",
        "wifi.age",
    ]
    assert alpha["secrets/wifi.age"].id == repo.revparse_single("main:secrets/wifi.age").id
    manifest = parse_secrets_manifest(repo[alpha[SECRETS_MANIFEST].id].peel(pygit2.Blob).data)
    assert [(f.name, f.mode) for f in manifest] == [("wifi", 0o440)]
    assert "secrets" not in gamma  # neither the file nor the declarations


# -- the agent ------------------------------------------------------------------------------


@needs_nix
def test_the_agent_decrypts_before_the_switch_and_nothing_leaks(
    with_secret: DemoFleet,
    shm: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level("DEBUG")
    secrets_dir = shm / "gitops-secrets"
    config = replace(with_secret.agent_config("alpha"), secrets_dir=secrets_dir)
    seen_at_switch: list[bytes] = []
    real_switch = nix.switch_to_configuration

    def switch(path: Path, action: str, *, timeout: float | None = None) -> None:
        seen_at_switch.append((secrets_dir / "wifi").read_bytes())
        real_switch(path, action, timeout=timeout)

    monkeypatch.setattr(nix, "switch_to_configuration", switch)
    result = Cycle(config, force_report=True).run()
    assert result.result == Result.APPLIED, result.reason
    assert seen_at_switch == [PLAINTEXT.encode()]
    wifi = secrets_dir / "wifi"
    assert stat.S_IMODE(wifi.stat().st_mode) == 0o440
    assert (wifi.stat().st_uid, wifi.stat().st_gid) == (0, 0)
    assert secrets_dir.is_symlink() and memfs.in_memory(secrets_dir.resolve())
    assert (tmp_path / "etc" / "wifi.env").resolve() == wifi.resolve()

    # The plaintext is nowhere else: the store paths this test built, the logs, the
    # report, every object of every git repository involved.
    assert result.report is not None
    system = Path(result.report.system.store_path or "")
    store_paths = set(nix.closure(system))
    drv = subprocess.run(
        ["nix-store", "-qd", str(system)], capture_output=True, text=True, check=True
    ).stdout.strip()
    store_paths |= set(
        subprocess.run(
            ["nix-store", "-qR", drv], capture_output=True, text=True, check=True
        ).stdout.split()
    )
    deploy = result.report.deploy_applied
    metadata = subprocess.run(
        [
            "nix",
            "flake",
            "metadata",
            "--json",
            f"git+file://{config.state_dir / 'mirror.git'}?rev={deploy}",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert metadata.returncode == 0, metadata.stderr
    source = json.loads(metadata.stdout)["path"]
    assert (Path(source) / "secrets" / "wifi.age").is_file()  # ciphertext in the store: fine
    store_paths.add(source)
    needle = PLAINTEXT.encode()
    for path in store_paths:
        for file in [Path(path)] if Path(path).is_file() else Path(path).rglob("*"):
            if file.is_file() and not file.is_symlink():
                assert needle not in file.read_bytes(), file
    assert PLAINTEXT not in caplog.text
    reports = remote_reports(with_secret, "alpha")
    assert reports and all(PLAINTEXT not in r.to_json() for r in reports)
    for git_dir in [
        with_secret.repo_dir / ".git",
        with_secret.server,
        *config.state_dir.rglob("*.git"),
    ]:
        repo = pygit2.Repository(str(git_dir))
        for oid in repo.odb:
            assert needle not in repo.odb.read(oid)[1], (git_dir, oid)
    for file in config.state_dir.rglob("*"):
        if file.is_file():
            data = file.read_bytes()
            assert needle not in data and needle not in _inflated(data), file


def _inflated(data: bytes) -> bytes:
    try:
        return zlib.decompress(data)
    except zlib.error:
        return b""


@needs_nix
def test_a_secret_no_longer_declared_is_removed_and_a_broken_one_changes_nothing(
    with_secret: DemoFleet, admin: tuple[Path, str], shm: Path, tmp_path: Path
) -> None:
    secrets_dir = shm / "gitops-secrets"
    config = replace(with_secret.agent_config("alpha"), secrets_dir=secrets_dir)
    assert Cycle(config).run().result == Result.APPLIED
    first = secrets_dir.resolve()
    # A second secret for alpha, then wifi undeclared: the set is swapped whole.
    secrets_yaml = with_secret.repo_dir / "secrets" / "secrets.yaml"
    secrets_yaml.write_text(yaml.safe_dump({"vpn": {"hosts": ["alpha"], "mode": "0400"}}))
    env = {"EDITOR": editor_writing(tmp_path, "vpn-key"), "GITOPS_AGE_IDENTITY": str(admin[0])}
    assert gitops("secrets", "edit", "vpn", "--repo", with_secret.repo_dir, env=env).returncode == 0
    (with_secret.repo_dir / "secrets" / "wifi.age").unlink()
    with_secret.commit("vpn instead of wifi")
    with_secret.publish()
    assert Cycle(config).run().result == Result.APPLIED
    assert sorted(p.name for p in secrets_dir.iterdir()) == [".links.json", "vpn"]
    assert not first.exists()  # the old generation, plaintext and all, is gone
    assert not (tmp_path / "etc" / "wifi.env").is_symlink()  # its link too
    # A secret the host cannot decrypt (encrypted to the admin only): refused before the
    # switch; the secrets in place stay.
    (with_secret.repo_dir / "secrets" / "vpn.age").write_bytes(
        age.encrypt(b"other", [age.parse_recipient(admin[1])])
    )
    with_secret.commit("vpn for the admin only (a broken rekey)")
    with pytest.raises(GitopsError, match="invalid"):  # publish refuses; gitops check says why
        with_secret.publish()
    checked = gitops("check", "--no-nix", "--repo", with_secret.repo_dir)
    assert "not encrypted to 1 declared SSH key" in checked.stderr
    assert (secrets_dir / "vpn").read_bytes() == b"vpn-key"


def test_install_refuses_a_directory_on_disk(tmp_path: Path, demo: DemoFleet) -> None:
    repo = demo.repository()
    blob = repo.create_blob(secrets_manifest([SecretFile("x")]).encode())
    builder = repo.TreeBuilder()
    sub = repo.TreeBuilder()
    sub.insert("secrets.json", blob, pygit2.enums.FileMode.BLOB)
    builder.insert("secrets", sub.write(), pygit2.enums.FileMode.TREE)
    someone = pygit2.Signature("Test", "test@example.org")
    commit = repo.create_commit(None, someone, someone, "t", builder.write(), [])
    if memfs.in_memory(tmp_path):
        pytest.skip("tmp_path is on a tmpfs here")
    with pytest.raises(agent_secrets.SecretsError, match="not a tmpfs"):
        agent_secrets.install(repo, commit, tmp_path / "gitops-secrets", demo.keys_dir / "alpha")


def test_the_fleet_refuses_secrets_for_unknown_hosts_and_without_admins(demo: DemoFleet) -> None:
    (demo.repo_dir / "secrets").mkdir()
    (demo.repo_dir / "secrets" / "secrets.yaml").write_text(
        yaml.safe_dump({"x": {"hosts": ["nobody"], "tags": ["none"]}})
    )
    problems = Problems()
    load_fleet(DirSource(demo.repo_dir), problems)
    text = "\n".join(problems.lines())
    assert "unknown host 'nobody'" in text
    assert "no host has the tag 'none'" in text
    assert "secrets are declared but no admins" in text
    assert "secrets/x.age does not exist" in text


# -- what a deploy tree can ask of the agent (as root) ----------------------------------


Entries = Mapping[str, tuple[bytes | pygit2.Oid, int]]


def _deploy_with(repo: pygit2.Repository, manifest: bytes, files: Entries) -> pygit2.Oid:
    """A commit whose tree is ``secrets/secrets.json`` and ``files`` under secrets/."""
    sub = repo.TreeBuilder()
    sub.insert("secrets.json", repo.create_blob(manifest), pygit2.enums.FileMode.BLOB)
    for name, (data, mode) in files.items():
        oid = data if isinstance(data, pygit2.Oid) else repo.create_blob(data)
        sub.insert(name, oid, mode)
    top = repo.TreeBuilder()
    top.insert("secrets", sub.write(), pygit2.enums.FileMode.TREE)
    someone = pygit2.Signature("Test", "test@example.org")
    return repo.create_commit(None, someone, someone, "t", top.write(), [])


def _entry(**fields: object) -> dict[str, object]:
    return {"owner": "root", "group": "root", "mode": "0400", "path": None, **fields}


def test_a_deploy_tree_the_agent_cannot_follow_is_refused_in_one_line_and_changes_nothing(
    demo: DemoFleet, shm: Path
) -> None:
    """Every crafted manifest or age entry is a SecretsError (the agent's one line, and
    the switch does not happen), never a crash of the agent running as root."""
    repo = demo.repository()
    key = demo.keys_dir / "alpha"
    ciphertext = age.encrypt(
        b"s3cret", [age.parse_recipient((demo.keys_dir / "alpha.pub").read_text())]
    )
    blob = pygit2.enums.FileMode.BLOB
    good = {"x.age": (ciphertext, blob)}
    secrets_dir = shm / "gitops-secrets"
    first = _deploy_with(repo, secrets_manifest([SecretFile("x")]).encode(), good)
    assert agent_secrets.install(repo, first, secrets_dir, key) is not None
    installed = secrets_dir.resolve()

    def manifest(**fields: object) -> bytes:
        return json.dumps({"schema": 1, "secrets": {"x": _entry(**fields)}}).encode()

    cases: dict[str, tuple[bytes, Entries, str]] = {
        "uid out of range": (manifest(owner="9999999999"), good, "is not a user or group"),
        "NUL in path": (manifest(path="/run/a\0b"), good, "printable"),
        "newline in path": (manifest(path="/run/a\nb"), good, "printable"),
        "path below a file": (manifest(path="/etc/hostname/x"), good, "is not a directory"),
        "schema true": (b'{"schema": true, "secrets": {}}', good, "not a schema 1"),
        "a key twice": (
            b'{"schema": 1, "secrets": {"x": {"owner": "root"}, "x": {"owner": "root"}}}',
            good,
            "given twice",
        ),
        "age file is a tree": (
            manifest(),
            {"x.age": (repo.TreeBuilder().write(), pygit2.enums.FileMode.TREE)},
            "is not a file",
        ),
        "age file is a submodule": (
            manifest(),
            {"x.age": (pygit2.Oid(hex="1" * 40), pygit2.enums.FileMode.COMMIT)},
            "is not a file",
        ),
        "age file is a link": (
            manifest(),
            {"x.age": (b"/etc/shadow", pygit2.enums.FileMode.LINK)},
            "is not a file",
        ),
        "not an age file": (manifest(), {"x.age": (b"A" * 4096, blob)}, "cannot decrypt it"),
    }
    Path("/etc/hostname").touch(exist_ok=True)
    for case, (text, files, expected) in cases.items():
        commit = _deploy_with(repo, text, files)
        with pytest.raises(agent_secrets.SecretsError) as raised:
            agent_secrets.install(repo, commit, secrets_dir, key)
        message = str(raised.value)
        assert expected in message and "\n" not in message, (case, message)
        assert secrets_dir.resolve() == installed and (installed / "x").read_bytes() == b"s3cret"


def test_a_path_link_is_never_made_through_a_directory_another_user_controls(
    demo: DemoFleet, shm: Path, tmp_path: Path
) -> None:
    """``path: /home/anna/.ssh/authorized_keys``: anna can swap ``.ssh`` for a link to
    /root/.ssh between the agent's check and its rename. A link goes only where every
    directory on the way is root's alone (or sticky); anything else is refused."""
    repo = demo.repository()
    key = demo.keys_dir / "alpha"
    ciphertext = age.encrypt(
        b"ssh-ed25519 AAAA anna", [age.parse_recipient((demo.keys_dir / "alpha.pub").read_text())]
    )
    root_ssh = tmp_path / "root-ssh"
    root_ssh.mkdir()
    (root_ssh / "authorized_keys").write_text("ssh-ed25519 AAAA admin\n")
    home = tmp_path / "home" / "anna"
    home.mkdir(parents=True)
    os.chown(home, 1000, 1000)
    (home / ".ssh").symlink_to(root_ssh)  # made by anna, in her home
    (home / "own").mkdir()
    os.chown(home / "own", 1000, 1000)
    open_dir = tmp_path / "open"
    open_dir.mkdir(mode=0o777)
    open_dir.chmod(0o777)
    secrets_dir = shm / "gitops-secrets"
    for path, expected in (
        (home / ".ssh" / "authorized_keys", "belongs to uid 1000"),
        (home / ".ssh" / "id_ed25519", "belongs to uid 1000"),
        (home / "own" / "token", "belongs to uid 1000"),
        (home / "new" / "token", "belongs to uid 1000"),
        (open_dir / "token", "writable by others"),
    ):
        text = json.dumps({"schema": 1, "secrets": {"x": _entry(path=str(path))}}).encode()
        commit = _deploy_with(repo, text, {"x.age": (ciphertext, pygit2.enums.FileMode.BLOB)})
        with pytest.raises(agent_secrets.SecretsError, match=expected):
            agent_secrets.install(repo, commit, secrets_dir, key)
    assert (root_ssh / "authorized_keys").read_text() == "ssh-ed25519 AAAA admin\n"
    assert sorted(p.name for p in root_ssh.iterdir()) == ["authorized_keys"]
    assert not (home / "new").exists() and not list(open_dir.iterdir())
    # A directory only root writes in is fine, missing directories are made there.
    fine = tmp_path / "etc" / "app" / "token"
    text = json.dumps({"schema": 1, "secrets": {"x": _entry(path=str(fine))}}).encode()
    commit = _deploy_with(repo, text, {"x.age": (ciphertext, pygit2.enums.FileMode.BLOB)})
    agent_secrets.install(repo, commit, secrets_dir, key)
    assert fine.is_symlink() and fine.read_bytes() == b"ssh-ed25519 AAAA anna"


def test_check_refuses_ids_and_paths_the_agent_could_not_use(demo: DemoFleet) -> None:
    (demo.repo_dir / "secrets").mkdir()
    (demo.repo_dir / "secrets" / "secrets.yaml").write_text(
        'a: {hosts: [alpha], owner: "9999999999"}\nb: {hosts: [alpha], path: "/etc/a\\0b"}\n'
    )
    checked = gitops("check", "--no-nix", "--repo", demo.repo_dir)
    assert checked.returncode == 1
    assert "owner '9999999999' is not a user or group name or number" in checked.stderr
    assert "path '/etc/a\\x00b' must be an absolute path outside /nix, printable" in checked.stderr
