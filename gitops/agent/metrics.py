"""The agent's Prometheus metrics: after each cycle, a node_exporter textfile-collector file
(``metrics_file`` in the agent configuration, e.g.
``/var/lib/prometheus-node-exporter/gitops.prom``), written atomically so the collector
never reads half a file. docs/alerts.md lists every metric and example alert rules.

The text comes from ``prometheus_client`` (a registry of its own, never the process-wide
one), so it is always valid exposition format.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prometheus_client import CollectorRegistry, Gauge, generate_latest

from gitops import __version__
from gitops.agent.config import AgentConfig
from gitops.agent.state import AgentState
from gitops.protocol import Result, SystemInfo, parse_time
from gitops.system import atomic

log = logging.getLogger(__name__)

# Results after which the host runs what it should: the deployment succeeded.
_OK = frozenset({Result.APPLIED, Result.UNCHANGED})


@dataclass(frozen=True)
class CycleMetrics:
    """What one cycle says, in the terms of the metrics."""

    host: str
    time: datetime  # when the cycle ended
    result: Result
    state: AgentState  # after the cycle
    need_reboot: bool  # the booted kernel, initrd or modules differ from the current ones
    reboot_pending: bool  # applied with action boot, not booted into yet
    pending_reports: int  # reports committed locally, not on the server yet
    durations: Mapping[str, float]  # seconds per step; "total" for the cycle


def _seconds(moment: datetime | None) -> float | None:
    return moment.timestamp() if moment is not None else None


def _deployed_at(state: AgentState) -> datetime | None:
    """When the applied system was built (the agent builds just before it activates)."""
    record = state.build(state.applied) if state.applied else None
    if record is None or record.time is None:
        return None
    try:
        return parse_time(record.time)
    except ValueError:
        return None


def registry(cycle: CycleMetrics) -> CollectorRegistry:
    """The metrics of ``cycle`` in a registry of their own."""
    found = CollectorRegistry(auto_describe=True)

    def gauge(name: str, text: str, value: float | None) -> None:
        metric = Gauge(name, text, registry=found)
        if value is not None:
            metric.set(value)

    info = Gauge(
        "gitops_agent_build_info",
        "The gitops agent's version (always 1)",
        ["version", "host"],
        registry=found,
    )
    info.labels(version=__version__, host=cycle.host).set(1)
    last = Gauge(
        "gitops_agent_last_result",
        "1 for the result of the last cycle (the report's result values), 0 for the others",
        ["result"],
        registry=found,
    )
    for result in Result:
        last.labels(result=str(result)).set(1 if result is cycle.result else 0)
    state = cycle.state
    deployment = Gauge(
        "gitops_agent_deployment_info",
        "The deploy commit the running system was built from, and its main commit (always 1)",
        ["deploy_commit", "source_commit"],
        registry=found,
    )
    if state.applied:
        deployment.labels(
            deploy_commit=state.applied, source_commit=state.applied_source or ""
        ).set(1)
    gauge(
        "gitops_agent_last_deployment_success",
        "1 when the last cycle left the host on what was published (applied or unchanged)",
        1 if cycle.result in _OK else 0,
    )
    gauge(
        "gitops_agent_last_deployment_timestamp_seconds",
        "When the running system was built from its deploy commit (Unix time)",
        _seconds(_deployed_at(state)),
    )
    gauge(
        "gitops_agent_last_cycle_timestamp_seconds",
        "When the last cycle ended (Unix time)",
        cycle.time.timestamp(),
    )
    gauge(
        "gitops_agent_last_cycle_duration_seconds",
        "How long the last cycle took",
        cycle.durations.get("total"),
    )
    gauge(
        "gitops_agent_last_fetch_failed",
        "1 when the last cycle could not fetch deploy/<host> from the git server",
        1 if cycle.result is Result.FETCH_FAILED else 0,
    )
    gauge(
        "gitops_agent_need_to_reboot",
        "1 when the booted kernel, initrd or modules differ from the current system's",
        1 if cycle.need_reboot else 0,
    )
    gauge(
        "gitops_agent_reboot_pending",
        "1 when the host applied a system with action boot and has not booted it yet",
        1 if cycle.reboot_pending else 0,
    )
    gauge(
        "gitops_agent_pending_reports",
        "Reports committed on the host and not yet pushed to the git server",
        cycle.pending_reports,
    )
    gauge(
        "gitops_agent_last_report_timestamp_seconds",
        "When the agent last wrote a signed report (Unix time)",
        _seconds(state.last_report_time),
    )
    return found


def render(cycle: CycleMetrics) -> bytes:
    """The text exposition format of ``cycle``'s metrics."""
    return generate_latest(registry(cycle))


def after_cycle(
    config: AgentConfig,
    *,
    time: datetime,
    result: Result,
    state: AgentState,
    system: SystemInfo,
    reboot_pending: bool,
    pending_reports: int,
    durations: Mapping[str, float],
) -> None:
    """Write the metrics of the cycle that just ended, if ``metrics_file`` is set;
    ``system`` is the running system the cycle read."""
    if config.metrics_file is None:
        return
    cycle = CycleMetrics(
        host=config.host,
        time=time,
        result=result,
        state=state,
        need_reboot=bool(system.reboot_required),
        reboot_pending=reboot_pending,
        pending_reports=pending_reports,
        durations=durations,
    )
    write(config.metrics_file, cycle)


def write(path: Path | None, cycle: CycleMetrics) -> None:
    """Write the metrics file, atomically; best effort: a collector directory that is gone
    or full must not fail a cycle whose real work is done (the next cycle writes again)."""
    if path is None:
        return
    try:
        atomic.write_bytes(path, render(cycle), mode=0o644)
    except OSError as err:
        log.warning("could not write the metrics file %s (%s)", path, err.strerror or err)
