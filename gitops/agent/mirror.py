"""The agent's local bare repository: fetched deploy commits and its own reports.

Fetched heads land in a quarantine ref (``refs/gitops/incoming``) and are only recorded
as applied after verification, build and activation. The verified tree is written to
``trees/<commit>`` and ``current`` is swapped to it atomically, so an admin can read
exactly what the host runs.
"""

from __future__ import annotations

import contextlib
import shutil
from pathlib import Path

import pygit2

from gitops.protocol import deploy_ref, reports_ref
from gitops.system import atomic, transport

INCOMING_REF = "refs/gitops/incoming"
APPLIED_REF = "refs/gitops/applied"
REMOTE_REPORTS_REF = "refs/gitops/remote-reports"
TREES_DIR = "trees"
CURRENT_LINK = "current"


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
        """Fetch only ``deploy/<host>`` into the quarantine ref; None if the branch is absent."""
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

    def put_tree_in_place(self, commit_id: pygit2.Oid) -> Path:
        """Write the commit's tree to ``trees/<commit>`` and point ``current`` at it."""
        trees = self.state_dir / TREES_DIR
        trees.mkdir(parents=True, exist_ok=True)
        final = trees / str(commit_id)
        if not final.exists():
            staging = trees / f".{commit_id}.partial"
            shutil.rmtree(staging, ignore_errors=True)
            commit = self.repo.get(commit_id)
            assert isinstance(commit, pygit2.Commit)
            _write_tree(self.repo, commit.tree, staging)
            staging.rename(final)
        atomic.replace_symlink(self.state_dir / CURRENT_LINK, Path(TREES_DIR) / str(commit_id))
        return final

    def prune_trees(self, keep: set[str]) -> None:
        trees = self.state_dir / TREES_DIR
        if not trees.is_dir():
            return
        for entry in trees.iterdir():
            if entry.name.lstrip(".").split(".")[0] not in keep:
                with contextlib.suppress(OSError):
                    shutil.rmtree(entry)


def _write_tree(repo: pygit2.Repository, tree: pygit2.Tree, directory: Path) -> None:
    directory.mkdir(parents=True)
    for entry in tree:
        name = entry.name
        assert name is not None and "/" not in name and name not in (".", "..")
        target = directory / name
        if isinstance(entry, pygit2.Tree):
            _write_tree(repo, entry, target)
        elif entry.filemode == pygit2.enums.FileMode.LINK:
            blob = repo.get(entry.id)
            assert isinstance(blob, pygit2.Blob)
            target.symlink_to(bytes(blob.data).decode())
        elif isinstance(entry, pygit2.Blob):
            target.write_bytes(bytes(entry.data))
            if entry.filemode == pygit2.enums.FileMode.BLOB_EXECUTABLE:
                target.chmod(0o755)
