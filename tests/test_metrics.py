"""Prometheus metrics: the agent's textfile-collector file after real cycles, the site's
fleet-wide ``metrics``, and a real Prometheus (Debian's) scraping both on loopback."""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import replace
from datetime import datetime, timedelta
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from gitops import __version__
from gitops.agent import metrics as agent_metrics
from gitops.agent.cycle import Cycle
from gitops.agent.state import AgentState, BuildRecord
from gitops.protocol import Result, deploy_ref, format_time
from gitops.sitegen import build as site_build
from gitops.sitegen import metrics as site_metrics
from gitops.sitegen.model import State
from testing.env import needs_nix
from testing.helpers import git_out, published_demo
from testing.prometheus import find_prometheus, prometheus, static_server
from testing.site_helpers import NOW, standard_fleet

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def samples(text: str) -> Samples:
    """Every sample of an exposition-format text: (name, labels) -> value."""
    found: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            found[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return found


def one(found: Samples, name: str, **labels: str) -> float:
    return found[(name, tuple(sorted(labels.items())))]


@needs_nix
def test_agent_writes_its_metrics_after_each_cycle(tmp_path: Path) -> None:
    demo = published_demo(tmp_path / "demo", {"alpha": ["workstation"]})
    prom = tmp_path / "node-exporter" / "gitops.prom"
    prom.parent.mkdir()
    config = replace(demo.agent_config("alpha"), metrics_file=prom)
    applied = Cycle(config).run()
    assert applied.result is Result.APPLIED, applied.reason
    found = samples(prom.read_text())
    head = git_out("rev-parse", deploy_ref("alpha"), cwd=demo.server)
    assert one(found, "gitops_agent_last_result", result="applied") == 1
    assert one(found, "gitops_agent_last_result", result="fetch-failed") == 0
    assert one(found, "gitops_agent_last_deployment_success") == 1
    assert one(found, "gitops_agent_last_fetch_failed") == 0
    assert one(found, "gitops_agent_need_to_reboot") == 0
    assert one(found, "gitops_agent_pending_reports") == 0
    assert one(found, "gitops_agent_build_info", version=__version__, host="alpha") == 1
    (deployment,) = [k for k in found if k[0] == "gitops_agent_deployment_info"]
    assert dict(deployment[1])["deploy_commit"] == head
    deployed = one(found, "gitops_agent_last_deployment_timestamp_seconds")
    cycle_time = one(found, "gitops_agent_last_cycle_timestamp_seconds")
    assert 0 <= cycle_time - deployed < 600
    assert one(found, "gitops_agent_last_report_timestamp_seconds") == cycle_time
    assert oct(prom.stat().st_mode & 0o777) == "0o644"  # node_exporter reads it
    assert [p.name for p in prom.parent.iterdir()] == ["gitops.prom"]  # no temp file left

    hidden = demo.server.with_name("server.hidden")
    demo.server.rename(hidden)  # the git server is unreachable
    try:
        offline = Cycle(config).run()
    finally:
        hidden.rename(demo.server)
    assert offline.result is Result.FETCH_FAILED
    found = samples(prom.read_text())
    assert one(found, "gitops_agent_last_fetch_failed") == 1
    assert one(found, "gitops_agent_last_result", result="fetch-failed") == 1
    assert one(found, "gitops_agent_last_deployment_success") == 0
    assert one(found, "gitops_agent_pending_reports") == 1  # its report waits for the server
    assert one(found, "gitops_agent_last_deployment_timestamp_seconds") == deployed


def _cycle(**changes: object) -> agent_metrics.CycleMetrics:
    built = format_time(NOW - timedelta(minutes=3))
    state = AgentState(
        host="alpha",
        applied="a" * 40,
        applied_source="b" * 40,
        builds=(BuildRecord("a" * 40, ok=True, store_path="/nix/store/x", time=built),),
        last_report_time=NOW,
    )
    cycle = agent_metrics.CycleMetrics(
        host="alpha",
        time=NOW,
        result=Result.APPLIED,
        state=state,
        need_reboot=True,
        reboot_pending=False,
        pending_reports=0,
        durations={"total": 12.5},
    )
    return replace(cycle, **changes)  # type: ignore[arg-type]


def test_a_metrics_file_that_cannot_be_written_does_not_fail_the_cycle(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    agent_metrics.write(tmp_path / "gone" / "gitops.prom", _cycle())
    assert "could not write the metrics file" in caplog.text
    agent_metrics.write(None, _cycle())  # off: nothing written, nothing said


def test_site_writes_fleet_metrics(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "site"
    site_build.build(fleet.path, out, now=NOW, workers=1)
    found = samples((out / site_metrics.FILE).read_text())
    hosts = json.loads((out / "inventory.json").read_text())["hosts"]
    for state in State:
        expected = sum(1 for h in hosts if h["state"] == str(state))
        assert one(found, "gitops_fleet_hosts", state=str(state)) == expected
    assert one(found, "gitops_fleet_stale_hosts") == 1
    assert one(found, "gitops_fleet_reboot_needed_hosts") == 1
    assert one(found, "gitops_fleet_policy_failing_hosts", policy="firewall-active") == 1
    assert one(found, "gitops_fleet_policy_hosts", policy="firewall-active", outcome="fail") == 1
    for host in hosts:
        name = host["name"]
        assert one(found, "gitops_host_state", host=name, state=host["state"]) == 1
        assert one(found, "gitops_host_failing_policies", host=name) == len(
            host["failing_policies"]
        )
    assert one(found, "gitops_site_build_timestamp_seconds") == NOW.timestamp()


def test_the_host_series_are_what_prometheus_client_writes(tmp_path: Path) -> None:
    """The per-host lines, formatted once per host in the workers and joined, are byte
    for byte the library's exposition of the same families."""
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "site"
    site_build.build(fleet.path, out, now=NOW, workers=1)
    text = (out / site_metrics.FILE).read_text()
    hosts = json.loads((out / "inventory.json").read_text())["hosts"]
    reference = CollectorRegistry()
    (state_help, seen_help, failing_help) = (h for _, h in site_metrics.HOST_FAMILIES)
    state = Gauge("gitops_host_state", state_help, ["host", "state"], registry=reference)
    seen = Gauge("gitops_host_last_seen_timestamp_seconds", seen_help, ["host"], registry=reference)
    failing = Gauge("gitops_host_failing_policies", failing_help, ["host"], registry=reference)
    for host in sorted(hosts, key=lambda h: h["name"]):
        state.labels(host=host["name"], state=host["state"]).set(1)
        if host["last_seen"]:
            moment = datetime.fromisoformat(host["last_seen"].replace("Z", "+00:00"))
            seen.labels(host=host["name"]).set(moment.timestamp())
        failing.labels(host=host["name"]).set(len(host["failing_policies"]))
    expected = generate_latest(reference).decode()
    assert text.endswith(expected)
    assert text.count("gitops_host_state{") == len(hosts)


@pytest.mark.skipif(
    find_prometheus() is None and not os.environ.get("CI"),
    reason="prometheus is not installed (.ci/setup test installs it)",
)
def test_a_real_prometheus_scrapes_the_site_and_an_agent(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    www = tmp_path / "www"
    site_build.build(fleet.path, www / "site", now=NOW, workers=1)
    # An agent's textfile, as node_exporter would serve it beside its own metrics.
    (www / "node").mkdir()
    (www / "node" / "metrics").write_bytes(agent_metrics.render(_cycle()))
    assert shutil.which("prometheus")
    with (
        static_server(www) as address,
        prometheus(
            tmp_path / "prometheus",
            {"fleet": (address, "/site/metrics"), "node": (address, "/node/metrics")},
        ) as server,
    ):
        server.wait_until_up(jobs=2)
        assert server.value('gitops_fleet_hosts{state="failed"}') == 1
        assert server.value('gitops_fleet_hosts{state="up to date"}') == 5
        assert server.value("sum(gitops_fleet_hosts)") == len(fleet.hosts)
        assert server.value("gitops_fleet_stale_hosts") == 1
        failing = server.query("gitops_fleet_policy_failing_hosts > 0")
        hosts = json.loads((www / "site" / "inventory.json").read_text())["hosts"]
        expected = {p for h in hosts for p in h["failing_policies"]}
        assert {dict(k)["policy"]: v for k, v in failing.items()} == {
            p: sum(p in h["failing_policies"] for h in hosts) for p in expected
        }
        assert "firewall-active" in expected
        states = server.query('gitops_host_state{state!="up to date"} == 1')
        assert {dict(k)["host"] for k in states} == {
            h for h in fleet.hosts if h not in ("up", "drifting", "reboot", "exempt", "server")
        }
        assert server.value('gitops_agent_last_result{result="applied"}') == 1
        assert server.value("gitops_agent_need_to_reboot") == 1
        assert server.value("gitops_agent_last_cycle_duration_seconds") == 12.5
        assert server.value(
            "gitops_agent_last_cycle_timestamp_seconds - "
            "gitops_agent_last_deployment_timestamp_seconds"
        ) == pytest.approx(180)
