"""What ``main`` in fleet.git says about trust: each host's key, the publishers' keys.

A push is checked against main as the server holds it, never against anything in the
push. Checking one host's report reads only ``fleet.yaml`` and that host's ``host.yaml``
(a view of the tree that lists one host), so it costs the same in a fleet of 10 or 10,000.
"""

from __future__ import annotations

from dataclasses import dataclass

import pygit2
from typing_extensions import override

from gitops.errors import GitopsError
from gitops.fleet.model import HOSTS_DIR, Fleet, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import MAIN_REF, is_host_name
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey


class _Listing(TreeSource):
    """main's tree, with ``hosts/`` listing only the hosts asked for."""

    def __init__(self, source: TreeSource, hosts: tuple[str, ...]) -> None:
        super().__init__(source.repo, source.tree, source.label)
        self.hosts = hosts

    @override
    def list_dir(self, path: str) -> list[str] | None:
        if path.strip("/") != HOSTS_DIR:
            return super().list_dir(path)
        # One lookup per host asked for, not a listing of every host in the fleet.
        return [name for name in self.hosts if self.is_dir(f"{HOSTS_DIR}/{name}")]


@dataclass(frozen=True)
class MainView:
    repo: pygit2.Repository
    commit: pygit2.Commit

    @classmethod
    def open(cls, repo: pygit2.Repository) -> MainView:
        head = commits.ref_target(repo, MAIN_REF)
        if head is None:
            raise GitopsError(f"{repo.path}: no main branch yet; push or mirror main first")
        commit = repo.get(head)
        if not isinstance(commit, pygit2.Commit):
            raise GitopsError(f"{repo.path}: main is not a commit")
        return cls(repo, commit)

    @property
    def short_id(self) -> str:
        return str(self.commit.id)[:8]

    def source(self) -> TreeSource:
        return TreeSource(self.repo, self.commit.tree, f"main {self.short_id}")

    def _fleet_of(self, hosts: tuple[str, ...]) -> Fleet:
        # Problems elsewhere in main (another host's file) must not decide this push.
        return load_fleet(_Listing(self.source(), hosts), Problems())

    def host_key(self, host: str) -> PublicKey | None:
        """``key`` from main's ``hosts/<host>/host.yaml``; None if absent or invalid."""
        found = self._fleet_of((host,)).hosts.get(host)
        return None if found is None else found.key

    def publisher_trust(self) -> AllowedSigners:
        return self._fleet_of(()).settings.publisher_trust()

    def fleet(self, problems: Problems) -> Fleet:
        """The whole fleet (for sync); every problem goes into ``problems``."""
        return load_fleet(self.source(), problems)

    def host_dirs(self) -> list[str]:
        """Names of main's ``hosts/<name>/`` directories that are valid host names."""
        source = self.source()
        return [
            name
            for name in source.list_dir(HOSTS_DIR) or []
            if is_host_name(name) and source.is_dir(f"{HOSTS_DIR}/{name}")
        ]
