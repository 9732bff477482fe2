"""Where things are in a server directory, who may connect, and which repository a path names.

Imported by ``gitops server serve`` on every ssh connection, so it stays light: the
standard library and the protocol only (no pygit2, no YAML).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Final

from typing_extensions import override

from gitops.errors import GitopsError
from gitops.protocol import is_host_name

FLEET_REPO: Final = "fleet.git"
HOSTS_DIR: Final = "hosts"
RETIRED_DIR: Final = "retired"  # repositories of hosts no longer in main
HOOKS_DIR: Final = "hooks"
AUTHORIZED_KEYS: Final = "authorized_keys"
CONFIG_FILE: Final = "server.yaml"
SSHD_SNIPPET: Final = "sshd_config"
LOCK_FILE: Final = ".sync.lock"
MAINTAIN_LOCK: Final = ".maintain.lock"  # one maintain or archive at a time
SLOTS_DIR: Final = "slots"  # lock files: pushes that may run, and pushes that may wait
SLOT_PREFIX: Final = "push-"
QUEUE_PREFIX: Final = "queue-"

# Set by ``serve`` (sshd's forced command) for git and its hooks; a client cannot set it:
# sshd passes on only what AcceptEnv names (GIT_PROTOCOL).
IDENTITY_ENV: Final = "GITOPS_SERVER_IDENTITY"

# What a publisher's or an admin's principal may look like: it is written into
# authorized_keys' command="..." and must need no quoting there.
_PRINCIPAL = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


class Role(StrEnum):
    HOST = "host"  # fetches its own deploy branch, pushes its own reports
    PUBLISHER = "publisher"  # CI: pushes signed deploy commits, reads fleet.git
    ADMIN = "admin"  # pushes main (as the server's main policy allows), reads fleet.git


def is_principal(text: str) -> bool:
    return bool(_PRINCIPAL.match(text))


@dataclass(frozen=True)
class Identity:
    role: Role
    name: str

    @classmethod
    def parse(cls, text: str) -> Identity:
        """``host:web-1``, ``publisher:ci@example.org``, ``admin:alice@example.org``."""
        role_text, _, name = text.partition(":")
        try:
            role = Role(role_text)
        except ValueError:
            raise GitopsError(
                f"identity {text!r}: the role must be host, publisher or admin (e.g. host:web-1)"
            ) from None
        valid = is_host_name(name) if role is Role.HOST else is_principal(name)
        if not valid:
            raise GitopsError(f"identity {text!r}: {name!r} is not a valid {role} name")
        return cls(role, name)

    @override
    def __str__(self) -> str:
        return f"{self.role}:{self.name}"


@dataclass(frozen=True)
class RepoName:
    """A repository of the server, by its name in a URL: ``fleet.git`` or
    ``hosts/<host>.git``. ``host`` is None for fleet.git."""

    host: str | None = None

    @property
    def relative(self) -> str:
        return FLEET_REPO if self.host is None else f"{HOSTS_DIR}/{self.host}.git"

    @override
    def __str__(self) -> str:
        return self.relative


FLEET: Final = RepoName()
_REQUESTED = re.compile(r"^(?:/|~/)?(?:(fleet)|hosts/([a-z0-9][a-z0-9-]*))(?:\.git)?/?$")


def parse_repo_name(path: str) -> RepoName | None:
    """The repository a client asked for (``/hosts/web-1.git``, ``hosts/web-1``,
    ``~/fleet.git``...), or None when the path names none of them."""
    match = _REQUESTED.match(path)
    if match is None:
        return None
    host = match.group(2)
    if host is None:
        return FLEET
    return RepoName(host) if is_host_name(host) else None


@dataclass(frozen=True)
class Layout:
    root: Path

    @property
    def fleet(self) -> Path:
        return self.root / FLEET_REPO

    @property
    def hosts_dir(self) -> Path:
        return self.root / HOSTS_DIR

    @property
    def retired_dir(self) -> Path:
        return self.root / RETIRED_DIR

    @property
    def hooks_dir(self) -> Path:
        return self.root / HOOKS_DIR

    @property
    def authorized_keys(self) -> Path:
        return self.root / AUTHORIZED_KEYS

    @property
    def config_file(self) -> Path:
        return self.root / CONFIG_FILE

    @property
    def sshd_snippet(self) -> Path:
        return self.root / SSHD_SNIPPET

    @property
    def slots_dir(self) -> Path:
        return self.root / SLOTS_DIR

    @property
    def lock_file(self) -> Path:
        return self.root / LOCK_FILE

    @property
    def maintain_lock(self) -> Path:
        return self.root / MAINTAIN_LOCK

    def repositories(self) -> list[Path]:
        """fleet.git and every host's repository (not the retired ones), in name order."""
        hosts = sorted(self.hosts_dir.glob("*.git")) if self.hosts_dir.is_dir() else []
        return [self.fleet, *(p for p in hosts if not p.name.startswith("."))]

    def host_repo(self, host: str) -> Path:
        return self.hosts_dir / f"{host}.git"

    def path_of(self, name: RepoName) -> Path:
        return self.fleet if name.host is None else self.host_repo(name.host)

    def name_of(self, git_dir: Path) -> RepoName | None:
        """Which of this server's repositories ``git_dir`` is (for a hook), or None."""
        try:
            relative = git_dir.resolve().relative_to(self.root.resolve())
        except ValueError:
            return None
        return parse_repo_name(relative.as_posix())

    def check_initialized(self) -> None:
        if not self.config_file.is_file() or not self.fleet.is_dir():
            raise GitopsError(
                f"{self.root}: not a gitops server directory (no {CONFIG_FILE} or {FLEET_REPO}); "
                "create it with 'gitops server init'"
            )
