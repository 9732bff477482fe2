"""The fleet's Prometheus metrics, written by each site build to ``metrics`` at the site's
root: the web server that serves the site serves them, and Prometheus scrapes that URL
(``metrics_path: /metrics`` under the site's address). docs/alerts.md lists every metric.

From derived rows only, like every aggregate page; the values are those of the build
(``gitops_site_build_timestamp_seconds`` says when: alert when it gets old, the build
stopped). The text comes from ``prometheus_client``, in a registry of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from typing_extensions import override

from gitops import __version__
from gitops.fleet.policies import Outcome, Policy
from gitops.sitegen import compliance
from gitops.sitegen.derived import Derived
from gitops.sitegen.model import Flag, State

FILE = "metrics"


def registry(
    derived: Mapping[str, Derived],
    policies: Sequence[Policy],
    *,
    now: datetime,
    main_sha: str,
) -> CollectorRegistry:
    found = CollectorRegistry(auto_describe=True)
    statuses = {name: d.status for name, d in sorted(derived.items())}

    info = Gauge(
        "gitops_site_build_info",
        "The site build: gitops version and the main commit it read (always 1)",
        ["version", "main_commit"],
        registry=found,
    )
    info.labels(version=__version__, main_commit=main_sha).set(1)
    Gauge(
        "gitops_site_build_timestamp_seconds",
        "When the site was built: every other value is as of then (Unix time)",
        registry=found,
    ).set(now.timestamp())

    by_state = Gauge(
        "gitops_fleet_hosts", "Hosts in each state (docs/dashboard.md)", ["state"], registry=found
    )
    counts = Counter(s.state for s in statuses.values())
    for state in State:
        by_state.labels(state=str(state)).set(counts[state])
    flagged = Gauge(
        "gitops_fleet_hosts_flagged", "Hosts carrying each flag", ["flag"], registry=found
    )
    flags = Counter(f for s in statuses.values() for f in s.flags)
    for flag in Flag:
        flagged.labels(flag=str(flag)).set(flags[flag])
    Gauge(
        "gitops_fleet_stale_hosts",
        "Hosts whose newest verified report is older than thresholds.stale_after",
        registry=found,
    ).set(counts[State.STALE])
    Gauge(
        "gitops_fleet_reboot_needed_hosts",
        "Hosts whose booted kernel, initrd or modules differ from the current system's",
        registry=found,
    ).set(flags[Flag.REBOOT_NEEDED])

    _policies(found, derived, policies)
    _hosts(found, derived)
    return found


def _policies(
    found: CollectorRegistry, derived: Mapping[str, Derived], policies: Sequence[Policy]
) -> None:
    summaries = compliance.summarize_codes(
        policies, {name: d.outcomes for name, d in derived.items()}
    )
    answers = Gauge(
        "gitops_fleet_policy_hosts",
        "Hosts by their answer to each policy (pass, fail, unknown, exempt)",
        ["policy", "outcome"],
        registry=found,
    )
    failing = Gauge(
        "gitops_fleet_policy_failing_hosts",
        "Hosts failing each policy",
        ["policy"],
        registry=found,
    )
    for summary in summaries:
        name = summary.policy.name
        for outcome, count in summary.counts.items():
            answers.labels(policy=name, outcome=str(outcome)).set(count)
        failing.labels(policy=name).set(summary.counts[Outcome.FAIL])


class _HostSeries(Collector):
    """The per-host series: one family each, filled straight from the derived rows (a
    ``Gauge`` child per host and label costs ten times as much at 10,000 hosts)."""

    def __init__(self, derived: Mapping[str, Derived]) -> None:
        self.derived = derived

    def describe(self) -> Iterator[Metric]:
        """The families without their samples (what registering needs: no second pass)."""
        return self._families({})

    @override
    def collect(self) -> Iterator[Metric]:
        return self._families(self.derived)

    @staticmethod
    def _families(derived: Mapping[str, Derived]) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "gitops_host_state",
            "1 for each host's state (one series per host)",
            labels=["host", "state"],
        )
        seen = GaugeMetricFamily(
            "gitops_host_last_seen_timestamp_seconds",
            "The time of each host's newest verified report (Unix time)",
            labels=["host"],
        )
        failing = GaugeMetricFamily(
            "gitops_host_failing_policies", "Policies each host fails", labels=["host"]
        )
        fail = compliance.CODES[Outcome.FAIL]
        for name, row in sorted(derived.items()):
            status = row.status
            state.add_metric([name, str(status.state)], 1)
            if status.last_seen is not None:
                seen.add_metric([name], status.last_seen.timestamp())
            failing.add_metric([name], row.outcomes.count(fail))
        yield from (state, seen, failing)


def _hosts(found: CollectorRegistry, derived: Mapping[str, Derived]) -> None:
    found.register(_HostSeries(derived))


def render(
    derived: Mapping[str, Derived], policies: Sequence[Policy], *, now: datetime, main_sha: str
) -> bytes:
    return generate_latest(registry(derived, policies, now=now, main_sha=main_sha))
