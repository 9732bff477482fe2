"""Facts for compliance and inventory, and the running system, as a host's files and
tools tell them.

``collect_facts`` returns the "Facts (schema 1)" of docs/protocol.md, ``collect_system``
the ``system`` object of a report. Every path is read under ``root``: the agent passes
``/``, tests pass a tree shaped like a NixOS root (absolute symlinks inside it are
followed inside it, as a chroot would; see :mod:`.hostfs`). Commands (systemctl, nft,
iptables, sshd -T, nixos-version, zpool, zfs, ip, loginctl) run only when ``root`` is
``/``; a tree answers only the outputs recorded for it. Sources are listed in
notes/users.md section 2 and docs/protocol.md.

Each collector says ``"unknown"`` (``None`` in SystemInfo) rather than guess, and none
raises: a collector that fails is logged at debug level and its facts become unknown.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

from gitops.agent.facts import backups, currency, hardware, network
from gitops.agent.facts.compliance import COLLECTORS, collect_system, parse_sshd_config
from gitops.agent.facts.hostfs import Host, Recorded, recorded_output
from gitops.protocol import UNKNOWN

__all__ = [
    "FACT_KEYS",
    "Recorded",
    "collect_facts",
    "collect_system",
    "parse_sshd_config",
    "recorded_output",
]

log = logging.getLogger(__name__)

Collector = Callable[[Host], dict[str, Any]]


def _inventory(
    now: datetime, flake_lock: bytes | None
) -> tuple[tuple[tuple[str, ...], Collector], ...]:
    """The inventory collectors, in the order of docs/protocol.md."""
    return (
        (
            ("hardware_vendor", "hardware_model", "hardware_serial", "bios_version", "bios_date"),
            hardware.firmware,
        ),
        (("cpu_model", "cpu_cores", "cpu_threads"), hardware.cpu),
        (("memory_total_bytes",), hardware.memory),
        (("disks",), hardware.disks),
        (("network_interfaces",), network.interfaces),
        (("local_users",), network.local_users),
        (("logged_in_users",), network.logged_in_users),
        (
            ("backups", "backup_failed_units", "backup_age_seconds"),
            lambda host: backups.backups(host, now),
        ),
        (("nixpkgs_revision", "nixpkgs_date"), lambda host: currency.nixpkgs(host, flake_lock)),
    )


FACT_KEYS: Final = tuple(
    key for keys, _ in (*COLLECTORS, *_inventory(datetime.now(UTC), None)) for key in keys
)


def collect_facts(
    root: Path,
    *,
    flake_lock: bytes | None = None,
    recorded: Recorded | None = None,
    now: datetime | None = None,
) -> dict[str, Any]:
    """The facts of the system under ``root`` (docs/protocol.md, schema 1).

    ``flake_lock`` is the applied deploy tree's flake.lock (for patch currency);
    ``recorded`` gives a tree command outputs recorded on a real host."""
    host = Host(root, recorded)
    collectors = (*COLLECTORS, *_inventory(now or datetime.now(UTC), flake_lock))
    facts: dict[str, Any] = {}
    for keys, collector in collectors:
        try:
            values = collector(host)
        except Exception:  # a broken collector must not cost the report
            name = getattr(collector, "__name__", "?").strip("_")
            log.debug("facts: %s failed (%s)", name, ", ".join(keys), exc_info=True)
            values = {}
        for key in keys:
            facts[key] = values.get(key, UNKNOWN)
    return {key: facts[key] for key in FACT_KEYS}
