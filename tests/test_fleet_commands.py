"""fleet.yaml/host.yaml ``commanders``, ``checks`` and ``reboot``: validated with clear
errors and resolved per host; ``gitops command`` refuses what hosts would refuse; publish
delivers only signed, unexpired commands to the hosts they name."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
import pytest
import yaml

from gitops.errors import GitopsError
from gitops.fleet import commands
from gitops.fleet.model import Fleet, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.protocol import CONTROL_COMMANDS_DIR, CommandName, HostControl, RebootPolicy
from gitops.publish.plan import make_plan
from gitops.trust import keys
from testing.helpers import commit_all, init_repo, make_key, write_fleet

HOSTS = {"web-1": ["server"], "desk-1": ["workstation"], "desk-2": ["workstation"]}
NOW = datetime(2026, 12, 6, 10, 0, tzinfo=UTC)


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    root = init_repo(tmp_path / "fleet")
    host_keys = {name: make_key("ed25519") for name in HOSTS}
    keys.new_keypair(tmp_path / "admin", "admin")
    keys.new_keypair(tmp_path / "stranger", "stranger")
    write_fleet(
        root,
        publisher=make_key("ed25519"),
        hosts=HOSTS,
        host_keys=host_keys,
        machines=tmp_path / "machines",
        extra_fleet={
            "commanders": [
                {
                    "principal": "alice@example.org",
                    "key": " ".join((tmp_path / "admin.pub").read_text().split()[:2]),
                }
            ],
            "checks": {"disk": {"command": ["/bin/true"], "timeout": "30s"}},
            "reboot": {
                "allow": False,
                "timezone": "Europe/Berlin",
                "profiles": {"server": {"allow": True, "window": "Mon-Fri 02:00-05:00"}},
            },
        },
    )
    tag = root / "hosts" / "desk-2" / "host.yaml"
    data = yaml.safe_load(tag.read_text())
    tag.write_text(yaml.safe_dump({**data, "tags": ["lobby"], "reboot": {"window": "any"}}))
    commit_all(root, "fleet")
    return root


def fleet_of(root: Path) -> tuple[Fleet, Problems]:
    problems = Problems()
    return load_fleet(DirSource(root), problems), problems


def test_reboot_policies_resolve_host_over_profile_over_fleet(repo: Path) -> None:
    fleet, problems = fleet_of(repo)
    assert not problems, problems.lines()
    policy, hosts = fleet.reboot_policy, fleet.hosts
    assert policy(hosts["web-1"]) == RebootPolicy(True, "Mon-Fri 02:00-05:00", "Europe/Berlin")
    assert policy(hosts["desk-1"]) == RebootPolicy(False, None, "Europe/Berlin")
    assert policy(hosts["desk-2"]) == RebootPolicy(False, None, "Europe/Berlin")
    control = fleet.host_control(hosts["web-1"])
    assert isinstance(control, HostControl) and set(control.checks) == {"disk"}


@pytest.mark.parametrize(
    ("reboot", "message"),
    [
        ({"window": "Mon-Fry 02:00-05:00"}, "reboot.window"),
        ({"timezone": "Mars/Olympus"}, "reboot.timezone"),
        ({"allow": "yes please"}, "reboot.allow"),
        ({"profiles": {"nosuch": {"allow": True}}}, "unknown profile 'nosuch'"),
        ({"alow": True}, "reboot.alow"),
    ],
)
def test_a_bad_reboot_policy_is_a_clear_problem(
    repo: Path, reboot: dict[str, object], message: str
) -> None:
    path = repo / "fleet.yaml"
    data = yaml.safe_load(path.read_text())
    data["reboot"] = reboot
    path.write_text(yaml.safe_dump(data))
    _, problems = fleet_of(repo)
    assert any(message in line for line in problems.lines()), problems.lines()


def test_a_bad_host_reboot_window_names_the_host_file(repo: Path) -> None:
    path = repo / "hosts" / "desk-1" / "host.yaml"
    data = yaml.safe_load(path.read_text())
    path.write_text(yaml.safe_dump({**data, "reboot": {"window": "02:00"}}))
    _, problems = fleet_of(repo)
    (line,) = [p for p in problems.lines() if "desk-1" in p]
    assert "reboot.window" in line and "host.yaml" in line


def test_issue_refuses_what_hosts_would_refuse(repo: Path, tmp_path: Path) -> None:
    fleet, _ = fleet_of(repo)
    admin = keys.load_signing_key(tmp_path / "admin")
    stranger = keys.load_signing_key(tmp_path / "stranger")
    assert commands.select_hosts(fleet, (), ("lobby",)) == ("desk-2",)
    with pytest.raises(GitopsError, match="unknown host"):
        commands.select_hosts(fleet, ("nope",), ())
    with pytest.raises(GitopsError, match=r"not in fleet\.yaml 'commanders'"):
        commands.issue(fleet, CommandName.GC, ("web-1",), stranger, now=NOW, expires_in=60)
    with pytest.raises(GitopsError, match="no check 'smart'"):
        commands.issue(
            fleet, CommandName.RUN_CHECK, ("web-1",), admin, now=NOW, expires_in=60, check="smart"
        )
    with pytest.raises(GitopsError, match="--expires"):
        commands.issue(fleet, CommandName.GC, ("web-1",), admin, now=NOW, expires_in=40 * 86400)


def _tree_paths(repo: pygit2.Repository, tree_id: pygit2.Oid) -> set[str]:
    tree = repo.get(tree_id)
    assert isinstance(tree, pygit2.Tree)
    found = set()
    stack = [("", tree)]
    while stack:
        prefix, node = stack.pop()
        for entry in node:
            path = f"{prefix}{entry.name}"
            if isinstance(entry, pygit2.Tree):
                stack.append((path + "/", entry))
            else:
                found.add(path)
    return found


def test_publish_delivers_signed_unexpired_commands_to_the_named_hosts_only(
    repo: Path, tmp_path: Path
) -> None:
    fleet, _ = fleet_of(repo)
    admin = keys.load_signing_key(tmp_path / "admin")
    reboot = commands.issue(fleet, CommandName.REBOOT, ("web-1",), admin, now=NOW, expires_in=3600)
    commands.write(repo, reboot)
    short = commands.issue(fleet, CommandName.GC, ("desk-1",), admin, now=NOW, expires_in=60)
    commands.write(repo, short)
    (repo / "commands" / "20261206-100000-gc-forged.json").write_text("{}")
    commit_all(repo, "commands")
    repository = pygit2.Repository(str(repo))

    plan = make_plan(repository, "HEAD", now=NOW + timedelta(seconds=30))
    trees = {h.host: _tree_paths(repository, h.new_tree) for h in plan.hosts}
    web = f"{CONTROL_COMMANDS_DIR}/{reboot.file_name}"
    assert {web, f"{web}.sig"} <= trees["web-1"]
    assert f"{CONTROL_COMMANDS_DIR}/{short.file_name}" in trees["desk-1"]
    assert not any(CONTROL_COMMANDS_DIR in p for p in trees["desk-2"])
    assert not any("forged" in p for t in trees.values() for p in t)
    assert "gitops-control/settings.json" in trees["desk-2"]

    later = make_plan(repository, "HEAD", now=NOW + timedelta(minutes=5))
    desk = next(h for h in later.hosts if h.host == "desk-1")
    assert not any(CONTROL_COMMANDS_DIR in p for p in _tree_paths(repository, desk.new_tree))


def test_a_fleet_without_commands_or_policies_keeps_its_deploy_trees(tmp_path: Path) -> None:
    root = init_repo(tmp_path / "plain")
    write_fleet(
        root,
        publisher=make_key("ed25519"),
        hosts={"web-1": ["server"]},
        host_keys={"web-1": make_key("ed25519")},
        machines=tmp_path / "machines",
    )
    commit_all(root, "fleet")
    repository = pygit2.Repository(str(root))
    (plan,) = make_plan(repository, "HEAD").hosts
    assert not any(p.startswith("gitops-control") for p in _tree_paths(repository, plan.new_tree))


def test_the_command_line_writes_a_verifiable_command_and_says_what_is_wrong(
    repo: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from gitops.cli import main
    from testing.ssh import keygen_verify

    base = ["command", "--repo", str(repo), "--key", str(tmp_path / "admin")]
    with pytest.raises(SystemExit) as exited:
        main([*base[:1], "collect-logs", *base[1:], "--tag", "lobby", "--unit", "sshd", "--json"])
    assert exited.value.code == 0
    out = json.loads(capsys.readouterr().out)
    assert out["hosts"] == ["desk-2"] and out["name"] == "collect-logs"
    payload, signature = (Path(f) for f in out["files"])
    # ssh-keygen, an independent implementation, accepts the signature for this namespace.
    signers = tmp_path / "commanders"
    signers.write_text(
        "alice@example.org " + " ".join((tmp_path / "admin.pub").read_text().split()[:2]) + "\n"
    )
    verdict = keygen_verify(
        signers,
        signature,
        payload.read_bytes(),
        principal="alice@example.org",
        namespace="gitops-command",
    )
    assert verdict.returncode == 0, verdict.stderr

    with pytest.raises(SystemExit) as exited:
        main([*base[:1], "run-check", *base[1:], "--host", "web-1"])
    assert exited.value.code == 1
    assert "needs the check's name" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exited:
        main([*base[:1], "reboot", *base[1:], "--host", "web-1", "--expires", "soon"])
    assert exited.value.code == 1
    assert "--expires" in capsys.readouterr().err


def test_shutdown_inhibitors_are_read_from_systemd_inhibit_output() -> None:
    from gitops.system.host import parse_inhibitors

    listing = (
        "NetworkManager 0 root 812 NetworkManager sleep NetworkManager needs to turn off networks delay\n"
        "restic 0 root 4242 restic shutdown:sleep Backup is running block\n"
        "GNOME Shell 1000 anna 2001 gnome-shell handle-power-key Handling keys block\n"
    )
    (found,) = parse_inhibitors(listing)
    assert found.startswith("restic (restic)") and "Backup is running" in found


def test_a_command_that_lies_about_its_signer_is_neither_delivered_nor_listed_as_one(
    repo: Path, tmp_path: Path
) -> None:
    """A command file in main (merged by pull request) signed by a stranger, or by a
    commander but naming another issuer: hosts refuse both, so publish does not deliver
    them and the site lists them as invalid, never as "pending, issued by alice"."""
    from dataclasses import replace

    from gitops.protocol import COMMAND_NAMESPACE
    from gitops.trust.sshsig import sign

    fleet, _ = fleet_of(repo)
    admin = keys.load_signing_key(tmp_path / "admin")
    good = commands.issue(fleet, CommandName.GC, ("web-1",), admin, now=NOW, expires_in=3600)
    lying = replace(good.command, id=good.command.id[:-8] + "0badc0de", issuer="bob@example.org")
    payload = lying.to_json().encode()
    liar = commands.SignedCommand(
        lying, payload, sign(payload, admin, namespace=COMMAND_NAMESPACE).encode()
    )
    stranger_key = keys.load_signing_key(tmp_path / "stranger")
    foreign = replace(good.command, id=good.command.id[:-8] + "0000f00d")
    payload = foreign.to_json().encode()
    stranger = commands.SignedCommand(
        foreign, payload, sign(payload, stranger_key, namespace=COMMAND_NAMESPACE).encode()
    )
    for signed in (good, liar, stranger):
        commands.write(repo, signed)
    commit_all(repo, "commands")
    found = commands.load(DirSource(repo))
    listed = commands.checked(fleet.settings.commander_trust(), found)
    ok = [c.command.id for c in listed if isinstance(c, commands.SignedCommand)]
    bad = {c.path: c.reason for c in listed if isinstance(c, commands.BadCommand)}
    assert ok == [good.command.id]
    assert "says it was issued by bob@example.org" in bad[f"commands/{liar.file_name}"]
    assert "signature refused" in bad[f"commands/{stranger.file_name}"]
    delivered = commands.deliverable(fleet, found, NOW + timedelta(seconds=1))
    assert [c.command.id for c in delivered["web-1"]] == [good.command.id]
