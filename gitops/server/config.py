"""``server.yaml``: the settings that are the server's own, not the fleet's.

Written once by ``gitops server init``; everything about hosts and publishers comes from
``main`` instead, so enrolling or removing a host never needs an edit here. What lives
here is who may change ``main`` and how gitops is run by sshd and by git's hooks.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

import yaml

from gitops.errors import GitopsError
from gitops.fleet.schema import Problems, Reader, load_yaml
from gitops.server.layout import is_principal
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey


class MainPolicy(StrEnum):
    SIGNED = "signed"  # admins push main over ssh; every new commit signed by an admin key
    MIRROR = "mirror"  # main comes only from the upstream forge (gitops server sync)


@dataclass(frozen=True)
class Admin:
    principal: str
    key: PublicKey


@dataclass(frozen=True)
class ServerConfig:
    command: tuple[str, ...]  # how sshd's forced command and the hooks run gitops
    main: MainPolicy = MainPolicy.SIGNED
    upstream: str | None = None  # with main: mirror, where main is fetched from
    admins: tuple[Admin, ...] = ()
    max_pushes: int | None = None  # pushes checked at once; default: 4 per CPU
    push_queue: int | None = None  # pushes that may wait for one; default: 32 per CPU

    def push_slots(self) -> int:
        # A push is mostly CPU (its two hooks) with some waiting on the disk: a few per
        # CPU keep the CPUs busy; each costs about 80 MB while it runs.
        return self.max_pushes or 4 * (os.cpu_count() or 1)

    def queue_places(self) -> int:
        # A waiting push holds its ssh session and a small Python process (about 25 MB
        # together) and no CPU.
        return self.push_queue or 32 * (os.cpu_count() or 1)

    def admin_trust(self) -> AllowedSigners:
        return AllowedSigners.of((a.principal, a.key) for a in self.admins)

    def command_line(self, *args: str) -> str:
        return shlex.join([*self.command, *args])

    def to_yaml(self) -> str:
        data: dict[str, object] = {"command": list(self.command), "main": str(self.main)}
        if self.upstream:
            data["upstream"] = self.upstream
        data["admins"] = [{"principal": a.principal, "key": a.key.openssh()} for a in self.admins]
        if self.max_pushes is not None:
            data["max_pushes"] = self.max_pushes
        if self.push_queue is not None:
            data["push_queue"] = self.push_queue
        return (
            "# gitops server settings (gitops server init wrote this; see docs/server.md).\n"
            "# Hosts and publishers come from main, never from here.\n"
            + yaml.safe_dump(data, sort_keys=False)
        )

    @classmethod
    def parse(cls, text: str | bytes, where: str) -> ServerConfig:
        problems = Problems()
        top = Reader(load_yaml(text, where, problems) or {}, where, problems)
        command = top.strings("command")
        if not command:
            top.problem(
                "command", "is missing", "e.g. command: [/run/current-system/sw/bin/gitops]"
            )
        for part in command:
            if '"' in part or "\n" in part:
                top.problem("command", f"{part!r} holds a double quote or a newline")
        main_text = top.string("main", str(MainPolicy.SIGNED))
        try:
            main = MainPolicy(main_text)
        except ValueError:
            top.problem("main", f"{main_text!r} is not signed or mirror")
            main = MainPolicy.SIGNED
        upstream = top.string("upstream") or None
        if main is MainPolicy.MIRROR and upstream is None:
            top.problem("upstream", "is required with main: mirror", "the forge's URL of the fleet")
        admins = []
        for item in top.items("admins"):
            principal = item.string("principal", required=True)
            key = item.convert("key", PublicKey.parse, required=True, fix="paste a .pub line")
            item.finish()
            if principal and not is_principal(principal):
                item.problem("principal", f"{principal!r}: use letters, digits and . _ @ + -")
            elif principal and key is not None:
                admins.append(Admin(principal, key))
        max_pushes = _count(top, "max_pushes", least=1)
        push_queue = _count(top, "push_queue", least=0)
        top.finish()
        problems.raise_if_any(f"{where}: invalid server settings")
        return cls(tuple(command), main, upstream, tuple(admins), max_pushes, push_queue)

    @classmethod
    def load(cls, path: Path) -> ServerConfig:
        try:
            text = path.read_bytes()
        except OSError as err:
            raise GitopsError(f"{path}: cannot read the server settings ({err.strerror})") from err
        return cls.parse(text, str(path))


def _count(top: Reader, key: str, *, least: int) -> int | None:
    value = top.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        top.problem(key, f"must be a whole number of at least {least}")
        return None
    return value
