"""``gitops command NAME --host H... | --tag T``: write a signed command into the fleet
repository's ``commands/``; commit it and publish, and each named host runs it once
(docs/commands.md)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from gitops import output, protocol
from gitops.errors import GitopsError
from gitops.fleet import commands
from gitops.fleet.check import ensure_fleet_repository
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems, parse_duration
from gitops.fleet.source import DirSource
from gitops.trust import keys


@dataclass(frozen=True)
class CommandRequest:
    repo: Path
    name: protocol.CommandName
    hosts: tuple[str, ...]
    tags: tuple[str, ...]
    key: Path
    expires: str = "24h"
    units: tuple[str, ...] = ()
    since: str = "1h"
    max_bytes: int = protocol.DEFAULT_LOG_BYTES
    check: str = ""


def _seconds(text: str, option: str) -> int:
    try:
        return parse_duration(text)
    except ValueError as err:
        raise GitopsError(f"{option}: {err}") from err


def issue(request: CommandRequest, *, as_json: bool = False, now: datetime | None = None) -> int:
    ensure_fleet_repository(request.repo)
    problems = Problems()
    fleet = load_fleet(DirSource(request.repo), problems)
    problems.raise_if_any(f"{request.repo}: the fleet is invalid (run 'gitops check')")
    hosts = commands.select_hosts(fleet, request.hosts, request.tags)
    signed = commands.issue(
        fleet,
        request.name,
        hosts,
        keys.load_signer(request.key),
        now=now or datetime.now(UTC),
        expires_in=_seconds(request.expires, "--expires"),
        units=request.units,
        since=_seconds(request.since, "--since"),
        max_bytes=request.max_bytes,
        check=request.check,
    )
    payload, signature = commands.write(request.repo, signed)
    command = signed.command
    if as_json:
        output.emit_json(
            {
                "id": command.id,
                "name": str(command.name),
                "hosts": list(command.hosts),
                "expires": protocol.format_time(command.expires),
                "files": [str(payload), str(signature)],
            }
        )
    else:
        output.say(
            f"{command.name} {command.id} for {len(hosts)} host(s): {', '.join(hosts)}; "
            f"valid until {protocol.format_time(command.expires)}, signed by {command.issuer}.\n"
            f"Wrote {payload} and {signature.name}: commit them to main (a pull request, "
            "or a direct push where allowed); the next publish delivers them."
        )
    return 0
