"""Per-host values for the templates, and the host pages themselves.

A worker process builds a :class:`Pages` for the hosts it has just read (full data) and
renders their pages; the aggregate pages are built from derived rows instead
(:mod:`gitops.sitegen.derived`).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from gitops.fleet.model import Fleet, Host
from gitops.fleet.policies import Policy
from gitops.sitegen import compliance, export, states
from gitops.sitegen.derived import page_key
from gitops.sitegen.model import HostData, HostStatus
from gitops.sitegen.render import Renderer


def judge(
    data: HostData, host: Host, policies: list[Policy], now: datetime, stale_after: int
) -> tuple[HostStatus, tuple[compliance.Answer, ...]]:
    status = states.judge(data, now=now, stale_after=stale_after)
    newest = data.newest_verified
    answers = compliance.answer(
        policies, host, data.latest_status, newest.when if newest is not None else None, now
    )
    return status, answers


class Pages:
    """Everything the templates need, computed once per build."""

    def __init__(
        self,
        renderer: Renderer,
        fleet: Fleet,
        policies: list[Policy],
        hosts: dict[str, HostData],
        statuses: dict[str, HostStatus],
        answers: dict[str, tuple[compliance.Answer, ...]],
        global_id: str,
        now: datetime,
    ) -> None:
        self.renderer = renderer
        self.fleet = fleet
        self.policies = policies
        self.policy_by_name = {p.name: p for p in policies}
        self.hosts = hosts
        self.statuses = statuses
        self.answers = answers
        self.now = now
        self.global_id = global_id

    def key(self, name: str) -> str:
        """What a host page depends on: equal keys, equal pages (HTML and JSON)."""
        data = self.hosts[name]
        return page_key(
            self.global_id,
            data,
            self.fleet.hosts[name],
            self.statuses[name],
            self.answers[name],
        )

    def generations(self, data: HostData) -> list[dict[str, Any]]:
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

    def host_context(self, name: str) -> dict[str, Any]:
        data = self.hosts[name]
        status = self.statuses[name]
        newest = data.newest_verified
        facts = (data.latest_status or {}).get("facts") or {}
        changes = next((r.changes for r in data.reports if r.verified and r.changes), ())
        failures = [r for r in data.reports if r.log_tail][:5]
        return {
            "host": self.fleet.hosts[name],
            "data": data,
            "status": status,
            "newest": newest,
            "facts": sorted(facts.items()),
            "system": (data.latest_status or {}).get("system") or {},
            "answers": self.answers[name],
            "policies": self.policy_by_name,
            "generations": self.generations(data),
            "changes": changes,
            "failures": failures,
            "published": data.published,
        }

    def host_html(self, name: str) -> str:
        return self.renderer.render(
            "host.html", root="../", current="", title=name, **self.host_context(name)
        )

    def host_json(self, name: str) -> str:
        return export.dumps(export.host_detail(self, name))
