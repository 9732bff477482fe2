"""Bad input to the newer commands and files (issue 9's classes, applied to them): every
case runs the real command line and must end with a non-zero exit and one line on stderr
naming what, where and how to fix; never "unexpected error" or a traceback.

Each row of the table was tried against the code before this file: the ones marked
``crashed`` ended in "unexpected error" (exit 3), ``misled`` exited 0 as if all was well.
"""

from __future__ import annotations

import functools
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import pygit2
import pyrage
import pytest
import yaml

from gitops.agent.cycle import Cycle
from gitops.demo.scenario import DemoFleet
from gitops.protocol import Result, reports_ref
from gitops.report_commits import read_report_commit
from gitops.trust import keys
from testing import helpers
from testing.env import needs_nix
from testing.helpers import agent_settings, git, published_demo

HOSTS = {"alpha": ["workstation"], "gamma": ["server"]}


@dataclass(frozen=True)
class World:
    """A published demo fleet: alpha reads the secret `wifi`; gamma has run its agent."""

    demo: DemoFleet
    admin_identity: Path  # an age identity (an admin's)

    @property
    def repo(self) -> Path:
        return self.demo.repo_dir

    @property
    def server(self) -> Path:
        return self.demo.server

    @property
    def keys(self) -> Path:
        return self.demo.keys_dir


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    root = tmp_path_factory.mktemp("errors")
    demo = published_demo(root / "demo", HOSTS)
    demo.declare_secret("wifi", "alpha", b"psk")
    settings = yaml.safe_load((demo.repo_dir / "fleet.yaml").read_text())
    publisher = settings["publishers"][0]
    settings["commanders"] = [publisher]
    (demo.repo_dir / "fleet.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    demo.commit("secrets and commanders")
    demo.publish()
    demo.run_agent("gamma")
    identity = root / "admin.agekey"
    identity.write_text(f"{pyrage.x25519.Identity.generate()}\n")
    return World(demo, identity)


@pytest.fixture
def work(world: World, tmp_path: Path) -> Path:
    """A copy of the fleet's work tree to break."""
    copy = tmp_path / "fleet"
    shutil.copytree(world.repo, copy, symlinks=True)
    return copy


gitops = functools.partial(helpers.gitops, timeout=120)


def assert_one_clear_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 1, (done.returncode, done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "unexpected error" not in done.stderr
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith("gitops: error: "), done.stderr
    assert expected in lines[0], done.stderr


# -- the table: (id, prepare the work tree and return the arguments, expected words) ------

Args = list[str | Path]
Prepare = Callable[[World, Path, Path], Args]


def _secrets_yaml(content: bytes, *argv: str) -> Prepare:
    def prepare(world: World, work: Path, tmp: Path) -> Args:
        (work / "secrets" / "secrets.yaml").write_bytes(content)
        return [*argv, "--repo", work]

    return prepare


def _age_file_is_a_directory(*argv: str) -> Prepare:
    def prepare(world: World, work: Path, tmp: Path) -> Args:
        (work / "secrets" / "wifi.age").unlink()
        (work / "secrets" / "wifi.age").mkdir()
        identity: Args = ["--identity", world.admin_identity] if argv[1] != "list" else []
        return [*argv, "--repo", work, *identity]

    return prepare


def _repo(path: str, *argv: str) -> Prepare:
    def prepare(world: World, work: Path, tmp: Path) -> Args:
        return [*argv, "--repo", tmp / path if path else tmp]

    return prepare


def _commands_is_a_file(world: World, work: Path, tmp: Path) -> Args:
    (work / "commands").write_text("not a directory\n")
    return [
        "command",
        "reboot",
        "--host",
        "gamma",
        "--key",
        world.keys / "publisher",
        "--repo",
        work,
    ]


def _bad_command_files(world: World, work: Path, tmp: Path) -> Args:
    commands = work / "commands"
    commands.mkdir()
    (commands / "zzzzzzzzzzzz.json").write_text("{")
    (commands / "zzzzzzzzzzzz.json.sig").write_text("x")
    (commands / "yyyyyyyyyyyy.json").write_bytes(b"\xff\xfe")
    return ["check", "--no-nix", "--repo", work]


def _rotate_to(key: str) -> Prepare:
    def prepare(world: World, work: Path, tmp: Path) -> Args:
        path = tmp / "new-key"
        if key == "private":
            keys.new_keypair(path, "gamma")
        else:
            path.write_bytes(b"\xff\xfe\x00")
        return ["hosts", "rotate-key", "gamma", "--key", path, "--repo", work]

    return prepare


def _systems_file(content: bytes) -> Prepare:
    def prepare(world: World, work: Path, tmp: Path) -> Args:
        path = tmp / "systems.json"
        path.write_bytes(content)
        return [
            "publish",
            "--repo",
            world.repo,
            "--key",
            world.keys / "publisher",
            "--systems",
            path,
        ]

    return prepare


def _feed(content: bytes) -> Prepare:
    def prepare(world: World, work: Path, tmp: Path) -> Args:
        path = tmp / "nvdcve-2.0-2026.json"
        path.write_bytes(content)
        return ["vulns", "--repo", world.server, "--feed", path]

    return prepare


DEEP = b"[" * 200_000
BROKEN_SECRETS = {
    "a list": (b"- wifi\n", "expected a mapping"),
    "duplicate keys": (b"wifi: {hosts: [alpha]}\nwifi: {hosts: [gamma]}\n", "duplicate key"),
    "hosts a number": (b"wifi: {hosts: 5}\n", "wifi.hosts: must be a list"),
    "unknown host": (b"wifi: {hosts: [nope]}\n", "unknown host 'nope'"),
    "mode a boolean": (b"wifi: {hosts: [alpha], mode: true}\n", "not an octal mode"),
}

CASES: list[tuple[str, Prepare, str]] = [
    # misled: exit 0, "no secrets declared", on a directory that is no fleet at all
    ("secrets list: no such --repo", _repo("nonexistent", "secrets", "list"), "no such directory"),
    ("secrets check: --repo not a fleet", _repo("", "secrets", "check"), "not a fleet repository"),
    (
        "hosts rotate-key: no such --repo",
        _repo("nonexistent", "hosts", "rotate-key", "gamma", "--key", "/dev/null"),
        "no such directory",
    ),
    (
        "command: no such --repo",
        _repo("nonexistent", "command", "reboot", "--host", "gamma", "--key", "/dev/null"),
        "no such directory",
    ),
    # misled: secrets list and rekey skipped what a broken secrets.yaml failed to declare
    *(
        (
            f"secrets {action}: secrets.yaml {name}",
            _secrets_yaml(content, "secrets", action),
            expected,
        )
        for name, (content, expected) in BROKEN_SECRETS.items()
        for action in ("list", "rekey")
    ),
    # crashed: IsADirectoryError
    (
        "secrets list: the age file is a directory",
        _age_file_is_a_directory("secrets", "list"),
        "Is a directory",
    ),
    (
        "secrets rekey: the age file is a directory",
        _age_file_is_a_directory("secrets", "rekey"),
        "Is a directory",
    ),
    (
        "secrets edit: the age file is a directory",
        _age_file_is_a_directory("secrets", "edit", "wifi"),
        "Is a directory",
    ),
    # crashed: FileExistsError
    ("command: commands/ is a file", _commands_is_a_file, "cannot write the command there"),
    ("hosts rotate-key: a private key", _rotate_to("private"), "is a private key"),
    ("hosts rotate-key: non-UTF-8 key", _rotate_to("binary"), "cannot read the new public key"),
    # crashed: RecursionError (before: "not JSON" for some, a crash for deep nesting)
    ("publish --systems: nested too deep", _systems_file(DEEP), "nested too deep"),
    ("publish --systems: not UTF-8", _systems_file(b"\xff\xfe"), "not UTF-8"),
    ("publish --systems: a list", _systems_file(b"[1]"), "not a systems file"),
    ("vulns --feed: nested too deep", _feed(DEEP), "nested too deep"),
    ("vulns --feed: not gzip", _feed(b"\x1f\x8bxx"), "not a readable NVD CVE JSON feed"),
    # misled: an empty table for a typo'd tag
    (
        "status --tag: no such tag",
        lambda world, work, tmp: ["status", "--repo", world.server, "--tag", "nope"],
        "no host in main has this tag",
    ),
    (
        "check --eval --jobs 0",
        lambda world, work, tmp: ["check", "--eval", "--jobs", "0", "--repo", work],
        "--jobs 0",
    ),
    # already right: kept that way
    ("rollout status: not a repository", _repo("", "rollout", "status"), "not a git repository"),
    ("enroll list: not a repository", _repo("", "enroll", "list"), "not a git repository"),
    (
        "escrow show: unknown host",
        lambda world, work, tmp: ["escrow", "show", "nope", "--repo", world.server],
        "not a host",
    ),
    (
        "command: passphrase-protected key without an agent",
        lambda world, work, tmp: [
            "command",
            "reboot",
            "--host",
            "gamma",
            "--key",
            world.keys / "publisher.pub",
            "--repo",
            work,
        ],
        "SSH_AUTH_SOCK",
    ),
    (
        "sbom: unknown host",
        lambda world, work, tmp: ["sbom", "nope", "--repo", world.server],
        "not in main's hosts/",
    ),
    (
        "build --jobs 0",
        lambda world, work, tmp: ["build", "--jobs", "0", "--repo", world.repo],
        "--jobs 0",
    ),
]


@pytest.mark.parametrize(("prepare", "expected"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_bad_input_to_new_commands_is_one_clear_line(
    world: World, work: Path, tmp_path: Path, prepare: Prepare, expected: str
) -> None:
    args = prepare(world, work, tmp_path)
    env = {"EDITOR": "true", "SSH_AUTH_SOCK": ""}
    assert_one_clear_line(gitops(*args, env=env), expected)


def test_check_lists_command_files_publish_would_skip_and_hosts_refuse(
    world: World, work: Path, tmp_path: Path
) -> None:
    """Before, ``gitops check`` passed them (publish only warned, hosts refused them)."""
    done = gitops(*_bad_command_files(world, work, tmp_path))
    assert done.returncode == 1 and "unexpected error" not in done.stderr, done.stderr
    assert "commands/yyyyyyyyyyyy.json: has no signature" in done.stderr
    assert "commands/zzzzzzzzzzzz.json: not JSON" in done.stderr


# -- agent state files: never a crash, the cycle goes on and says what is wrong -----------

STATE_FILES = {
    "commands.json a list": ("commands.json", b"[1]", "corrupt command state"),
    "commands.json not UTF-8": ("commands.json", b"\xff", "not UTF-8"),
    "commands.json nested too deep": ("commands.json", DEEP, "nested too deep"),
    "commands.json a directory": ("commands.json", None, "cannot read the command state"),
    "reboot.json nested too deep": ("reboot.json", DEEP, "nested too deep"),
    "reboot.json a directory": ("reboot.json", None, "Is a directory"),
}


@pytest.mark.parametrize(
    ("name", "content", "expected"), STATE_FILES.values(), ids=list(STATE_FILES)
)
def test_corrupt_agent_state_files_are_a_logged_line_not_a_crash(
    world: World, tmp_path: Path, name: str, content: bytes | None, expected: str
) -> None:
    machine = tmp_path / "gamma"
    shutil.copytree(world.demo.machines / "gamma", machine, symlinks=True)
    config = replace(
        world.demo.agent_config("gamma"),
        root=machine,
        state_dir=machine / "var" / "lib" / "gitops-agent",
    )
    path = config.state_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.is_file():
        path.unlink()
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    data = {**agent_settings(config), "health": {"grace": 0}}
    config_file = tmp_path / "agent.yaml"
    config_file.write_text(yaml.safe_dump(data))
    done = gitops("agent", "--config", config_file, "once", "--report")
    assert "unexpected error" not in done.stderr and "Traceback" not in done.stderr, done.stderr
    assert expected in done.stderr, done.stderr


# -- escrow show: an unsigned commit on reports/<host> cannot block the admins -------------


@needs_nix
def test_escrow_show_skips_unsigned_escrow_commits_and_uses_the_hosts_newest(
    world: World, tmp_path: Path
) -> None:
    demo = world.demo
    admin = pyrage.x25519.Identity.from_str(world.admin_identity.read_text().strip())
    recovery = tmp_path / "luks-recovery.key"
    recovery.write_text("RECOVERY-REAL\n")
    config = replace(
        demo.agent_config("gamma"),
        escrow=(("luks-recovery", recovery),),
        escrow_recipients=(str(admin.to_public()),),
    )
    assert Cycle(config, force_report=True).run().result in (Result.APPLIED, Result.UNCHANGED)
    clone = tmp_path / "clone"
    git("clone", "-q", "--bare", demo.server, clone, cwd=tmp_path)
    repo = pygit2.Repository(str(clone))
    head = repo.references[reports_ref("gamma")].peel(pygit2.Commit)
    assert read_report_commit(repo, head.id).escrow  # the host's own, signed
    # Someone who can push adds an unsigned commit whose escrow file says something else,
    # and a second file, which made 'show' ask for --name before.
    fake = pyrage.encrypt(b"RECOVERY-FAKE\n", [admin.to_public()])
    builder = repo.TreeBuilder(head.tree)
    escrow_tree = repo.TreeBuilder()
    escrow_tree.insert("luks-recovery.age", repo.create_blob(fake), pygit2.GIT_FILEMODE_BLOB)
    escrow_tree.insert("other.age", repo.create_blob(fake), pygit2.GIT_FILEMODE_BLOB)
    builder.insert("escrow", escrow_tree.write(), pygit2.GIT_FILEMODE_TREE)
    who = pygit2.Signature("Mallory", "mallory@example.org")
    repo.create_commit(reports_ref("gamma"), who, who, "report gamma", builder.write(), [head.id])
    done = gitops("escrow", "show", "gamma", "--repo", clone, "--identity", world.admin_identity)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "RECOVERY-REAL\n"
    assert "not signed by gamma's key" in done.stderr and "skipped" in done.stderr
    # With only unsigned escrow commits, one line says so.
    only_fake = tmp_path / "only-fake"
    git("init", "-q", "--bare", only_fake, cwd=tmp_path)
    git("push", "-q", only_fake, "refs/heads/main:refs/heads/main", cwd=clone)
    lone = pygit2.Repository(str(only_fake))
    lone_tree = lone.TreeBuilder()
    lone_tree.insert(
        "escrow", _copy_tree(repo, lone, builder.write(), "escrow"), pygit2.GIT_FILEMODE_TREE
    )
    lone.create_commit(reports_ref("gamma"), who, who, "report gamma", lone_tree.write(), [])
    refused = gitops(
        "escrow", "show", "gamma", "--repo", only_fake, "--identity", world.admin_identity
    )
    assert refused.returncode == 1, refused.stderr
    last = refused.stderr.strip().splitlines()[-1]
    assert last.startswith("gitops: error: reports/gamma: no escrow file signed by gamma's key")


def _copy_tree(
    source: pygit2.Repository, target: pygit2.Repository, tree_id: pygit2.Oid, name: str
) -> pygit2.Oid:
    subtree = source[tree_id].peel(pygit2.Tree)[name].peel(pygit2.Tree)
    builder = target.TreeBuilder()
    for entry in subtree:
        blob = target.create_blob(source[entry.id].peel(pygit2.Blob).data)
        builder.insert(str(entry.name), blob, entry.filemode)
    return builder.write()
