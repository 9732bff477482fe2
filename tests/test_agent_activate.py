"""Activation as a transaction, tried the way an unlucky host would meet it: builds and
switches that never end, an agent killed half-way, a network blip after a good switch,
boot-mode hosts that only show their health after a reboot.

Real git, real signatures, real Nix builds, profiles and generations (the stand-in systems
of gitops.demo.standin); the agent runs in-process or through ``python -m gitops``.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from gitops.agent.config import Action, AgentConfig
from gitops.agent.cycle import Cycle, CycleResult
from gitops.agent.state import StateStore
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet
from gitops.protocol import Result
from gitops.system import nix, process
from testing import helpers
from testing.helpers import agent_config_file, current_system, published_demo, remote_reports

HOSTS = {"alpha": ["workstation"], "gamma": ["server"]}


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


def run(
    demo: DemoFleet, host: str, config: AgentConfig | None = None, **options: Any
) -> CycleResult:
    return Cycle(config or demo.agent_config(host), **options).run()


gitops = functools.partial(helpers.gitops, timeout=120)


def change(demo: DemoFleet, host: str, **settings: str) -> None:
    demo.merge_change(
        {f"hosts/{host}/configuration.nix": standin.host_configuration(HOSTS[host], settings)},
        f"{host}: change",
    )
    demo.publish()


def generations(demo: DemoFleet, host: str) -> list[int]:
    return [g.number for g in nix.generations(demo.agent_config(host).system_profile)]


def processes_running(marker: str) -> list[int]:
    """Process ids whose command line contains ``marker``."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if marker in cmdline:
            found.append(int(entry.name))
    return found


def wait_until_gone(marker: str, seconds: float = 10) -> list[int]:
    deadline = time.monotonic() + seconds
    while (left := processes_running(marker)) and time.monotonic() < deadline:
        time.sleep(0.1)
    return left


# -- time limits (issue 8, hole 10) --------------------------------------------------------


def test_a_build_that_never_ends_is_stopped_and_reported(demo: DemoFleet) -> None:
    assert run(demo, "alpha").result == Result.APPLIED
    before = (current_system(demo, "alpha"), generations(demo, "alpha"))
    # The stand-in's builder runs its package list through the shell: this one never ends.
    change(demo, "alpha", packages='[ "$(/bin/sleep 3671)" ]')
    config = agent_config_file(demo, "alpha", build_timeout="2s")
    started = time.monotonic()
    done = gitops("agent", "--config", config, "once")
    assert time.monotonic() - started < 60
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("alpha: build-failed: ")
    assert "nix build timed out after 2s (build_timeout)" in done.stdout
    assert (current_system(demo, "alpha"), generations(demo, "alpha")) == before
    assert wait_until_gone("sleep 3671") == [], "the builder is stopped with nix"
    report = remote_reports(demo, "alpha")[-1]
    assert report.result == Result.BUILD_FAILED
    assert "timed out after 2s" in report.reason
    # A fix is applied at the next cycle: the agent is not blocked for good.
    change(demo, "alpha", kernel='"6.12.9"')
    assert gitops("agent", "--config", config, "once").returncode == 0


def test_a_switch_that_never_ends_is_stopped_and_undone(
    demo: DemoFleet, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo, "gamma").result == Result.APPLIED
    good = current_system(demo, "gamma")
    assert good is not None
    # The new system's activation hangs (a real process that never ends); going back to
    # the good system runs its real activation.
    hanging = tmp_path / "hanging-system"
    (hanging / "bin").mkdir(parents=True)
    script = hanging / "bin" / "switch-to-configuration"
    script.write_text("#!/bin/sh\necho starting units\nexec /bin/sleep 3673\n")
    script.chmod(0o755)
    real = nix.switch_to_configuration

    def new_system_hangs(path: Path, action: str, *, timeout: float | None = None) -> None:
        real(path if path == good else hanging, action, timeout=timeout)

    monkeypatch.setattr(nix, "switch_to_configuration", new_system_hangs)
    change(demo, "gamma", kernel='"6.12.10"')
    config = replace(demo.agent_config("gamma"), activation_timeout=1)
    result = run(demo, "gamma", config)
    assert result.result == Result.SWITCH_FAILED, result.reason
    assert "timed out after 1s (activation_timeout)" in result.reason
    assert "went back to generation 1" in result.reason
    assert current_system(demo, "gamma") == good
    assert generations(demo, "gamma") == [1]
    assert wait_until_gone("sleep 3673") == []
    assert "starting units" in remote_reports(demo, "gamma")[-1].log_tail


def test_time_limits_stop_the_whole_process_group(tmp_path: Path) -> None:
    marker = "sleep 3677"
    script = f"/bin/sh -c '/bin/{marker} & /bin/{marker}; echo never'"
    started = time.monotonic()
    with pytest.raises(process.TimedOutError, match=r"timed out after 0\.5s"):
        process.run(["/bin/sh", "-c", script], check=False, timeout=0.5)
    assert time.monotonic() - started < process.KILL_GRACE + 5
    assert wait_until_gone(marker) == [], "the grandchildren are stopped too"
    lines: list[str] = []
    with pytest.raises(process.TimedOutError) as caught:
        process.stream(
            ["/bin/sh", "-c", f"echo one >&2; echo two >&2; /bin/{marker}"],
            on_line=lines.append,
            timeout=0.5,
        )
    assert lines == ["one", "two"], "each line is handed on as it comes"
    assert caught.value.tail == ("one", "two")
    assert wait_until_gone(marker) == []


def test_streamed_output_keeps_a_bounded_tail() -> None:
    lines: list[str] = []
    result = process.stream(
        [
            "/bin/sh",
            "-c",
            "i=0; while [ $i -lt 500 ]; do echo line $i >&2; i=$((i+1)); done; echo out",
        ],
        on_line=lines.append,
        tail_lines=3,
    )
    assert result.returncode == 0
    assert len(lines) == 500
    assert result.tail == ("line 497", "line 498", "line 499")
    assert result.stdout == "out\n"
    assert json.dumps(result.tail)


# -- rollback knows where it came from (hole 11) ---------------------------------------------


def standin_check(demo: DemoFleet, host: str) -> list[str]:
    """The stand-in's own health command: fails while the system is marked unhealthy."""
    return list(demo.agent_config(host).health.commands[0])


def test_a_killed_activation_goes_back_to_the_recorded_generation(demo: DemoFleet) -> None:
    assert run(demo, "gamma").result == Result.APPLIED
    good = current_system(demo, "gamma")
    state_dir = demo.agent_config("gamma").state_dir
    marker = demo.root / "kill-the-agent-once"
    marker.touch()
    # The first health check kills the agent (as power loss or the OOM killer would) while
    # the profile points at the new, unhealthy generation and that system runs.
    kill_once = f'if [ -e "{marker}" ]; then rm "{marker}"; kill -KILL $PPID; fi'
    config = agent_config_file(
        demo, "gamma", health={"grace": 0, "commands": [kill_once, standin_check(demo, "gamma")]}
    )
    change(demo, "gamma", unhealthy="true")
    killed = gitops("agent", "--config", config, "once")
    assert killed.returncode == -9, killed.stderr
    assert generations(demo, "gamma") == [1, 2]
    assert current_system(demo, "gamma") != good
    record = json.loads((state_dir / "activation.json").read_text())
    assert record["phase"] == "activating"
    assert record["origin"]["generation"]["number"] == 1, "recorded before the profile changed"

    done = gitops("agent", "--config", config, "once")
    assert done.returncode == 1, done.stderr
    assert done.stdout.startswith("gamma: rolled-back: ")
    assert "stand-in health endpoint says unhealthy" in done.stdout
    assert "generation 2" not in done.stdout
    assert "interrupted at" in done.stdout and "went back to generation 1" in done.stdout
    assert current_system(demo, "gamma") == good
    assert generations(demo, "gamma") == [1]
    assert not (state_dir / "activation.json").exists()
    report = remote_reports(demo, "gamma")[-1]
    assert report.result == Result.ROLLED_BACK
    assert report.system.store_path == str(good)


def test_an_activation_killed_twice_is_not_tried_again(demo: DemoFleet) -> None:
    assert run(demo, "gamma").result == Result.APPLIED
    good = current_system(demo, "gamma")
    # This system's activation kills the agent, every time.
    config = agent_config_file(demo, "gamma", health={"grace": 0, "commands": ["kill -KILL $PPID"]})
    change(demo, "gamma", kernel='"6.12.11"')
    assert gitops("agent", "--config", config, "once").returncode == -9
    assert gitops("agent", "--config", config, "once").returncode == -9, "tried once more"
    done = gitops("agent", "--config", config, "once")
    assert done.returncode == 1
    assert "interrupted 2 times while activating deploy" in done.stdout
    assert "went back to generation 1" in done.stdout
    assert current_system(demo, "gamma") == good
    assert generations(demo, "gamma") == [1]
    again = gitops("agent", "--config", config, "once")
    assert "was rolled back before and is not retried" in again.stdout


def test_a_kill_before_the_profile_changed_leaves_the_system_alone(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo, "alpha").result == Result.APPLIED
    good = current_system(demo, "alpha")

    def killed(profile: Path, path: Path) -> nix.Generation:
        raise KeyboardInterrupt

    monkeypatch.setattr(nix, "set_profile", killed)
    change(demo, "alpha", kernel='"6.12.12"')
    with pytest.raises(KeyboardInterrupt):
        run(demo, "alpha")
    monkeypatch.undo()
    assert (current_system(demo, "alpha"), generations(demo, "alpha")) == (good, [1])
    result = run(demo, "alpha")
    assert result.result == Result.APPLIED, result.reason
    assert "undone: went back to generation 1" in result.reason
    assert generations(demo, "alpha") == [1, 2]


# -- transient vs unhealthy (hole 12) ------------------------------------------------------


class ServerCut:
    """Makes the git server unreachable (its directory renamed) and reachable again."""

    def __init__(self, demo: DemoFleet) -> None:
        self.server = demo.server
        self.hidden = demo.server.with_name("server.hidden")

    def cut(self) -> None:
        if self.server.exists():
            self.server.rename(self.hidden)

    def restore(self) -> None:
        if self.hidden.exists():
            self.hidden.rename(self.server)


def cut_after_switching(
    monkeypatch: pytest.MonkeyPatch, network: ServerCut, good: Path | None, *, restore: bool
) -> None:
    """Cut the network right after the new system's activation (``restore``: and bring it
    back when the good system is activated again, as if the new system had broken it)."""
    real = nix.switch_to_configuration

    def switch(path: Path, action: str, *, timeout: float | None = None) -> None:
        real(path, action, timeout=timeout)
        if path != good:
            network.cut()
        elif restore:
            network.restore()

    monkeypatch.setattr(nix, "switch_to_configuration", switch)


def test_a_network_blip_after_a_good_switch_is_retried_not_condemned(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo, "gamma").result == Result.APPLIED
    network = ServerCut(demo)
    cut_after_switching(monkeypatch, network, current_system(demo, "gamma"), restore=False)
    change(demo, "gamma", kernel='"6.12.13"')
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        network.restore()  # the blip is over by the next try

    result = run(demo, "gamma", sleep=sleep)
    assert result.result == Result.APPLIED, result.reason
    assert waits == [5]
    assert generations(demo, "gamma") == [1, 2]


def test_a_remote_that_stays_unreachable_is_not_held_against_the_deploy(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo, "gamma").result == Result.APPLIED
    good = current_system(demo, "gamma")
    network = ServerCut(demo)
    cut_after_switching(monkeypatch, network, good, restore=False)
    change(demo, "gamma", kernel='"6.12.14"')
    config = replace(
        demo.agent_config("gamma"),
        health=replace(demo.agent_config("gamma").health, remote_grace=10),
    )
    waits: list[float] = []
    try:
        result = run(demo, "gamma", config, sleep=waits.append)
    finally:
        network.restore()
    assert result.result == Result.ROLLED_BACK, result.reason
    assert "still is after going back: a network problem, not held against the deploy" in (
        result.reason
    )
    assert waits == [5, 5] * 2, "retried for remote_grace, after the switch and after going back"
    assert current_system(demo, "gamma") == good
    monkeypatch.undo()
    again = run(demo, "gamma", config)
    assert again.result == Result.APPLIED, "tried again once the network is back"
    assert [r.result for r in remote_reports(demo, "gamma")][-2:] == [
        Result.ROLLED_BACK,
        Result.APPLIED,
    ]


def test_a_deploy_that_cuts_the_host_off_is_rolled_back_and_remembered(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    assert run(demo, "gamma").result == Result.APPLIED
    good = current_system(demo, "gamma")
    cut_after_switching(monkeypatch, ServerCut(demo), good, restore=True)
    change(demo, "gamma", kernel='"6.12.15"')
    result = run(demo, "gamma", sleep=lambda _: None)
    assert result.result == Result.ROLLED_BACK, result.reason
    assert "cut this host off the git remote" in result.reason
    assert current_system(demo, "gamma") == good
    monkeypatch.undo()
    assert "not retried" in run(demo, "gamma").reason


# -- boot-mode hosts (hole 13) -------------------------------------------------------------


def reboot_into_profile(demo: DemoFleet, host: str) -> Path:
    """Stand-in for a reboot: booted-system becomes the profile's system, whose activation
    runs as at boot."""
    generation = nix.current_generation(demo.agent_config(host).system_profile)
    assert generation is not None
    booted = demo.machines / host / "run" / "booted-system"
    booted.unlink(missing_ok=True)
    booted.symlink_to(generation.path)
    switch = generation.path / "bin" / "switch-to-configuration"
    subprocess.run([switch, "test"], check=True, capture_output=True)
    return generation.path


def boot_config(demo: DemoFleet, host: str) -> AgentConfig:
    return replace(demo.agent_config(host), action=Action.BOOT)


def test_a_boot_host_reports_reboot_pending_then_checks_health_after_the_reboot(
    demo: DemoFleet,
) -> None:
    config = boot_config(demo, "alpha")
    first = run(demo, "alpha", config)
    assert first.result == Result.APPLIED
    assert "reboot pending" in first.reason
    waiting = run(demo, "alpha", config, force_report=True)
    assert waiting.result == Result.APPLIED
    assert "will run after the next reboot (reboot pending since " in waiting.reason
    assert run(demo, "alpha", config).report is None, "reported once, then heartbeats"
    system = reboot_into_profile(demo, "alpha")
    after = run(demo, "alpha", config)
    assert after.result == Result.APPLIED
    assert "healthy after the reboot" in after.reason
    assert after.report is not None, "the end of 'reboot pending' is news"
    assert after.report.system.booted_system == str(system)
    assert run(demo, "alpha", config).result == Result.UNCHANGED


def test_an_unhealthy_boot_goes_back_to_the_previous_generation(demo: DemoFleet) -> None:
    config = boot_config(demo, "gamma")
    assert run(demo, "gamma", config).result == Result.APPLIED
    good = reboot_into_profile(demo, "gamma")
    assert run(demo, "gamma", config).result == Result.APPLIED
    first_commit = StateStore(config.state_dir).load("gamma")
    assert first_commit is not None
    change(demo, "gamma", unhealthy="true")
    pending = run(demo, "gamma", config)
    assert pending.result == Result.APPLIED and "reboot pending" in pending.reason
    assert generations(demo, "gamma") == [1, 2]
    reboot_into_profile(demo, "gamma")
    result = run(demo, "gamma", config)
    assert result.result == Result.ROLLED_BACK, result.reason
    assert "was unhealthy after the reboot: health check failed" in result.reason
    assert "stand-in health endpoint says unhealthy" in result.reason
    assert "generation 1 is the boot default again: reboot to return to it" in result.reason
    assert generations(demo, "gamma") == [1]
    assert (
        nix.current_generation(config.system_profile) == nix.generations(config.system_profile)[0]
    )
    log = (demo.machines / "gamma" / "activations.log").read_text().splitlines()
    assert log[-1] == f"boot {good}", "the previous system is installed as the boot default"
    state = StateStore(config.state_dir).load("gamma")
    assert state is not None and state.applied == first_commit.applied
    assert remote_reports(demo, "gamma")[-1].result == Result.ROLLED_BACK
    assert "not retried" in run(demo, "gamma", config).reason


def test_a_profile_moved_without_a_record_goes_back_to_the_applied_system(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """An agent killed before it could keep a record (or a hand-made switch) left the
    profile on an unhealthy generation: going back goes to the system last applied."""
    assert run(demo, "gamma").result == Result.APPLIED
    good = current_system(demo, "gamma")
    real = nix.switch_to_configuration

    def killed_after_switching(path: Path, action: str, **options: Any) -> None:
        real(path, action, **options)
        raise KeyboardInterrupt

    monkeypatch.setattr(nix, "switch_to_configuration", killed_after_switching)
    change(demo, "gamma", unhealthy="true")
    with pytest.raises(KeyboardInterrupt):
        run(demo, "gamma")
    monkeypatch.undo()
    (demo.agent_config("gamma").state_dir / "activation.json").unlink(missing_ok=True)
    assert generations(demo, "gamma") == [1, 2]
    result = run(demo, "gamma")
    assert result.result == Result.ROLLED_BACK, result.reason
    assert "went back to generation 1" in result.reason
    assert current_system(demo, "gamma") == good
    assert generations(demo, "gamma") == [1]
