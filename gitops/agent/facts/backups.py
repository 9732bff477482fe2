"""Backup status: the last run of the host's restic, syncoid and sanoid units.

NixOS names them ``restic-backups-<name>.service`` (services.restic.backups),
``syncoid-<dataset>.service`` (services.syncoid.commands) and ``sanoid.service``. A
running systemd says how each unit's last run ended (``Result``) and when
(``ExecMainExitTimestamp``); a tree only says which units exist. systemd keeps only the
last run: when it failed, the time of the last success before it is not known here.
"""

from __future__ import annotations

import fnmatch
from datetime import UTC, datetime
from typing import Any, Final

from gitops.agent.facts.compliance import UNITS_DIR
from gitops.agent.facts.hostfs import Host
from gitops.protocol import UNKNOWN, format_time

BACKUP_UNITS: Final = ("restic-backups-*.service", "syncoid-*.service", "sanoid.service")
MAX_UNITS: Final = 16
SUCCESS: Final = "success"
NEVER_RUN: Final = "never-run"


def backups(host: Host, now: datetime) -> dict[str, Any]:
    units = _backup_units(host)
    if units is None:
        return {}
    runs = {unit: _last_run(host, unit) for unit in units[:MAX_UNITS]}
    facts: dict[str, Any] = {
        "backups": {
            unit: {"result": result, "finished": format_time(at) if at else UNKNOWN}
            for unit, (result, at) in runs.items()
        }
    }
    if any(result == UNKNOWN for result, _ in runs.values()):
        return facts
    facts["backup_failed_units"] = [unit for unit, (result, _) in runs.items() if result != SUCCESS]
    finished = [at for result, at in runs.values() if result == SUCCESS and at is not None]
    if runs and not facts["backup_failed_units"] and len(finished) == len(runs):
        facts["backup_age_seconds"] = max(0, int((now - min(finished)).total_seconds()))
    return facts


def _backup_units(host: Host) -> list[str] | None:
    """Backup units systemd has loaded (live), else those installed (a tree)."""
    listed = host.output(
        "systemctl", "list-units", "--all", "--plain", "--no-legend", "--no-pager", *BACKUP_UNITS
    )
    if listed is not None:
        names = {line.split()[0] for line in listed.splitlines() if line.split()}
        return sorted(name for name in names if _is_backup_unit(name))
    files = host.list_dir(UNITS_DIR)
    if files is None:
        return None
    return [name for name in files if _is_backup_unit(name)]


def _is_backup_unit(name: str) -> bool:
    return any(fnmatch.fnmatchcase(name, pattern) for pattern in BACKUP_UNITS)


def _last_run(host: Host, unit: str) -> tuple[str, datetime | None]:
    """(how the last run ended, when): success, a systemd Result such as exit-code,
    never-run, or unknown."""
    text = host.output(
        "systemctl",
        "show",
        "--timestamp=unix",
        "--property=Result,ExecMainExitTimestamp,ExecMainStatus",
        "--",
        unit,
    )
    if text is None:
        return UNKNOWN, None
    props = dict(line.split("=", 1) for line in text.splitlines() if "=" in line)
    finished = _timestamp(props.get("ExecMainExitTimestamp", ""))
    if finished is None:
        return NEVER_RUN, None
    result = props.get("Result") or UNKNOWN
    if result == SUCCESS and props.get("ExecMainStatus", "0") != "0":
        result = "exit-code"
    return result, finished


def _timestamp(text: str) -> datetime | None:
    """``@1764000000`` (--timestamp=unix), or ``Tue 2026-11-24 03:12:44 UTC`` (older systemd)."""
    text = text.strip()
    if text.startswith("@") and text[1:].isdigit():
        return datetime.fromtimestamp(int(text[1:]), UTC)
    try:
        return datetime.strptime(text, "%a %Y-%m-%d %H:%M:%S UTC").replace(tzinfo=UTC)
    except ValueError:
        return None
