"""The host's SBOM, computed where it is cheapest: by the agent, once per running system.

A report commit carries ``sbom.cdx.json`` only when the system the host runs
(``/run/current-system``) is not the one its last SBOM described: after a switch, and
after anything else that changed the running system (a manual rollback). Which system
that was is kept in the agent state's ``extra`` (an older agent reading the state file
ignores it). A closure that cannot be queried costs the SBOM, never the report.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, replace
from typing import Final

from gitops.agent.state import AgentState
from gitops.errors import GitopsError
from gitops.protocol import Report
from gitops.system import nix

log = logging.getLogger(__name__)

STATE_KEY: Final = "sbom_system"


@dataclass(frozen=True)
class HostSbom:
    system: str  # the store path it describes
    document: bytes


def sbom_if_changed(report: Report, state: AgentState) -> HostSbom | None:
    """The SBOM of the running system, when no earlier report carried one for it."""
    system = report.system.current_system
    if system is None or state.extra.get(STATE_KEY) == system:
        return None
    try:
        closure = nix.closure(system)
    except GitopsError as err:
        log.warning("no SBOM for %s: %s", system, err)
        return None
    # Loaded here, not at start: the CycloneDX library is about 10 MB of an idle agent's
    # memory, and most cycles write no SBOM (bench/idle_agent.py).
    from gitops.inventory import sbom

    text = sbom.build_sbom(
        host=report.host,
        system=system,
        nixos_version=report.system.nixos_version or "",
        packages=sbom.packages_of(closure, system),
        time=report.time,
    )
    return HostSbom(system, text.encode("utf-8"))


def remember(state: AgentState, written: HostSbom | None) -> AgentState:
    """The state after a report carrying ``written`` was committed."""
    if written is None:
        return state
    return replace(state, extra={**state.extra, STATE_KEY: written.system})
