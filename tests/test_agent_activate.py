"""Activation as a transaction, tried the way an unlucky host would meet it: builds and
switches that never end, an agent killed half-way, a network blip after a good switch,
boot-mode hosts that only show their health after a reboot.

Real git, real signatures, real Nix builds, profiles and generations (the stand-in systems
of gitops.demo.standin); the agent runs in-process or through ``python -m gitops``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml

from gitops.agent.config import AgentConfig
from gitops.agent.cycle import Cycle, CycleResult
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet
from gitops.protocol import Report, Result, reports_ref
from gitops.report_commits import read_report_commit, walk_reports
from gitops.system import nix, process
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from testing.helpers import public_line, published_demo

HOSTS = {"alpha": ["workstation"], "gamma": ["server"]}


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


def run(
    demo: DemoFleet, host: str, config: AgentConfig | None = None, **options: Any
) -> CycleResult:
    return Cycle(config or demo.agent_config(host), **options).run()


def gitops(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitops", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )


def write_config(demo: DemoFleet, host: str, **settings: object) -> Path:
    """The host's agent configuration as a file for ``gitops agent --config``."""
    config = demo.agent_config(host)
    data: dict[str, object] = {
        "host": config.host,
        "remote": config.remote,
        "trusted_publishers": str(config.trusted_publishers),
        "signing_key": str(config.signing_key),
        "state_dir": str(config.state_dir),
        "system_profile": str(config.system_profile),
        "root": str(config.root),
        "health": {"grace": 0, "commands": [list(config.health.commands[0])]},
    }
    data.update(settings)
    path = demo.root / f"{host}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def change(demo: DemoFleet, host: str, **settings: str) -> None:
    demo.merge_change(
        {f"hosts/{host}/configuration.nix": standin.host_configuration(HOSTS[host], settings)},
        f"{host}: change",
    )
    demo.publish()


def current_system(demo: DemoFleet, host: str) -> Path | None:
    link = demo.machines / host / "run" / "current-system"
    return link.resolve() if link.is_symlink() else None


def generations(demo: DemoFleet, host: str) -> list[int]:
    return [g.number for g in nix.generations(demo.agent_config(host).system_profile)]


def remote_reports(demo: DemoFleet, host: str) -> list[Report]:
    """The host's signature-checked reports on the server, oldest first."""
    repo = pygit2.Repository(str(demo.server))
    head = commits.ref_target(repo, reports_ref(host))
    if head is None:
        return []
    trust = AllowedSigners.parse(f"{host} {public_line(demo.host_keys[host])}\n")
    found = []
    for oid in walk_reports(repo, head):
        commits.verify_commit(repo, oid, trust)
        status = read_report_commit(repo, oid).status
        assert status is not None
        found.append(Report.from_json(status))
    return list(reversed(found))


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
    config = write_config(demo, "alpha", build_timeout="2s")
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
