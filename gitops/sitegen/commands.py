"""The commands page: every signed command in main's ``commands/``, per host pending, done,
failed, refused or expired, from the hosts' signed acknowledgements (docs/commands.md)."""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from gitops.fleet.commands import BadCommand, SignedCommand
from gitops.protocol import Command, CommandAck, format_time

PENDING = "pending"
EXPIRED = "expired"  # never acknowledged, and past its expiry
STATUSES = (PENDING, "done", "failed", "refused", EXPIRED)
MAX_LISTED = 500  # newest commands listed


@dataclass(frozen=True)
class HostCommand:
    host: str
    status: str
    ack: CommandAck | None


@dataclass(frozen=True)
class CommandRow:
    command: Command
    hosts: tuple[HostCommand, ...]

    @property
    def counts(self) -> Counter[str]:
        return Counter(h.status for h in self.hosts)


def rows(
    found: Sequence[SignedCommand | BadCommand],
    acks: Mapping[str, Sequence[CommandAck]],
    now: datetime,
) -> list[CommandRow]:
    """One row per command, newest first; each named host's status (``acks``: each host's
    acknowledgements, oldest first)."""
    result = []
    for item in found:
        if not isinstance(item, SignedCommand):
            continue
        command = item.command
        hosts = []
        for host in command.hosts:
            ack = _first_outcome(acks.get(host, ()), command.id)
            if ack is not None:
                status = str(ack.outcome)
            else:
                status = EXPIRED if command.expires <= now else PENDING
            hosts.append(HostCommand(host, status, ack))
        result.append(CommandRow(command, tuple(hosts)))
    result.sort(key=lambda r: (r.command.issued, r.command.id), reverse=True)
    return result[:MAX_LISTED]


def _first_outcome(host_acks: Sequence[CommandAck], command_id: str) -> CommandAck | None:
    """What the host did with the command the first time (a later replay refusal does not
    undo that it ran)."""
    return next((a for a in host_acks if a.id == command_id), None)


def page_data(
    table: Sequence[CommandRow], bad: Sequence[BadCommand]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The template context and the JSON of ``commands.html``."""
    totals: Counter[str] = Counter()
    per_host: dict[str, Counter[str]] = {}
    for row in table:
        for entry in row.hosts:
            totals[entry.status] += 1
            per_host.setdefault(entry.host, Counter())[entry.status] += 1
    context = {
        "rows": table,
        "totals": totals,
        "statuses": STATUSES,
        "per_host": sorted(per_host.items()),
        "bad": bad,
    }
    data = {
        "totals": {s: totals[s] for s in STATUSES},
        "commands": [
            {
                "id": row.command.id,
                "name": str(row.command.name),
                "issuer": row.command.issuer,
                "issued": format_time(row.command.issued),
                "expires": format_time(row.command.expires),
                "hosts": {
                    h.host: {
                        "status": h.status,
                        "at": format_time(h.ack.at) if h.ack else None,
                        "detail": h.ack.detail if h.ack else "",
                    }
                    for h in row.hosts
                },
            }
            for row in table
        ],
        "invalid": [{"path": b.path, "reason": b.reason} for b in bad],
    }
    return context, data
