"""What each identity may push, checked ref by ref before git updates anything.

Each check returns None to accept the update, or the reason to refuse it in words the
pusher can act on (the hook prints ``gitops: <branch>: <reason>``). The rules:

- a host pushes only ``reports/<itself>``: fast-forward commits, each signed by its key
  in main's ``hosts/<host>/host.yaml``, holding only a ``status.json`` that parses as a
  report about that host;
- a publisher pushes only ``deploy/<host>``: fast-forward commits, each signed by a
  publisher in main's ``fleet.yaml`` and addressed to that host (``Gitops-Host``);
- an admin pushes only ``main``, fast-forward, each commit on its first-parent line (the
  admin's own commits and merges) signed by an admin key of the server (``main:
  signed``), or not at all (``main: mirror``);
- nobody deletes a branch or rewrites one, and nobody pushes ``refs/archive/`` (the
  server's own marks, docs/server.md#retention).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import datetime

import pygit2

from gitops.protocol import (
    ARCHIVE_ROOT,
    ENROLL_PREFIX,
    ESCROW_DIR,
    MAIN_REF,
    ROLLOUT_REF,
    SBOM_FILE,
    STATUS_FILE,
    TRAILER_HOST,
    Report,
    branch_name,
    is_secret_name,
    reports_ref,
)
from gitops.server.config import MainPolicy, ServerConfig
from gitops.server.updates import Update, deploy_host
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PublicKey, SignatureError

# One push may bring this many new commits on a branch: more than a year of hourly
# reports, and a bound on the work one push can ask of the server.
MAX_NEW_COMMITS = 10_000
MAX_STATUS_BYTES = 1 << 20  # a status.json holds a log tail and a closure diff, not more

CommitCheck = Callable[[pygit2.Repository, pygit2.Commit], str | None]


def _short(oid: pygit2.Oid) -> str:
    return str(oid)[:8]


def _shape_problem(repo: pygit2.Repository, update: Update) -> str | None:
    """No deletes, no rewrites."""
    if update.new is None:
        return "deleting it is not allowed"
    if update.old is not None and not repo.descendant_of(update.new, update.old):
        return (
            f"not a fast-forward of {_short(update.old)}: history on this server is never "
            "rewritten (fetch, rebase onto it, push again)"
        )
    return None


def _new_commits(repo: pygit2.Repository, update: Update) -> list[pygit2.Commit] | str:
    assert update.new is not None
    walker = repo.walk(update.new, pygit2.enums.SortMode.TOPOLOGICAL)
    if update.old is not None:
        walker.hide(update.old)
    found: list[pygit2.Commit] = []
    for commit in walker:
        if len(found) == MAX_NEW_COMMITS:
            return f"more than {MAX_NEW_COMMITS} new commits in one push"
        found.append(commit)
    return found


def _check_commits(repo: pygit2.Repository, update: Update, check: CommitCheck) -> str | None:
    problem = _shape_problem(repo, update)
    if problem is not None:
        return problem
    new = _new_commits(repo, update)
    if isinstance(new, str):
        return new
    for commit in new:
        problem = check(repo, commit)
        if problem is not None:
            return problem
    return None


def _signature_problem(
    repo: pygit2.Repository,
    commit: pygit2.Commit,
    trust: AllowedSigners,
    signer: str,
    now: datetime,
) -> str | None:
    try:
        commits.verify_commit(repo, commit.id, trust, now=now)
    except SignatureError as err:
        return f"commit {_short(commit.id)} is not signed by {signer} ({err})"
    return None


# -- hosts: reports ----------------------------------------------------------------------


MAX_ESCROW_FILES = 16
MAX_ESCROW_BYTES = 64 * 1024
AGE_MAGIC = b"age-encryption.org/v1\n"


def _report_content_problem(commit: pygit2.Commit, host: str) -> str | None:
    short = _short(commit.id)
    if len(commit.parent_ids) > 1:
        return f"commit {short} is a merge; a reports branch is a straight line"
    entries = {entry.name: entry for entry in commit.tree}
    blob = entries.pop(STATUS_FILE, None)
    sbom = entries.pop(SBOM_FILE, None)
    escrow = entries.pop(ESCROW_DIR, None)
    if entries or not isinstance(blob, pygit2.Blob) or not isinstance(sbom, pygit2.Blob | None):
        return (
            f"commit {short} must hold {STATUS_FILE} and, optionally, {SBOM_FILE} and "
            f"{ESCROW_DIR}/: nothing else"
        )
    if escrow is not None and (problem := _escrow_problem(escrow)):
        return f"commit {short}: {problem}"
    if sbom is not None:
        # Here, not at the top: CycloneDX takes longer to import than the rest of the
        # check takes to run, and most reports carry no SBOM.
        from gitops.inventory.sbom import read_sbom

        try:
            read_sbom(bytes(sbom.data))
        except ValueError as err:
            return f"commit {short}: {SBOM_FILE} is not a valid SBOM ({err})"
    if blob.size > MAX_STATUS_BYTES:
        return f"commit {short}: {STATUS_FILE} is {blob.size} bytes (at most {MAX_STATUS_BYTES})"
    try:
        report = Report.from_json(bytes(blob.data))
    except ValueError as err:
        return f"commit {short}: {STATUS_FILE} is not a valid report ({err})"
    if report.host != host:
        return f"commit {short}: {STATUS_FILE} reports on {report.host!r}, not {host}"
    return None


def _escrow_problem(escrow: pygit2.Object) -> str | None:
    """``escrow/`` holds at most 16 binary age files ``<name>.age`` of at most 64 KiB."""
    if not isinstance(escrow, pygit2.Tree) or len(escrow) > MAX_ESCROW_FILES:
        return f"{ESCROW_DIR}/ must be a directory of at most {MAX_ESCROW_FILES} age files"
    for item in escrow:
        name = str(item.name)
        if (
            not isinstance(item, pygit2.Blob)
            or not is_secret_name(name.removesuffix(".age"))
            or not name.endswith(".age")
            or item.size > MAX_ESCROW_BYTES
            or not bytes(item.data).startswith(AGE_MAGIC)
        ):
            return f"{ESCROW_DIR}/{name[:80]} is not a binary age file <name>.age of at most 64 KiB"
    return None


def check_report_update(
    repo: pygit2.Repository,
    update: Update,
    *,
    host: str,
    key: PublicKey | None,
    now: datetime,
) -> str | None:
    if update.ref != reports_ref(host):
        return f"host {host} may push only {branch_name(reports_ref(host))}"
    if key is None and update.new is not None:
        return (
            f"main has no valid key for {host} (hosts/{host}/host.yaml), so its reports "
            "cannot be checked; fix host.yaml by pull request"
        )
    trust = AllowedSigners.of([(host, key)]) if key is not None else AllowedSigners()
    signer = f"{host}'s key in main's hosts/{host}/host.yaml"

    def check(repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        return _signature_problem(repo, commit, trust, signer, now) or _report_content_problem(
            commit, host
        )

    return _check_commits(repo, update, check)


# -- publishers: deploy branches -----------------------------------------------------------


def check_deploy_update(
    repo: pygit2.Repository, update: Update, *, trust: AllowedSigners, now: datetime
) -> str | None:
    if update.ref == ROLLOUT_REF:  # staged rollouts' record (docs/rollout.md)
        return _check_commits(
            repo,
            update,
            lambda repo, commit: _signature_problem(
                repo, commit, trust, "a publisher in main's fleet.yaml", now
            ),
        )
    host = deploy_host(update.ref)
    if host is None:
        return "publishers may push only deploy/<host> and rollout"

    def check(repo: pygit2.Repository, commit: pygit2.Commit) -> str | None:
        signed = _signature_problem(repo, commit, trust, "a publisher in main's fleet.yaml", now)
        if signed is not None:
            return signed
        target = commits.trailers(commit.message).get(TRAILER_HOST)
        if target != host:
            return (
                f"commit {_short(commit.id)} is addressed to {target or 'no host'} "
                f"({TRAILER_HOST} trailer), not {host}"
            )
        return None

    return _check_commits(repo, update, check)


# -- admins: main ----------------------------------------------------------------------


def check_main_update(
    repo: pygit2.Repository, update: Update, *, config: ServerConfig, now: datetime
) -> str | None:
    if update.ref != MAIN_REF:
        return "admins may push only main"
    if config.main is MainPolicy.MIRROR:
        return (
            f"main is mirrored from {config.upstream}: change it there (a pull request); "
            "'gitops server sync' brings it here"
        )
    if not config.admins:
        return "server.yaml lists no admin keys, so no push to main can be checked"
    problem = _shape_problem(repo, update)
    if problem is not None:
        return problem
    trust = config.admin_trust()
    line = _first_parent_line(repo, update)
    if isinstance(line, str):
        return line
    for commit in line:
        problem = _signature_problem(repo, commit, trust, "an admin key in server.yaml", now)
        if problem is not None:
            return problem
    return None


def _first_parent_line(repo: pygit2.Repository, update: Update) -> list[pygit2.Commit] | str:
    """The new commits along main's first-parent line: an admin's own commits and merges.
    A signed merge vouches for its whole tree, so the commits a pull request brought in
    (the merge's other parents) need not carry an admin's signature themselves."""
    assert update.new is not None
    found: list[pygit2.Commit] = []
    oid: pygit2.Oid | None = update.new
    while oid is not None:
        if update.old is not None and (oid == update.old or repo.descendant_of(update.old, oid)):
            break
        if len(found) == MAX_NEW_COMMITS:
            return f"more than {MAX_NEW_COMMITS} new commits in one push"
        commit = repo.get(oid)
        assert isinstance(commit, pygit2.Commit)
        found.append(commit)
        oid = commit.parent_ids[0] if commit.parent_ids else None
    return found


def enrolment_refusal(update: Update) -> str | None:
    """This server authenticates machines by the host keys main already lists, so a new
    machine has no identity to push ``enroll/<host>`` with (docs/enroll-host.md)."""
    if update.ref.startswith(ENROLL_PREFIX):
        return (
            "enrolment proposals go to the fleet's forge or plain repository, not this "
            "server (it knows no key of a machine main does not list yet); see "
            "docs/enroll-host.md"
        )
    return None


def archive_refusal(update: Update) -> str | None:
    """``refs/archive/`` is written by ``gitops server archive`` on the server alone."""
    if update.ref.startswith(ARCHIVE_ROOT):
        return (
            "refs/archive/ is written only by 'gitops server archive' on the server itself; "
            "nobody pushes it"
        )
    return None


def refusal_lines(refusals: Sequence[tuple[Update, str]]) -> list[str]:
    return [f"gitops: {update.branch}: {reason}" for update, reason in refusals]
