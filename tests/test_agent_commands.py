"""Signed commands and reboot windows, end to end: ``gitops command`` writes a signed command
into main, publish copies it into the host's deploy tree, the agent (real git, real
signatures, stand-in Nix systems) runs it once and acknowledges it in its signed report.

Stand-in machines record reboots, power-offs, garbage collections and journal reads in
``<machine>/var/log/gitops-actions.log`` instead of doing them (gitops.system.host).
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml

from gitops.agent.commands import STATE_FILE as COMMANDS_STATE
from gitops.agent.config import AgentConfig
from gitops.agent.cycle import Cycle, CycleResult
from gitops.commands import command_cmd
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet, git
from gitops.protocol import CommandName, Result, deploy_ref, format_time
from gitops.system import nix
from gitops.system.host import STANDIN_INHIBITORS, STANDIN_JOURNAL, recorded_actions
from gitops.trust import keys
from testing.helpers import published_demo, remote_reports

HOSTS = {"alpha": ["workstation"], "beta": ["workstation"], "gamma": ["server"]}
ADMIN = "alice@example.org"
MALLORY = "mallory@example.org"


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    fleet = published_demo(tmp_path / "demo", HOSTS)
    for name in ("admin", "mallory"):
        keys.new_keypair(fleet.keys_dir / name, name)
    # Hosts trust only the admin for commands (their own configuration, not the branch).
    admin_public = (fleet.keys_dir / "admin.pub").read_text().split()[:2]
    (fleet.keys_dir / "commanders.allowed_signers").write_text(
        f'{ADMIN} namespaces="gitops-command" {" ".join(admin_public)}\n'
    )
    settings = yaml.safe_load((fleet.repo_dir / "fleet.yaml").read_text())
    settings["commanders"] = [
        {"principal": ADMIN, "key": " ".join(admin_public)},
        {
            "principal": MALLORY,
            "key": " ".join((fleet.keys_dir / "mallory.pub").read_text().split()[:2]),
        },
    ]
    settings["checks"] = {
        "marker": {"command": ["/bin/sh", "-c", "echo checked; test ! -e /nonexistent"]},
        "broken": {"command": ["/bin/false"], "timeout": "5s"},
    }
    settings["reboot"] = {
        "allow": False,
        "profiles": {
            "server": {"allow": True, "window": "Mon-Fri 02:00-05:00", "timezone": "Europe/Berlin"}
        },
    }
    (fleet.repo_dir / "fleet.yaml").write_text(yaml.safe_dump(settings, sort_keys=False))
    fleet.commit("commanders, checks and reboot policy")
    git("push", "-q", "origin", "main", cwd=fleet.repo_dir)
    fleet.publish()
    return fleet


def config(demo: DemoFleet, host: str) -> AgentConfig:
    return replace(
        demo.agent_config(host),
        trusted_commanders=demo.keys_dir / "commanders.allowed_signers",
    )


def run(demo: DemoFleet, host: str, clock: Callable[[], datetime] | None = None) -> CycleResult:
    if clock is None:
        return Cycle(config(demo, host)).run()
    return Cycle(config(demo, host), clock=clock).run()


def issue(demo: DemoFleet, name: str, *hosts: str, key: str = "admin", **extra: Any) -> str:
    """``gitops command`` in the admins' clone, committed and published; the command id."""
    request = command_cmd.CommandRequest(
        repo=demo.repo_dir,
        name=CommandName(name),
        hosts=hosts,
        tags=(),
        key=demo.keys_dir / key,
        **extra,
    )
    directory = demo.repo_dir / "commands"
    before = set(directory.glob("*.json"))
    command_cmd.issue(request, as_json=True)
    (written,) = set(directory.glob("*.json")) - before
    demo.commit(f"command {name}")
    git("push", "-q", "origin", "main", cwd=demo.repo_dir)
    demo.publish()
    return written.name.removesuffix(".json")


def acks(demo: DemoFleet, host: str) -> list[dict[str, Any]]:
    return [a.to_dict() for r in remote_reports(demo, host) for a in r.commands]


def actions(demo: DemoFleet, host: str) -> list[str]:
    return [str(a["action"]) for a in recorded_actions(demo.machines / host)]


def test_collect_logs_runs_once_and_is_acknowledged_in_a_signed_report(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo, "alpha").result is Result.APPLIED
    journal = demo.machines / "alpha" / STANDIN_JOURNAL
    journal.parent.mkdir(parents=True, exist_ok=True)
    journal.write_text(
        "".join(f"Dec 06 10:{i:02d} alpha sshd[1]: line {i}\n" for i in range(60))
        + "Dec 06 11:00 alpha cron[2]: not asked for\n"
    )
    command_id = issue(demo, "collect-logs", "alpha", units=("sshd",), max_bytes=200)
    builds: list[object] = []
    monkeypatch.setattr(nix, "build_flake", lambda *a, **k: builds.append(a))

    result = run(demo, "alpha")

    assert result.result is Result.UNCHANGED, result.reason
    assert "only gitops-control/ changed" in result.reason
    assert builds == []  # a command alone builds nothing
    (ack,) = acks(demo, "alpha")
    assert ack["id"] == command_id
    assert ack["outcome"] == "done"
    assert "sshd" in ack["output"] and "cron" not in ack["output"]
    assert len(ack["output"].encode()) <= 200
    assert ack["output"].endswith("line 59\n")
    assert actions(demo, "alpha") == ["journal"]

    # Executed once: later cycles (and a forced report) neither run nor acknowledge it again.
    assert run(demo, "alpha").result is Result.UNCHANGED
    Cycle(config(demo, "alpha"), force_report=True).run()
    assert [a["id"] for a in acks(demo, "alpha")] == [command_id]
    assert actions(demo, "alpha") == ["journal"]
    # Only the named host receives it.
    beta_tree = git("ls-tree", "-r", "--name-only", deploy_ref("beta"), cwd=demo.server)
    assert "gitops-control/commands" not in beta_tree
    assert "gitops-control/settings.json" in beta_tree


def test_run_check_runs_the_configured_check_and_reboot_waits_for_the_report(
    demo: DemoFleet,
) -> None:
    run(demo, "beta")
    ok = issue(demo, "run-check", "beta", check="marker")
    bad = issue(demo, "run-check", "beta", check="broken")
    reboot = issue(demo, "reboot", "beta")
    result = run(demo, "beta")
    assert result.push is not None and result.push.pushed
    by_id = {a["id"]: a for a in acks(demo, "beta")}
    assert by_id[ok]["outcome"] == "done" and "checked" in by_id[ok]["output"]
    assert by_id[bad]["outcome"] == "failed"
    assert by_id[reboot]["outcome"] == "done"
    # The report acknowledging the reboot is on the server before the (recorded) reboot.
    assert actions(demo, "beta") == ["wall", "reboot"]
    run(demo, "beta")
    assert actions(demo, "beta") == ["wall", "reboot"]


def test_expired_foreign_and_replayed_commands_are_refused_and_reported(
    demo: DemoFleet,
) -> None:
    run(demo, "alpha")
    # Signed by a key fleet.yaml lists but this host does not trust for commands.
    foreign = issue(demo, "poweroff", "alpha", key="mallory")
    # Valid for a minute; the host looks an hour later.
    expired = issue(demo, "gc", "alpha", expires="1m")
    later = datetime.now(UTC) + timedelta(hours=1)
    run(demo, "alpha", clock=lambda: later)
    by_id = {a["id"]: a for a in acks(demo, "alpha")}
    assert by_id[foreign]["outcome"] == "refused"
    assert "signature refused" in by_id[foreign]["detail"]
    assert by_id[expired]["outcome"] == "refused"
    assert "expired" in by_id[expired]["detail"]
    assert actions(demo, "alpha") == []  # nothing executed

    # A replay: a command that ran, was withdrawn, and comes back.
    done = issue(demo, "gc", "alpha")
    run(demo, "alpha")
    assert actions(demo, "alpha") == ["gc"]
    saved = {p.name: p.read_bytes() for p in (demo.repo_dir / "commands").glob(f"{done}*")}
    for name in saved:
        (demo.repo_dir / "commands" / name).unlink()
    demo.commit("withdraw")
    git("push", "-q", "origin", "main", cwd=demo.repo_dir)
    demo.publish()
    run(demo, "alpha")
    for name, data in saved.items():
        (demo.repo_dir / "commands" / name).write_bytes(data)
    demo.commit("replay")
    git("push", "-q", "origin", "main", cwd=demo.repo_dir)
    demo.publish()
    run(demo, "alpha")
    assert actions(demo, "alpha") == ["gc"]
    replayed = [a for a in acks(demo, "alpha") if a["id"] == done]
    assert [a["outcome"] for a in replayed] == ["done", "refused"]
    assert "replay" in replayed[-1]["detail"]


def test_the_executed_ids_survive_and_a_corrupt_record_fails_closed(demo: DemoFleet) -> None:
    run(demo, "alpha")
    issue(demo, "gc", "alpha")
    state = config(demo, "alpha").state_dir / COMMANDS_STATE
    state.parent.mkdir(parents=True, exist_ok=True)
    state.write_text("{not json")
    run(demo, "alpha")
    assert actions(demo, "alpha") == []  # refuses to run anything without its record
    state.unlink()
    run(demo, "alpha")
    assert actions(demo, "alpha") == ["gc"]
    assert json.loads(state.read_text())["handled"]


# -- reboots when needed, when allowed ---------------------------------------------------

# Monday 2026-12-07: 01:30 UTC is 02:30 in Berlin (inside Mon-Fri 02:00-05:00), 12:00 is not.
INSIDE = datetime(2026, 12, 7, 1, 30, tzinfo=UTC)
OUTSIDE = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)


def new_kernel(demo: DemoFleet, host: str, version: str) -> None:
    demo.merge_change(
        {
            f"hosts/{host}/configuration.nix": standin.host_configuration(
                HOSTS[host], {"kernel": f'"{version}"'}
            )
        },
        f"{host}: kernel {version}",
    )
    demo.publish()


def test_a_new_kernel_reboots_only_inside_the_window_after_the_report_says_so(
    demo: DemoFleet,
) -> None:
    assert run(demo, "gamma", clock=lambda: OUTSIDE - timedelta(hours=1)).result is Result.APPLIED
    new_kernel(demo, "gamma", "6.13.1")
    assert run(demo, "gamma", clock=lambda: OUTSIDE).result is Result.APPLIED
    assert remote_reports(demo, "gamma")[-1].reboot_needed_since == OUTSIDE
    assert actions(demo, "gamma") == []  # outside the window: no reboot

    # Inside the window, but a shutdown inhibitor holds it.
    inhibitors = demo.machines / "gamma" / STANDIN_INHIBITORS
    inhibitors.write_text("backup (restic): a backup is running\n")
    run(demo, "gamma", clock=lambda: INSIDE + timedelta(days=7))
    assert actions(demo, "gamma") == []
    inhibitors.unlink()

    inside = INSIDE + timedelta(days=14)
    result = run(demo, "gamma", clock=lambda: inside)
    newest = remote_reports(demo, "gamma")[-1]
    assert newest.time == inside and newest.reboot_needed_since == OUTSIDE  # said, then done
    assert result.push is not None and result.push.pushed
    assert actions(demo, "gamma") == ["wall", "reboot"]
    wall = recorded_actions(demo.machines / "gamma")[0]
    assert "reboots now" in str(wall["message"])

    # After the (stand-in) reboot the booted kernel is the current one: nothing needed.
    Cycle(config(demo, "gamma"), clock=lambda: inside + timedelta(hours=1), force_report=True).run()
    assert remote_reports(demo, "gamma")[-1].reboot_needed_since is None
    assert actions(demo, "gamma") == ["wall", "reboot"]


def test_a_host_whose_policy_does_not_allow_reboots_only_reports(demo: DemoFleet) -> None:
    run(demo, "alpha", clock=lambda: OUTSIDE)
    new_kernel(demo, "alpha", "6.13.2")
    run(demo, "alpha", clock=lambda: INSIDE + timedelta(days=7))
    assert remote_reports(demo, "alpha")[-1].reboot_needed_since == INSIDE + timedelta(days=7)
    assert actions(demo, "alpha") == []


def test_the_site_lists_pending_and_done_commands_and_reboot_needed_since(
    demo: DemoFleet, tmp_path: Path
) -> None:
    earlier = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=1)  # not future
    for host in HOSTS:
        run(demo, host, clock=lambda: earlier - timedelta(hours=1))
    command_id = issue(demo, "collect-logs", "alpha", "beta", units=("sshd",))
    run(demo, "alpha")
    new_kernel(demo, "gamma", "6.13.3")
    run(demo, "gamma", clock=lambda: earlier)
    site = tmp_path / "site"
    demo.build_site(site)

    data = json.loads((site / "commands.json").read_text())
    (entry,) = data["commands"]
    assert entry["id"] == command_id
    assert entry["hosts"]["alpha"]["status"] == "done"
    assert entry["hosts"]["beta"]["status"] == "pending"
    assert data["totals"]["done"] == 1 and data["totals"]["pending"] == 1
    page = (site / "commands.html").read_text()
    assert command_id in page and 'class="cmd-pending"' in page
    alpha = (site / "hosts" / "alpha.html").read_text()
    assert command_id in alpha and "collect-logs" in alpha
    gamma = json.loads((site / "hosts" / "gamma.json").read_text())
    assert gamma["host"]["reboot_needed_since"] == format_time(earlier)
    assert "reboot needed since" in (site / "hosts" / "gamma.html").read_text()
