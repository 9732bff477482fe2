"""A small fleet with a bare git server, for publish tests through the real CLI:
clones of it, deploy heads and trailers read back with git, and host reports signed with
each host's own key (what a fresh clone takes as the host's word)."""

from __future__ import annotations

import subprocess
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from gitops.demo import standin
from gitops.protocol import Report, Result, deploy_ref, reports_ref
from gitops.report_commits import create_report_commit
from gitops.trust import commits
from gitops.trust.sshsig import PrivateKeyTypes
from testing.helpers import commit_all, fleet_repo, git, git_out, gitops, push_to_bare

HOSTS = {
    "web-1": ["server"],
    "web-2": ["server"],
    "dev-ws-1": ["workstation", "developer"],
    "admin-1": ["workstation"],
}


@dataclass
class ServedFleet:
    root: Path  # the admin's clone (work tree), remote "origin" = server
    key_path: Path  # the publisher's private key
    server: Path  # bare repository
    host_keys: dict[str, PrivateKeyTypes]
    publisher: PrivateKeyTypes

    def publish(
        self, *extra: str | Path, repo: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        return gitops("publish", "--repo", repo or self.root, "--key", self.key_path, *extra)

    def head(self, host: str, repo: Path | None = None) -> str | None:
        """deploy/<host> in ``repo`` (default: the server)."""
        found = git(
            "rev-parse", "--verify", "-q", deploy_ref(host), cwd=repo or self.server, check=False
        )
        return found.stdout.strip() or None

    def trailers(self, sha: str) -> dict[str, str]:
        return commits.trailers(git_out("log", "-1", "--format=%B", sha, cwd=self.server))

    def change(self, path: str, text: str, message: str, *, repo: Path | None = None) -> str:
        """Commit a change on main in ``repo`` (default: the admin's clone) and push main."""
        where = repo or self.root
        (where / path).write_text(text)
        sha = commit_all(where, message)
        git("push", "-q", "origin", "HEAD:refs/heads/main", cwd=where)
        return sha

    def change_every_host(self, tag: str, *, repo: Path | None = None) -> str:
        """A change to modules/default.nix, which every host's tree holds."""
        return self.change(
            "modules/default.nix", standin.MODULES + f"# {tag}\n", f"modules: {tag}", repo=repo
        )

    def clone(self, into: Path) -> Path:
        """A fresh clone of main only, as a CI checkout makes it."""
        git("clone", "-q", "--single-branch", "-b", "main", self.server, into, cwd=into.parent)
        return into

    def force(self, host: str, sha: str) -> None:
        """Point the server's deploy/<host> at ``sha`` (a rewind, a restore, a hand push)."""
        git("update-ref", deploy_ref(host), sha, cwd=self.server)

    def report_applied(self, host: str, applied: str, *, key: PrivateKeyTypes | None = None) -> str:
        """Push a report signed by ``host``'s key (or ``key``) saying it applied ``applied``."""
        repo = pygit2.Repository(str(self.server))
        source = commits.trailers(git_out("log", "-1", "--format=%B", applied, cwd=self.server))
        report = Report(
            host=host,
            time=datetime.now(UTC),
            agent_version="test",
            result=Result.APPLIED,
            reason=f"switched to {applied[:8]}",
            report_id=uuid.uuid4().hex,
            deploy_seen=applied,
            deploy_applied=applied,
            source_commit=source.get("Source-Commit"),
        )
        parent = commits.ref_target(repo, reports_ref(host))
        oid = create_report_commit(repo, report, parent=parent, key=key or self.host_keys[host])
        git("update-ref", reports_ref(host), str(oid), cwd=self.server)
        return str(oid)


def served_fleet(tmp_path: Path, *, extra_fleet: dict[str, object] | None = None) -> ServedFleet:
    root = tmp_path / "fleet"
    publisher, host_keys = fleet_repo(
        root,
        HOSTS,
        publisher_key=tmp_path / "publisher",
        machines=tmp_path / "machines",
        extra_fleet=extra_fleet,
    )
    commit_all(root, "Initial fleet")
    server = push_to_bare(root, tmp_path / "server.git")
    return ServedFleet(root, tmp_path / "publisher", server, host_keys, publisher)
