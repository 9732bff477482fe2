"""The fleet's Prometheus metrics, written by each site build to ``metrics`` at the site's
root: the web server that serves the site serves them, and Prometheus scrapes that URL
(``metrics_path: /metrics`` under the site's address). docs/alerts.md lists every metric.

From derived rows only, like every aggregate page; the values are those of the build
(``gitops_site_build_timestamp_seconds`` says when: alert when it gets old, the build
stopped). The text comes from ``prometheus_client``, in a registry of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import cast

from prometheus_client import CollectorRegistry, Gauge, generate_latest
from prometheus_client.utils import floatToGoString

from gitops import __version__
from gitops.fleet.policies import Outcome, Policy
from gitops.sitegen import compliance
from gitops.sitegen.derived import Derived
from gitops.sitegen.model import Flag, HostStatus, State

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


# The per-host families: one sample line per host each, formatted in the worker that
# judged the host (Derived.metric_lines) and joined here; a Gauge child per host and label
# cost ten times as much at 10,000 hosts. tests/test_metrics.py checks that the text is
# byte for byte what prometheus_client writes for the same families.
HOST_FAMILIES = (
    ("gitops_host_state", "1 for each host's state (one series per host)"),
    (
        "gitops_host_last_seen_timestamp_seconds",
        "The time of each host's newest verified report (Unix time)",
    ),
    ("gitops_host_failing_policies", "Policies each host fails"),
)


# prometheus_client's own number format (untyped in the library).
_number = cast(Callable[[float], str], floatToGoString)


def _label(value: str) -> str:
    return value.replace("\\", r"\\").replace("\n", r"\n").replace('"', r"\"")


def host_lines(name: str, status: HostStatus, outcomes: str) -> tuple[str, str, str]:
    """The host's sample line in each of HOST_FAMILIES ("" for none)."""
    host = _label(name)
    state, seen, failing = (family for family, _ in HOST_FAMILIES)
    fails = outcomes.count(compliance.CODES[Outcome.FAIL])
    when = status.last_seen
    return (
        f'{state}{{host="{host}",state="{_label(str(status.state))}"}} 1.0\n',
        f'{seen}{{host="{host}"}} {_number(when.timestamp())}\n' if when else "",
        f'{failing}{{host="{host}"}} {_number(fails)}\n',
    )


def _host_section(derived: Mapping[str, Derived]) -> bytes:
    rows = sorted(derived.items())
    lines = [row.metric_lines for _, row in rows]
    parts = []
    for index, (family, help_text) in enumerate(HOST_FAMILIES):
        parts.append(f"# HELP {family} {help_text}\n# TYPE {family} gauge\n")
        parts.extend(line[index] for line in lines)
    return "".join(parts).encode()


def render(
    derived: Mapping[str, Derived], policies: Sequence[Policy], *, now: datetime, main_sha: str
) -> bytes:
    fleet = generate_latest(registry(derived, policies, now=now, main_sha=main_sha))
    return fleet + _host_section(derived)
