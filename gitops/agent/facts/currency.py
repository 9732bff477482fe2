"""Patch currency: which nixpkgs the host runs, and from when.

Two witnesses: the deploy tree's ``flake.lock`` (the applied commit's, which the agent
holds in its mirror: the exact revision and its commit time, ``lastModified``) and the
system itself (``nixos-version --json``'s ``nixpkgsRevision``, or the version label
``25.05.20260102.ac62194``: the day and a short revision). The lock is believed only when
the system agrees with it (a host rolled back by hand runs another nixpkgs than its
last deploy); otherwise the system's own, day-precise, answer is reported.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from gitops.agent.facts.compliance import nixos_version
from gitops.agent.facts.hostfs import Host
from gitops.protocol import format_time, parse_json

_LABEL = re.compile(r"^\d\d\.\d\d(?:pre-git|pre)?\.(?P<day>\d{8})\.(?P<rev>[0-9a-f]{7,40})$")


@dataclass(frozen=True)
class Nixpkgs:
    revision: str
    date: str | None  # protocol time, or None when unknown


def nixpkgs(host: Host, flake_lock: bytes | None) -> dict[str, Any]:
    running = _from_system(host)
    locked = _from_lock(flake_lock) if flake_lock is not None else None
    if locked is not None and (running is None or _same_revision(locked, running)):
        found = locked
    elif running is not None:
        found = running
    else:
        return {}
    facts: dict[str, Any] = {"nixpkgs_revision": found.revision}
    if found.date is not None:
        facts["nixpkgs_date"] = found.date
    return facts


def _same_revision(a: Nixpkgs, b: Nixpkgs) -> bool:
    return a.revision.startswith(b.revision) or b.revision.startswith(a.revision)


def _from_system(host: Host) -> Nixpkgs | None:
    label = host.read_value("/run/current-system/nixos-version") or ""
    match = _LABEL.match(label)
    day = match["day"] if match else None
    date = None
    if day is not None:
        try:
            date = format_time(datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC))
        except ValueError:
            date = None
    full = (nixos_version(host) or {}).get("nixpkgsRevision")
    if isinstance(full, str) and re.fullmatch(r"[0-9a-f]{40}", full):
        return Nixpkgs(full, date)
    return Nixpkgs(match["rev"], date) if match else None


def _from_lock(text: bytes) -> Nixpkgs | None:
    """``nodes.<root's nixpkgs input>.locked`` of a flake.lock (version 7)."""
    try:
        lock = parse_json(text)
        nodes = lock["nodes"]
        name = nodes[lock.get("root", "root")].get("inputs", {}).get("nixpkgs", "nixpkgs")
        locked = nodes[name if isinstance(name, str) else "nixpkgs"]["locked"]
        revision = locked["rev"]
        modified = locked.get("lastModified")
    except (ValueError, KeyError, TypeError, AttributeError):
        return None
    if not isinstance(revision, str) or not re.fullmatch(r"[0-9a-f]{40}", revision):
        return None
    date = (
        format_time(datetime.fromtimestamp(modified, UTC))
        if isinstance(modified, int) and modified > 0
        else None
    )
    return Nixpkgs(revision, date)
