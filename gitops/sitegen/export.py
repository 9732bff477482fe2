"""The same data as the pages, as JSON files next to them (docs/dashboard.md, "JSON").

Every file is an object with ``"schema": 1`` and ``"built"``; times are UTC
``YYYY-MM-DDTHH:MM:SSZ``; commit ids are full 40-character hex strings.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

from gitops.sitegen import compliance
from gitops.sitegen.audit import Event
from gitops.sitegen.model import HostData, HostStatus, MainCommit, Problem, ReportEntry
from gitops.sitegen.render import iso

if TYPE_CHECKING:
    from gitops.sitegen.derived import Overview
    from gitops.sitegen.pages import Pages

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


def _time(moment: datetime | None) -> str | None:
    return iso(moment) or None


def status_json(status: HostStatus) -> dict[str, Any]:
    return {
        "state": str(status.state),
        "flags": list(status.flags),
        "reason": status.reason,
        "since": _time(status.since),
        "last_seen": _time(status.last_seen),
        "last_result": status.last_result,
        "applied": status.applied,
        "applied_source": status.applied_source,
        "published": status.published,
        "published_source": status.published_source,
        "missing": [d.oid for d in status.missing],
        "nixos_version": status.nixos_version,
        "drift": status.drift_detail or None,
    }


def report_json(entry: ReportEntry) -> dict[str, Any]:
    return {
        "commit": entry.oid,
        "trust": str(entry.trust),
        "trust_detail": entry.trust_detail,
        "time": _time(entry.time),
        "commit_time": _time(entry.commit_time),
        # Unverified data is shown for what it is, never as the host's state.
        "result": entry.result,
        "reason": entry.reason,
        "deploy_applied": entry.deploy_applied,
        "deploy_seen": entry.deploy_seen,
        "generation": entry.generation,
        "nixos_version": entry.nixos_version,
        "changes": list(entry.changes),
        "error": entry.error or None,
    }


def _pull_request(sources: Mapping[str, MainCommit], sha: str | None) -> int | None:
    found = sources.get(sha) if sha else None
    return found.pull_request if found is not None else None


def host_detail(pages: Pages, name: str) -> dict[str, Any]:
    from gitops.sitegen.derived import inventory_json

    data: HostData = pages.hosts[name]
    return {
        "schema": SCHEMA,
        "host": inventory_json(
            pages.fleet.hosts[name],
            pages.statuses[name],
            compliance.failing(pages.answers[name]),
        ),
        "policies": [
            {
                "policy": a.policy,
                "outcome": a.outcome,
                "exemption": (
                    {
                        "reason": a.exemption.reason,
                        "expires": a.exemption.expires.isoformat(),
                    }
                    if a.exemption
                    else None
                ),
            }
            for a in pages.answers[name]
        ],
        "facts": (data.latest_status or {}).get("facts"),
        "system": (data.latest_status or {}).get("system"),
        "reports": [report_json(r) for r in data.reports],
        "deploys": [
            {
                "commit": d.oid,
                "time": _time(d.time),
                "trust": str(d.trust),
                "signer": d.principal or None,
                "source_commit": d.source_commit,
            }
            for d in data.deploys
        ],
        "history_truncated": data.truncated,
    }


def aggregate_files(
    pages: Overview,
    *,
    counts: Counter[str],
    flag_counts: Counter[str],
    problems: Sequence[Problem],
    chart_data: Mapping[str, Any],
    drift: Sequence[tuple[str, Sequence[HostStatus]]],
    summaries: Sequence[compliance.PolicySummary],
    events: Sequence[Event],
    sources: Mapping[str, MainCommit],
) -> dict[str, Any]:
    head = {"schema": SCHEMA, "built": _time(pages.now)}
    return {
        "index.json": {
            **head,
            "hosts": len(pages.statuses),
            "states": dict(counts),
            "flags": dict(flag_counts),
            "failing_policies": {s.policy.name: s.counts["fail"] for s in summaries},
            "problems": [
                {"host": p.host, "kind": p.kind, "text": p.text, "since": _time(p.since)}
                for p in problems
            ],
            "history": chart_data,
        },
        "inventory.json": {
            **head,
            "hosts": RawList(pages.derived[name].row_json for name in sorted(pages.derived)),
        },
        "drift.json": {
            **head,
            "groups": {
                reason: [
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
                    }
                    for s in statuses
                ]
                for reason, statuses in drift
            },
        },
        "compliance.json": {
            **head,
            "policies": [
                {
                    "name": s.policy.name,
                    "description": s.policy.description,
                    "severity": s.policy.severity,
                    "file": s.policy.path,
                    "counts": s.counts,
                    "failing": s.failing,
                    "unknown": s.unknown,
                    "exempt": s.exempt,
                }
                for s in summaries
            ],
            "hosts": {
                name: compliance.decode(pages.policies, codes)
                for name, codes in sorted(pages.outcomes.items())
            },
        },
        "audit.json": {
            **head,
            "events": [
                {
                    "kind": e.kind,
                    "time": _time(e.time),
                    "commit": e.sha,
                    "title": e.title,
                    "who": e.who,
                    "trust": e.trust or None,
                    "hosts": list(e.hosts),
                    "host_count": e.host_count,
                    "source_commit": e.source,
                    "pull_request": e.pull_request,
                }
                for e in events
            ],
        },
    }
