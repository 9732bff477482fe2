"""The agent's local bare repository: verified deploy commits and its own reports.

Verify before download. A new head is first fetched as *commits only* (``--filter=tree:0``)
into a throw-away quarantine repository beside the mirror (``quarantine.git``, which
borrows the mirror's objects through git's alternates, so only new commits travel). The
chain is verified there; only an accepted head is then fetched in full into the mirror, and
the quarantine is deleted either way. An unsigned push costs the host a few hundred bytes
per commit and leaves nothing behind. A server that does not allow filters sends
everything; it still lands only in the quarantine, and the agent says so.

Fetched heads land in a quarantine ref (``refs/gitops/incoming``) and are only recorded
as applied after verification, build and activation. The verified tree is written to
``trees/<commit>`` (for admins to read; Nix builds from the repository itself) and
``current`` is swapped to it atomically. It is written without following links: each
file is created relative to its directory's descriptor, ``O_NOFOLLOW | O_EXCL``.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import deploy_ref, reports_ref
from gitops.system import atomic, transport
from gitops.trust import trees

log = logging.getLogger(__name__)

INCOMING_REF = "refs/gitops/incoming"
APPLIED_REF = "refs/gitops/applied"
REMOTE_REPORTS_REF = "refs/gitops/remote-reports"
TREES_DIR = "trees"
CURRENT_LINK = "current"
QUARANTINE_DIR = "quarantine.git"

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Incoming:
    """A head fetched into the quarantine: its commits, readable with the mirror's objects."""

    head: pygit2.Oid
    repo: pygit2.Repository
    complete: bool  # the server ignored the filter: trees and blobs came too


class Mirror:
    def __init__(self, state_dir: Path, host: str) -> None:
        self.state_dir = state_dir
        self.host = host
        self.path = state_dir / "repo.git"
        if (self.path / "HEAD").exists():
            self.repo = pygit2.Repository(str(self.path))
        else:
            state_dir.mkdir(parents=True, exist_ok=True)
            self.repo = pygit2.init_repository(str(self.path), bare=True)

    @property
    def local_reports_ref(self) -> str:
        return reports_ref(self.host)

    @property
    def quarantine_path(self) -> Path:
        return self.state_dir / QUARANTINE_DIR

    def target(self, ref: str) -> pygit2.Oid | None:
        reference = self.repo.references.get(ref)
        if reference is None:
            return None
        target = reference.target
        return target if isinstance(target, pygit2.Oid) else None

    def set_ref(self, ref: str, oid: pygit2.Oid, message: str) -> None:
        self.repo.create_reference_direct(ref, oid, True, message=message)

    def delete_ref(self, ref: str) -> None:
        reference = self.repo.references.get(ref)
        if reference is not None:
            reference.delete()

    def _fetch_one(
        self, remote: str, env: dict[str, str], ref: str, into: str
    ) -> pygit2.Oid | None:
        try:
            transport.fetch(self.path, remote, [f"+{ref}:{into}"], env=env)
        except transport.RefNotFoundError:
            self.delete_ref(into)
            return None
        return self.target(into)

    def fetch_deploy(self, remote: str, env: dict[str, str]) -> pygit2.Oid | None:
        """Fetch ``deploy/<host>`` in full, unverified, into the quarantine ref; None if the
        branch is absent. The agent's cycle uses :meth:`fetch_commits` instead."""
        return self._fetch_one(remote, env, deploy_ref(self.host), INCOMING_REF)

    def fetch_remote_reports(self, remote: str, env: dict[str, str]) -> pygit2.Oid | None:
        return self._fetch_one(remote, env, reports_ref(self.host), REMOTE_REPORTS_REF)

    def applied_file(self, path: str) -> bytes | None:
        """A file of the applied deploy commit's tree (its flake.lock), None if absent."""
        target = self.target(APPLIED_REF)
        commit = self.repo.get(target) if target is not None else None
        if not isinstance(commit, pygit2.Commit):
            return None
        try:
            entry = commit.tree[path]
        except KeyError:
            return None
        return bytes(entry.data) if isinstance(entry, pygit2.Blob) else None

    # -- verify before download ------------------------------------------------------------

    def fetch_commits(self, remote: str, env: dict[str, str]) -> Incoming | None:
        """Fetch the commits of ``deploy/<host>`` (no trees, no blobs) into a fresh
        quarantine; None if the branch is absent."""
        self.drop_quarantine()
        path = self.quarantine_path
        pygit2.init_repository(str(path), bare=True)
        (path / "objects" / "info" / "alternates").write_text(
            f"{(self.path / 'objects').resolve()}\n", encoding="utf-8"
        )
        try:
            filtered = transport.fetch_commits_only(
                path, remote, [f"+{deploy_ref(self.host)}:{INCOMING_REF}"], env=env
            )
        except transport.RefNotFoundError:
            self.drop_quarantine()
            return None
        except GitopsError:
            self.drop_quarantine()
            raise
        if not filtered:
            log.warning(
                "the git server does not allow filtered fetches (uploadpack.allowFilter), so "
                "deploy/%s was downloaded in full before verification; it is kept only if "
                "verified. Enable it on the server (docs/operations.md)",
                self.host,
            )
        repo = pygit2.Repository(str(path))
        head = repo.references[INCOMING_REF].target
        if not isinstance(head, pygit2.Oid):
            raise GitopsError(f"{INCOMING_REF} in {path} is not a commit")
        return Incoming(head, repo, complete=not filtered)

    def fetch_verified(self, remote: str, env: dict[str, str], incoming: Incoming) -> None:
        """Fetch the verified head in full (by id: a branch moved meanwhile is not taken)
        into the mirror's quarantine ref, then delete the quarantine."""
        source = str(self.quarantine_path) if incoming.complete else remote
        try:
            transport.fetch(self.path, source, [f"+{incoming.head}:{INCOMING_REF}"], env=env)
        finally:
            self.drop_quarantine()

    def drop_quarantine(self) -> None:
        shutil.rmtree(self.quarantine_path, ignore_errors=True)

    def forget_incoming(self) -> None:
        """Drop a downloaded head that was refused after all, and its objects."""
        self.delete_ref(INCOMING_REF)
        transport.prune(self.path)

    # -- the tree for admins to read -------------------------------------------------------

    def put_tree_in_place(self, commit_id: pygit2.Oid) -> Path:
        """Write the commit's tree to ``trees/<commit>`` and point ``current`` at it.

        Raises TreeError for a tree that must not be written (trust/trees.py)."""
        commit = self.repo.get(commit_id)
        if not isinstance(commit, pygit2.Commit):
            raise GitopsError(f"{commit_id} is not a commit in {self.path}")
        trees.check_tree(self.repo, commit.tree_id, what=f"deploy commit {str(commit_id)[:8]}")
        directory = self.state_dir / TREES_DIR
        directory.mkdir(parents=True, exist_ok=True)
        final = directory / str(commit_id)
        if final.is_symlink():
            final.unlink()
        if not final.is_dir():
            staging = directory / f".{commit_id}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            staging.mkdir()
            try:
                fd = os.open(staging, _DIR_FLAGS)
                try:
                    trees.write_tree(self.repo, commit.tree_id, fd)
                finally:
                    os.close(fd)
            except OSError as err:
                raise GitopsError(
                    f"cannot write deploy commit {str(commit_id)[:8]}'s tree to {staging}: "
                    f"{err.strerror}"
                ) from err
            staging.rename(final)
        atomic.replace_symlink(self.state_dir / CURRENT_LINK, Path(TREES_DIR) / str(commit_id))
        return final

    def prune_trees(self, keep: set[str]) -> None:
        directory = self.state_dir / TREES_DIR
        if not directory.is_dir():
            return
        for entry in directory.iterdir():
            if entry.name.lstrip(".").split(".")[0] not in keep:
                with contextlib.suppress(OSError):
                    shutil.rmtree(entry)
