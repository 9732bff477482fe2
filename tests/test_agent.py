"""The agent's cycle with real git, real signatures, real Nix builds and profiles.

Each test builds a small fleet (gitops.demo.scenario.DemoFleet: a bare git server, a publisher
key, host keys, stand-in Nix systems) and runs real cycles against it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.agent.config import Action, AgentConfig
from gitops.agent.cycle import Cycle, CycleResult
from gitops.agent.mirror import REMOTE_REPORTS_REF, Mirror
from gitops.agent.state import StateStore
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet, git
from gitops.errors import GitopsError
from gitops.protocol import Result, deploy_ref, reports_ref
from gitops.system import nix
from testing.helpers import current_system, public_line, published_demo, remote_reports

HOSTS = {"alpha": ["workstation", "developer"], "beta": ["workstation"], "gamma": ["server"]}


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


def run(
    demo: DemoFleet, host: str, config: AgentConfig | None = None, **options: Any
) -> CycleResult:
    return Cycle(config or demo.agent_config(host), **options).run()


def generations(demo: DemoFleet, host: str) -> list[int]:
    return [g.number for g in nix.generations(demo.agent_config(host).system_profile)]


def count_calls(monkeypatch: pytest.MonkeyPatch, name: str) -> list[tuple[Any, ...]]:
    """Record calls to one of our own nix wrappers while still running the real thing."""
    calls: list[tuple[Any, ...]] = []
    real = getattr(nix, name)

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(nix, name, wrapper)
    return calls


def change(demo: DemoFleet, host: str, **settings: str) -> None:
    profiles = HOSTS[host]
    demo.merge_change(
        {f"hosts/{host}/configuration.nix": standin.host_configuration(profiles, settings)},
        f"{host}: change",
    )
    demo.publish()


def test_apply_switches_and_reports_signed(demo: DemoFleet) -> None:
    result = run(demo, "alpha")
    assert result.result == Result.APPLIED, result.reason
    assert "trusted on first use" in result.reason
    head = git("rev-parse", deploy_ref("alpha"), cwd=demo.server)
    system = current_system(demo, "alpha")
    assert system is not None and "-nixos-system-alpha-" in system.name
    assert generations(demo, "alpha") == [1]
    (report,) = remote_reports(demo, "alpha")
    assert report.result == Result.APPLIED
    assert report.deploy_applied == head == report.deploy_seen
    assert report.source_commit == git("rev-parse", "main", cwd=demo.server)
    assert report.system.store_path == str(system)
    assert set(report.durations) >= {"fetch", "verify", "build", "activate", "total"}
    # The tree that was built is in place for the admin to read.
    current = demo.agent_config("alpha").state_dir / "current"
    assert (current / "hosts" / "alpha" / "configuration.nix").is_file()
    assert not (current / "hosts" / "beta").exists()
    # git itself accepts the report's signature.
    signers = demo.root / "alpha.allowed_signers"
    signers.write_text(f"alpha {public_line(demo.host_keys['alpha'])}\n")
    git(
        "-c",
        f"gpg.ssh.allowedSignersFile={signers}",
        "verify-commit",
        reports_ref("alpha"),
        cwd=demo.server,
    )


def test_unchanged_reports_only_when_due(demo: DemoFleet) -> None:
    assert run(demo, "beta").result == Result.APPLIED
    again = run(demo, "beta")
    assert again.result == Result.UNCHANGED
    assert again.report is None, "nothing new and the heartbeat is not due"
    forced = run(demo, "beta", force_report=True)
    assert forced.report is not None
    later = run(demo, "beta", clock=lambda: datetime.now(UTC) + timedelta(hours=2))
    assert later.report is not None, "heartbeat after report_interval"
    assert [r.result for r in remote_reports(demo, "beta")] == [
        Result.APPLIED,
        Result.UNCHANGED,
        Result.UNCHANGED,
    ]


def test_new_commit_makes_new_generation(demo: DemoFleet) -> None:
    run(demo, "alpha")
    first = current_system(demo, "alpha")
    change(demo, "alpha", kernel='"6.12.1"')
    result = run(demo, "alpha")
    assert result.result == Result.APPLIED
    assert generations(demo, "alpha") == [1, 2]
    assert current_system(demo, "alpha") != first
    # The report says what changed, as nix store diff-closures does.
    assert remote_reports(demo, "alpha")[-1].changes == ("linux: 6.6.1 → 6.12.1",)
    assert remote_reports(demo, "alpha")[0].changes == (), "nothing to compare on first use"
    state = StateStore(demo.agent_config("alpha").state_dir).load("alpha")
    assert state is not None and state.applied == git(
        "rev-parse", deploy_ref("alpha"), cwd=demo.server
    )


def test_keep_generations(demo: DemoFleet) -> None:
    config = replace(demo.agent_config("gamma"), keep_generations=2)
    for kernel in ("6.1", "6.2", "6.3"):
        change(demo, "gamma", kernel=f'"{kernel}"')
        assert run(demo, "gamma", config).result == Result.APPLIED
    assert generations(demo, "gamma") == [2, 3]


def _assert_rejected(
    demo: DemoFleet, host: str, reason: str, config: AgentConfig | None = None
) -> None:
    before = (current_system(demo, host), generations(demo, host))
    result = run(demo, host, config)
    assert result.result == Result.REJECTED, result.reason
    assert reason in result.reason
    assert (current_system(demo, host), generations(demo, host)) == before, "nothing applied"
    assert remote_reports(demo, host)[-1].result == Result.REJECTED
    again = run(demo, host, config)
    assert again.result == Result.REJECTED and again.report is None, "reported once, not every poll"


def test_unsigned_head_is_rejected(demo: DemoFleet) -> None:
    run(demo, "alpha")
    demo.push_unsigned("alpha")
    _assert_rejected(demo, "alpha", "not signed")


def test_rolled_back_head_is_rejected(demo: DemoFleet) -> None:
    run(demo, "gamma")
    change(demo, "gamma", kernel='"6.12.2"')
    run(demo, "gamma")
    demo.push_rollback("gamma")
    _assert_rejected(demo, "gamma", "does not descend from the applied commit")


def test_commit_for_another_host_is_rejected(demo: DemoFleet) -> None:
    alpha_head = git("rev-parse", deploy_ref("alpha"), cwd=demo.server)
    git("update-ref", deploy_ref("beta"), alpha_head, cwd=demo.server)
    _assert_rejected(demo, "beta", "addressed to alpha, not beta")


def test_unknown_publisher_key_is_rejected(demo: DemoFleet) -> None:
    other = demo.root / "other.allowed_signers"
    other.write_text(f"someone@example.org {public_line(ed25519.Ed25519PrivateKey.generate())}\n")
    config = replace(demo.agent_config("beta"), trusted_publishers=other)
    _assert_rejected(demo, "beta", "unknown key", config)


def test_expired_and_stale_heads_are_not_applied(demo: DemoFleet) -> None:
    fleet_yaml = demo.repo_dir / "fleet.yaml"
    data = yaml.safe_load(fleet_yaml.read_text())
    data["deploy"] = {"expires_after": "1d"}
    demo.merge_change({"fleet.yaml": yaml.safe_dump(data)}, "deploy commits expire")
    change(demo, "beta", kernel='"6.12.3"')
    future = datetime.now(UTC) + timedelta(days=2)
    result = run(demo, "beta", clock=lambda: future)
    assert result.result == Result.STALE_PUBLISHER, "valid, but the publisher stopped renewing"
    assert "expired" in result.reason
    config = replace(demo.agent_config("beta"), max_age=3600)
    result = run(demo, "beta", config, clock=lambda: datetime.now(UTC) + timedelta(hours=3))
    assert result.result == Result.STALE_PUBLISHER
    assert "older than max_age" in result.reason


def test_pinned_min_commit(demo: DemoFleet) -> None:
    old_head = git("rev-parse", deploy_ref("gamma"), cwd=demo.server)
    change(demo, "gamma", kernel='"6.12.4"')
    new_head = git("rev-parse", deploy_ref("gamma"), cwd=demo.server)
    git("update-ref", deploy_ref("gamma"), old_head, cwd=demo.server)
    pinned = replace(demo.agent_config("gamma"), min_commit=new_head)
    result = run(demo, "gamma", pinned)
    assert result.result == Result.REJECTED
    assert "does not descend from the pinned min_commit" in result.reason
    git("update-ref", deploy_ref("gamma"), new_head, cwd=demo.server)
    assert run(demo, "gamma", pinned).result == Result.APPLIED
    no_tofu = replace(demo.agent_config("beta"), trust_on_first_use=False)
    assert "trust_on_first_use is off" in run(demo, "beta", no_tofu).reason


def test_build_failure_leaves_system_and_is_not_retried(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(demo, "alpha")
    before = (current_system(demo, "alpha"), generations(demo, "alpha"))
    change(demo, "alpha", buildFails="true")
    result = run(demo, "alpha")
    assert result.result == Result.BUILD_FAILED
    assert "nix build failed" in result.reason
    assert (current_system(demo, "alpha"), generations(demo, "alpha")) == before
    report = remote_reports(demo, "alpha")[-1]
    assert report.result == Result.BUILD_FAILED
    assert "a profile sets buildFails" in report.log_tail
    builds = count_calls(monkeypatch, "build_flake")
    again = run(demo, "alpha")
    assert again.result == Result.BUILD_FAILED and "not retried" in again.reason
    assert builds == []
    retried = run(demo, "alpha", retry=True)
    assert retried.result == Result.BUILD_FAILED
    assert len(builds) == 1
    later = run(demo, "alpha", clock=lambda: datetime.now(UTC) + timedelta(hours=2))
    assert later.result == Result.BUILD_FAILED
    assert len(builds) == 2, "retried by itself after build_retry_interval"


def test_switch_failure_goes_back(demo: DemoFleet) -> None:
    run(demo, "beta")
    good = current_system(demo, "beta")
    change(demo, "beta", switchFails="true")
    result = run(demo, "beta")
    assert result.result == Result.SWITCH_FAILED, result.reason
    assert "went back to generation 1" in result.reason
    assert generations(demo, "beta") == [1], "the failed generation is removed"
    assert current_system(demo, "beta") == good
    assert "stand-in-broken.service" in remote_reports(demo, "beta")[-1].log_tail


def test_unhealthy_switch_is_rolled_back_and_remembered(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(demo, "gamma")
    good = current_system(demo, "gamma")
    change(demo, "gamma", unhealthy="true")
    result = run(demo, "gamma")
    assert result.result == Result.ROLLED_BACK, result.reason
    assert "stand-in health endpoint says unhealthy" in result.reason
    assert current_system(demo, "gamma") == good
    assert generations(demo, "gamma") == [1]
    activations = count_calls(monkeypatch, "switch_to_configuration")
    again = run(demo, "gamma")
    assert again.result == Result.ROLLED_BACK and "not retried" in again.reason
    assert activations == []
    change(demo, "gamma", kernel='"6.12.5"')
    assert run(demo, "gamma").result == Result.APPLIED


def test_boot_and_test_actions(demo: DemoFleet) -> None:
    boot = replace(demo.agent_config("alpha"), action=Action.BOOT)
    assert run(demo, "alpha", boot).result == Result.APPLIED
    assert generations(demo, "alpha") == [1]
    assert current_system(demo, "alpha") is None, "boot does not activate now"
    log = (demo.machines / "alpha" / "activations.log").read_text()
    assert log.startswith("boot ")
    test = replace(demo.agent_config("beta"), action=Action.TEST)
    assert run(demo, "beta", test).result == Result.APPLIED
    assert generations(demo, "beta") == [], "test makes no generation"
    assert current_system(demo, "beta") is not None


def test_interrupted_activation_does_not_rebuild(
    demo: DemoFleet, monkeypatch: pytest.MonkeyPatch
) -> None:
    def killed(path: Path, action: str, **_: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(nix, "switch_to_configuration", killed)
    with pytest.raises(KeyboardInterrupt):
        run(demo, "beta")
    monkeypatch.undo()
    builds = count_calls(monkeypatch, "build_flake")
    result = run(demo, "beta")
    assert result.result == Result.APPLIED
    assert builds == [], "the system built before the interruption is reused"
    assert generations(demo, "beta") == [1], "no second generation for the same system"


def test_corrupt_or_lost_state_fails_closed(demo: DemoFleet) -> None:
    run(demo, "alpha")
    change(demo, "alpha", kernel='"6.12.9"')
    run(demo, "alpha")
    state_file = demo.agent_config("alpha").state_dir / "state.json"
    state_file.write_text("{not json")
    with pytest.raises(GitopsError, match="agent state is corrupt"):
        run(demo, "alpha")
    # Without state.json the mirror's record of what was applied is the floor.
    state_file.unlink()
    demo.push_rollback("alpha")
    _assert_rejected(demo, "alpha", "does not descend from the applied commit")


def test_one_cycle_at_a_time(demo: DemoFleet) -> None:
    store = StateStore(demo.agent_config("beta").state_dir)
    entered, release = threading.Event(), threading.Event()

    def hold() -> None:
        with store.locked():
            entered.set()
            release.wait(10)

    thread = threading.Thread(target=hold)
    thread.start()
    try:
        entered.wait(10)
        with pytest.raises(GitopsError, match="another agent cycle is running"):
            run(demo, "beta")
    finally:
        release.set()
        thread.join()


@pytest.fixture
def server_down(demo: DemoFleet) -> Iterator[None]:
    hidden = demo.server.with_name("server.hidden")
    demo.server.rename(hidden)
    try:
        yield
    finally:
        hidden.rename(demo.server)


def test_reports_wait_for_the_server_and_are_not_lost(
    demo: DemoFleet, request: pytest.FixtureRequest
) -> None:
    run(demo, "alpha")
    request.getfixturevalue("server_down")
    offline = run(demo, "alpha")
    assert offline.result == Result.FETCH_FAILED
    assert offline.push is not None and not offline.push.pushed and offline.push.pending == 1
    request.node.funcargs  # noqa: B018 - keep the fixture alive until here
    hidden = demo.server.with_name("server.hidden")
    hidden.rename(demo.server)
    try:
        back = run(demo, "alpha", force_report=True)
        assert back.push is not None and back.push.pushed
        results = [r.result for r in remote_reports(demo, "alpha")]
        assert results == [Result.APPLIED, Result.FETCH_FAILED, Result.UNCHANGED]
    finally:
        demo.server.rename(hidden)


def test_rejected_push_is_rebased_without_loss_or_duplicates(
    demo: DemoFleet, tmp_path: Path
) -> None:
    run(demo, "beta")
    config = demo.agent_config("beta")
    # The previous push landed, but the agent crashed before noting it.
    mirror = Mirror(config.state_dir, "beta")
    mirror.delete_ref(REMOTE_REPORTS_REF)
    # Meanwhile someone else moved reports/beta on the server (e.g. an old state dir restored
    # elsewhere): a signed report the agent does not have.
    other = Mirror(tmp_path / "other-state", "beta")
    git("fetch", "-q", demo.server, f"{reports_ref('beta')}:{reports_ref('beta')}", cwd=other.path)
    intruder = remote_reports(demo, "beta")[-1]
    from gitops.report_commits import create_report_commit

    extra = replace(
        intruder, report_id="elsewhere-1", reason="written elsewhere", time=datetime.now(UTC)
    )
    oid = create_report_commit(
        other.repo, extra, parent=other.target(reports_ref("beta")), key=demo.host_keys["beta"]
    )
    git("push", "-q", demo.server, f"{oid}:{reports_ref('beta')}", cwd=other.path)
    result = run(demo, "beta", force_report=True)
    assert result.push is not None and result.push.pushed, result.push
    ids = [r.report_id for r in remote_reports(demo, "beta")]
    assert len(ids) == len(set(ids)) == 3
    assert ids[1] == "elsewhere-1"


def test_status_json_is_schema_1(demo: DemoFleet) -> None:
    run(demo, "gamma")
    raw = git("show", f"{reports_ref('gamma')}:status.json", cwd=demo.server)
    data = json.loads(raw)
    assert data["schema"] == 1
    assert data["host"] == "gamma"
    assert data["result"] == "applied"
    assert set(data) >= {
        "time",
        "agent_version",
        "reason",
        "report_id",
        "deploy_seen",
        "deploy_applied",
        "source_commit",
        "system",
        "facts",
        "durations",
        "log_tail",
    }
    assert data["time"].endswith("Z")
