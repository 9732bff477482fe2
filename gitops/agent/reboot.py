"""Reboots when needed, when allowed.

A host *needs* a reboot when the kernel, initrd or kernel modules of the system it booted
differ from the current system's (nixpkgs' ``system.autoUpgrade.allowReboot`` test), or,
with ``action: boot``, when it has not booted the system it applied yet. The moment it
first noticed is kept in ``reboot.json`` (state directory) and reported as
``reboot_needed_since``.

The agent reboots by itself only when its reboot policy (``gitops-control/settings.json``
in the verified deploy tree: fleet.yaml/host.yaml ``reboot``) allows it, inside the
policy's window (in its time zone), when no systemd inhibitor blocks shutdown, and only
after the report saying a reboot is needed was pushed. Logged-in users get a ``wall``
notice first. See docs/commands.md.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from gitops.agent.config import Action, AgentConfig
from gitops.protocol import HostControl, SystemInfo, format_time, parse_json, parse_time
from gitops.system import atomic
from gitops.system.host import Host

log = logging.getLogger(__name__)

STATE_FILE = "reboot.json"


@dataclass(frozen=True)
class Assessment:
    needed_since: datetime | None  # None: no reboot needed
    why_needed: str = ""
    due: bool = False  # reboot after this cycle's report is pushed
    why_not: str = ""  # needed but not now: why


def needed(config: AgentConfig, system: SystemInfo, applied_store_path: str | None) -> str:
    """Why this host needs a reboot, or ""."""
    if system.reboot_required:
        return "the booted kernel, initrd or modules differ from the current system's"
    if (
        config.action is Action.BOOT
        and applied_store_path is not None
        and system.booted_system is not None
        and system.booted_system != applied_store_path
    ):
        return "the applied system (action boot) is not booted yet"
    return ""


def _load(path: Path) -> datetime | None:
    try:
        data = parse_json(path.read_bytes())
        since = data.get("needed_since")
        return None if since is None else parse_time(since)
    except FileNotFoundError:
        return None
    except (OSError, ValueError, AttributeError, TypeError) as err:  # corrupt: count again
        log.warning("%s unreadable (%s); reboot-needed time starts now", path, err)
        return None


def assess(
    config: AgentConfig,
    system: SystemInfo,
    applied_store_path: str | None,
    control: HostControl | None,
    host: Host,
    now: datetime,
) -> Assessment:
    """Whether a reboot is needed (since when), and whether to do it after this report."""
    path = config.state_dir / STATE_FILE
    before = _load(path)
    why = needed(config, system, applied_store_path)
    since = (before or now) if why else None
    if since != before or not path.exists():
        atomic.write_text(
            path,
            json.dumps({"needed_since": format_time(since) if since else None}) + "\n",
        )
    if not why or since is None:
        return Assessment(None)
    policy = control.reboot if control is not None else None
    if policy is None or not policy.allow:
        return Assessment(since, why, why_not="the reboot policy does not allow reboots")
    if not policy.allows(now):
        return Assessment(
            since, why, why_not=f"outside the reboot window {policy.window} ({policy.timezone})"
        )
    inhibitors = host.inhibitors()
    if inhibitors:
        return Assessment(
            since, why, why_not=f"held by a shutdown inhibitor: {'; '.join(inhibitors)[:300]}"
        )
    return Assessment(since, why, due=True)


def notice(host_name: str, why: str) -> str:
    return f"gitops: {host_name} reboots now ({why}). Save your work."
