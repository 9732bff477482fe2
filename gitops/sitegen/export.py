"""The same data as the pages, as JSON files next to them (docs/dashboard.md, "JSON").

Every file is an object with ``"schema": 1`` and ``"built"``; times are UTC
``YYYY-MM-DDTHH:MM:SSZ``; commit ids are full 40-character hex strings. Each function here
takes values and returns JSON-ready data: what the site computed, never how.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any

from gitops.fleet.model import Host
from gitops.fleet.policies import Outcome, Policy
from gitops.protocol import Report
from gitops.sitegen import compliance
from gitops.sitegen.audit import Event
from gitops.sitegen.model import (
    DeployEntry,
    DriftGroup,
    Flag,
    HostData,
    HostStatus,
    MainCommit,
    Problem,
    ReportEntry,
    State,
)
from gitops.sitegen.render import iso

SCHEMA = 1


class RawList:
    """A JSON array whose items are already serialized (per-host rows kept as text)."""

    def __init__(self, items: Iterable[str]) -> None:
        self.items = list(items)


_RAW_MARK = "\u0000raw\u0000"


def dumps(data: Any) -> str:
    """Compact JSON; a RawList is spliced in as it is."""
    raws: list[RawList] = []

    def default(value: object) -> object:
        if isinstance(value, RawList):
            raws.append(value)
            return f"{_RAW_MARK}{len(raws) - 1}"
        raise TypeError(f"not JSON: {type(value).__name__}")

    text = json.dumps(data, separators=(",", ":"), ensure_ascii=False, default=default)
    for index, raw in enumerate(raws):
        text = text.replace(json.dumps(f"{_RAW_MARK}{index}"), "[" + ",".join(raw.items) + "]")
    return text + "\n"


def compact(data: Any) -> str:
    """One value as compact JSON text (a RawList item)."""
    return json.dumps(data, separators=(",", ":"), ensure_ascii=False)


def _time(moment: datetime | None) -> str | None:
    return iso(moment) or None


def status_json(status: HostStatus) -> dict[str, Any]:
    return {
        "state": str(status.state),
        "flags": [str(f) for f in status.flags],
        "reason": status.reason,
        "since": _time(status.since),
        "last_seen": _time(status.last_seen),
        "last_result": str(status.last_result) if status.last_result else None,
        "applied": status.applied,
        "applied_source": status.applied_source,
        "published": status.published,
        "published_source": status.published_source,
        "missing": [d.oid for d in status.missing],
        "nixos_version": status.nixos_version,
        "drift": status.drift_detail or None,
        "notes": {str(n.flag): n.text for n in status.notes},
        "reboot_pending_since": _time(status.reboot_pending_since),
        "reboot_needed_since": _time(status.reboot_needed_since),
    }


def inventory_json(host: Host, status: HostStatus, failing: list[str]) -> dict[str, Any]:
    """A host object (inventory.json, and ``host`` in hosts/<host>.json)."""
    return {
        "name": host.name,
        "profiles": list(host.profiles),
        "tags": list(host.tags),
        "owner": host.owner,
        "failing_policies": failing,
        **status_json(status),
    }


def report_json(entry: ReportEntry) -> dict[str, Any]:
    return {
        "commit": entry.oid,
        "trust": str(entry.trust),
        "trust_detail": entry.trust_detail,
        "time": _time(entry.time),
        "commit_time": _time(entry.commit_time),
        # Unverified data is shown for what it is, never as the host's state.
        "result": str(entry.result) if entry.result else None,
        "reason": entry.reason,
        "deploy_applied": entry.deploy_applied,
        "deploy_seen": entry.deploy_seen,
        "generation": entry.generation,
        "nixos_version": entry.nixos_version,
        "changes": list(entry.changes),
        "error": entry.error or None,
    }


def deploy_json(entry: DeployEntry) -> dict[str, Any]:
    return {
        "commit": entry.oid,
        "time": _time(entry.time),
        "trust": str(entry.trust),
        "signer": entry.principal or None,
        "source_commit": entry.source_commit,
    }


def answer_json(answer: compliance.Answer) -> dict[str, Any]:
    exemption = answer.exemption
    return {
        "policy": answer.policy,
        "outcome": str(answer.outcome),
        "exemption": (
            {"reason": exemption.reason, "expires": exemption.expires.isoformat()}
            if exemption
            else None
        ),
    }


def host_detail(
    host: Host,
    data: HostData,
    status: HostStatus,
    answers: Sequence[compliance.Answer],
    report: Report | None,
) -> dict[str, Any]:
    """hosts/<host>.json; ``report``: the one the host is judged by."""
    return {
        "schema": SCHEMA,
        "host": inventory_json(host, status, compliance.failing(answers)),
        "policies": [answer_json(a) for a in answers],
        "facts": report.facts if report is not None else None,
        "system": report.system.to_dict() if report is not None else None,
        "reports": [report_json(r) for r in data.reports],
        "deploys": [deploy_json(d) for d in data.deploys],
        "history_truncated": data.truncated,
        "history_pending": data.history_pending,
        "dropped_reports": [
            {
                "commit": d.oid,
                "time": _time(d.when),
                "result": str(d.result) if d.result else None,
                "trust": str(d.trust),
            }
            for d in data.dropped
        ],
        "deploy_rewound": (
            {"head": data.rewind.head, "floor": data.rewind.floor, "why": data.rewind.why}
            if data.rewind is not None
            else None
        ),
    }


# -- the aggregate files: each without its "schema" and "built" head -------------------


def index_json(
    *,
    hosts: int,
    counts: Counter[State],
    flag_counts: Counter[Flag],
    summaries: Sequence[compliance.PolicySummary],
    problems: Sequence[Problem],
    chart_data: Mapping[str, Any],
) -> dict[str, Any]:
    return {
        "hosts": hosts,
        "states": {str(k): n for k, n in counts.items()},
        "flags": {str(k): n for k, n in flag_counts.items()},
        "failing_policies": {s.policy.name: s.counts[Outcome.FAIL] for s in summaries},
        "problems": [
            {"host": p.host, "kind": str(p.kind), "text": p.text, "since": _time(p.since)}
            for p in problems
        ],
        "history": chart_data,
    }


def inventory_file(rows_json: Iterable[str]) -> dict[str, Any]:
    return {"hosts": RawList(rows_json)}


def _pull_request(sources: Mapping[str, MainCommit], sha: str | None) -> int | None:
    found = sources.get(sha) if sha else None
    return found.pull_request if found is not None else None


def drift_json(groups: Iterable[DriftGroup], sources: Mapping[str, MainCommit]) -> dict[str, Any]:
    return {
        "groups": {
            str(group.kind): [
                {
                    "host": s.name,
                    "since": _time(s.since),
                    "reason": s.reason,
                    "published": s.published,
                    "published_source": s.published_source,
                    "pull_request": _pull_request(sources, s.published_source),
                    "applied": s.applied,
                    "missing": [d.oid for d in s.missing],
                    "drift": s.drift_detail or None,
                    "why": group.why(s),
                }
                for s in group.hosts
            ]
            for group in groups
        },
    }


def compliance_json(
    policies: Sequence[Policy],
    summaries: Sequence[compliance.PolicySummary],
    outcomes: Mapping[str, str],
) -> dict[str, Any]:
    """``outcomes``: host -> its encoded answers (compliance.encode)."""
    return {
        "policies": [
            {
                "name": s.policy.name,
                "description": s.policy.description,
                "severity": s.policy.severity,
                "file": s.policy.path,
                "counts": {str(k): n for k, n in s.counts.items()},
                "failing": s.failing,
                "unknown": s.unknown,
                "exempt": s.exempt,
            }
            for s in summaries
        ],
        "hosts": {
            name: {p: str(v) for p, v in compliance.decode(policies, codes).items()}
            for name, codes in sorted(outcomes.items())
        },
    }


def audit_json(events: Sequence[Event]) -> dict[str, Any]:
    return {
        "events": [
            {
                "kind": str(e.kind),
                "time": _time(e.time),
                "commit": e.sha,
                "title": e.title,
                "who": e.who,
                "trust": str(e.trust) if e.trust else None,
                "hosts": list(e.hosts),
                "host_count": e.host_count,
                "source_commit": e.source,
                "pull_request": e.pull_request,
            }
            for e in events
        ],
    }
