"""Report commits on ``reports/<host>``: write one (the agent), read them back (the site).

A report commit's tree holds ``status.json`` and, when the host's running system changed
since its last SBOM, ``sbom.cdx.json``; the commit is signed with the host's key. See
docs/protocol.md.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field

import pygit2

from gitops.protocol import (
    ESCROW_DIR,
    SBOM_FILE,
    STATUS_FILE,
    TRAILER_DEPLOY_COMMIT,
    TRAILER_REPORT_ID,
    TRAILER_RESULT,
    Report,
)
from gitops.trust import commits
from gitops.trust.sshsig import PrivateKeyTypes

AGENT_EMAIL_DOMAIN = "gitops-agent.invalid"


def report_message(report: Report) -> str:
    short = (report.deploy_seen or "none")[:8]
    trailers = {TRAILER_REPORT_ID: report.report_id, TRAILER_RESULT: str(report.result)}
    if report.deploy_seen:
        trailers[TRAILER_DEPLOY_COMMIT] = report.deploy_seen
    return commits.format_message(
        f"report {report.host}: {report.result} {short}", report.reason, trailers
    )


def report_tree(
    repo: pygit2.Repository,
    report: Report,
    sbom: bytes | None = None,
    escrow: Mapping[str, bytes] | None = None,
) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    blob = repo.create_blob(report.to_json().encode("utf-8"))
    builder.insert(STATUS_FILE, blob, pygit2.enums.FileMode.BLOB)
    if sbom is not None:
        builder.insert(SBOM_FILE, repo.create_blob(sbom), pygit2.enums.FileMode.BLOB)
    if escrow:
        files = repo.TreeBuilder()
        for name, data in sorted(escrow.items()):
            files.insert(f"{name}.age", repo.create_blob(data), pygit2.enums.FileMode.BLOB)
        builder.insert(ESCROW_DIR, files.write(), pygit2.enums.FileMode.TREE)
    return builder.write()


def create_report_commit(
    repo: pygit2.Repository,
    report: Report,
    *,
    parent: pygit2.Oid | None,
    key: PrivateKeyTypes,
    sbom: bytes | None = None,
    escrow: Mapping[str, bytes] | None = None,
) -> pygit2.Oid:
    """Write (not yet on any ref) the signed commit holding ``report`` (and ``sbom``,
    and ``escrow/<name>.age`` files: ciphertext for the admins)."""
    identity = commits.signature_of(
        f"gitops-agent {report.host}", f"{report.host}@{AGENT_EMAIL_DOMAIN}", report.time
    )
    return commits.create_signed_commit(
        repo,
        tree=report_tree(repo, report, sbom, escrow),
        parents=[parent] if parent is not None else [],
        message=report_message(report),
        author=identity,
        key=key,
    )


@dataclass(frozen=True)
class ReportCommit:
    oid: pygit2.Oid
    raw: bytes  # the raw commit object, for signature checks
    status: bytes | None  # status.json, None when the commit has no such file
    report_id: str | None
    sbom: bytes | None = None  # sbom.cdx.json, when the commit carries one
    escrow: dict[str, bytes] = field(default_factory=dict)  # escrow/<name>.age, by name


def read_report_commit(repo: pygit2.Repository, oid: pygit2.Oid) -> ReportCommit:
    commit = repo.get(oid)
    assert isinstance(commit, pygit2.Commit)
    return ReportCommit(
        oid=oid,
        raw=commits.read_raw(repo, oid),
        status=read_file(commit, STATUS_FILE),
        report_id=commits.trailers(commit.message).get(TRAILER_REPORT_ID),
        sbom=read_file(commit, SBOM_FILE),
        escrow=read_escrow(commit),
    )


def read_escrow(commit: pygit2.Commit) -> dict[str, bytes]:
    """The ``escrow/<name>.age`` files of a report commit, by name."""
    try:
        entry = commit.tree[ESCROW_DIR]
    except KeyError:
        return {}
    if not isinstance(entry, pygit2.Tree):
        return {}
    return {
        str(item.name).removesuffix(".age"): bytes(item.data)
        for item in entry
        if isinstance(item, pygit2.Blob) and str(item.name).endswith(".age")
    }


def read_file(commit: pygit2.Commit, name: str) -> bytes | None:
    """A top-level file of a report commit's tree, None when there is none."""
    try:
        entry = commit.tree[name]
    except KeyError:
        return None
    return bytes(entry.data) if isinstance(entry, pygit2.Blob) else None


def walk_reports(
    repo: pygit2.Repository, head: pygit2.Oid, *, stop: pygit2.Oid | None = None
) -> Iterator[pygit2.Oid]:
    """Report commits from ``head`` back along first parents, newest first, until ``stop``."""
    oid: pygit2.Oid | None = head
    while oid is not None and oid != stop:
        yield oid
        commit = repo.get(oid)
        assert isinstance(commit, pygit2.Commit)
        oid = commit.parent_ids[0] if commit.parent_ids else None
