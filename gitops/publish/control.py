"""``gitops-control/`` in a host's deploy tree: its settings (reboot policy, named checks)
and the signed commands that name it, unexpired (docs/commands.md, docs/protocol.md)."""

from __future__ import annotations

from datetime import datetime

import pygit2

from gitops.fleet import commands
from gitops.fleet.model import Fleet, Host
from gitops.fleet.source import Source
from gitops.protocol import CONTROL_COMMANDS_DIR, CONTROL_SETTINGS_FILE, SIGNATURE_SUFFIX

Entry = tuple[pygit2.Oid, int]
_FILE = int(pygit2.enums.FileMode.BLOB)


class Control:
    """What each host's ``gitops-control/`` holds, worked out once per publish."""

    def __init__(
        self, repo: pygit2.Repository, fleet: Fleet, source: Source, now: datetime
    ) -> None:
        self.repo = repo
        self.fleet = fleet
        self.commands = commands.deliverable(fleet, commands.load(source), now)

    def entries(self, host: Host) -> dict[str, Entry]:
        """Path in the deploy tree -> blob; empty when the fleet has nothing for ``host``."""
        found: dict[str, Entry] = {}
        control = self.fleet.host_control(host)
        if control is not None:
            found[CONTROL_SETTINGS_FILE] = self._blob(control.to_json().encode())
        for signed in self.commands.get(host.name, ()):
            path = f"{CONTROL_COMMANDS_DIR}/{signed.file_name}"
            found[path] = self._blob(signed.payload)
            found[f"{path}{SIGNATURE_SUFFIX}"] = self._blob(signed.signature)
        return found

    def _blob(self, data: bytes) -> Entry:
        return self.repo.create_blob(data), _FILE
