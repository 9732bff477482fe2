"""A host judged, and its pages: ``hosts/<host>.html`` and ``hosts/<host>.json``.

A worker process judges and renders the hosts it has just read (full data); the
aggregate pages are built from derived rows instead (:mod:`gitops.sitegen.overview`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gitops.fleet.model import Host
from gitops.fleet.policies import Policy
from gitops.protocol import Report
from gitops.sitegen import compliance, export, states, vulnscan
from gitops.sitegen.model import HostData, HostSoftware, HostStatus, ReportEntry
from gitops.sitegen.render import Renderer


@dataclass(frozen=True)
class Judged:
    """A host at build time: its state and flags, its policy answers, and the report they
    were judged from."""

    status: HostStatus
    answers: tuple[compliance.Answer, ...]
    newest: ReportEntry | None  # the counted report (None: none counts)
    report: Report | None  # and its status.json, parsed
    vulns: vulnscan.HostScan | None = None  # its known vulnerabilities (None: not scanned)


def judge(
    data: HostData,
    host: Host,
    policies: Sequence[Policy],
    now: datetime,
    stale_after: int,
    vulns: vulnscan.HostScan | None = None,
) -> Judged:
    status = states.judge(data, now=now, stale_after=stale_after)
    newest = states.counted(data, now)
    report = data.report_of(newest) if newest is not None else None
    site = vulnscan.facts(vulns, now.date())
    answers = compliance.answer(policies, host, report, now, site)
    return Judged(status, answers, newest, report, vulns)


def generations(data: HostData) -> list[dict[str, Any]]:
    """The system generations the verified reports name, newest first."""
    seen: dict[int, dict[str, Any]] = {}
    for entry in reversed(data.reports):
        if not entry.verified or entry.generation is None:
            continue
        if entry.generation not in seen:
            seen[entry.generation] = {
                "generation": entry.generation,
                "store_path": entry.store_path,
                "nixos_version": entry.nixos_version,
                "deploy": entry.deploy_applied,
                "first_seen": entry.when,
                "last_seen": entry.when,
            }
        else:
            seen[entry.generation]["last_seen"] = entry.when
    return sorted(seen.values(), key=lambda g: int(g["generation"]), reverse=True)


MAX_COMMANDS_SHOWN = 50


class HostPages:
    """Renders host pages; one per worker process."""

    def __init__(self, renderer: Renderer, policies: Sequence[Policy]) -> None:
        self.renderer = renderer
        self.policy_by_name = {p.name: p for p in policies}

    def context(self, host: Host, data: HostData, judged: Judged) -> dict[str, Any]:
        report = judged.report
        changes = next((r.changes for r in data.reports if r.verified and r.changes), ())
        return {
            "host": host,
            "data": data,
            "status": judged.status,
            "newest": judged.newest,
            "facts": sorted(report.facts.items()) if report is not None else [],
            "system": report.system.to_dict() if report is not None else {},
            "answers": judged.answers,
            "policies": self.policy_by_name,
            "generations": generations(data),
            "changes": changes,
            "failures": [r for r in data.reports if r.log_tail][:5],
            "published": data.published,
            "software": HostSoftware.of(data, host.cve_exemptions),
            "vulns": judged.vulns,
            "command_acks": [
                (entry, ack)
                for entry in data.reports
                if entry.verified
                for ack in reversed(entry.commands)
            ][:MAX_COMMANDS_SHOWN],
        }

    def html(self, host: Host, data: HostData, judged: Judged) -> str:
        context = self.context(host, data, judged)
        return self.renderer.render("host.html", root="../", current="", title=host.name, **context)

    @staticmethod
    def json(host: Host, data: HostData, judged: Judged) -> str:
        detail = export.host_detail(host, data, judged.status, judged.answers, judged.report)
        if judged.vulns is not None:
            detail["vulnerabilities"] = vulnscan.to_json(judged.vulns)
        return export.dumps(detail)
