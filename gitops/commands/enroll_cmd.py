"""``gitops enroll``: a new machine proposes itself to the fleet and waits for its deploy
branch (docs/enroll-host.md); ``gitops enroll list|accept``: an admin reviews and merges
proposals. The work is in gitops/agent/enrol.py (the machine) and
gitops/fleet/enrolment.py (the admin)."""

from __future__ import annotations

from pathlib import Path

import pygit2

from gitops import output
from gitops.agent import enrol
from gitops.errors import GitopsError
from gitops.fleet import enrolment
from gitops.protocol import MAIN_REF
from gitops.system import process, transport
from gitops.trust import commits, keys


def enroll(
    remote: str,
    name: str,
    key_path: Path,
    *,
    profiles: list[str],
    owner: str = "",
    root: Path = Path("/"),
    wait: float | None = None,
    deploy_remote: str | None = None,
    ssh_key: Path | None = None,
    known_hosts: Path | None = None,
) -> int:
    """Make or reuse the host key, describe the machine, and push a signed proposal;
    with ``wait``, then wait that many seconds for ``deploy/<name>``."""
    env = None
    if ssh_key is not None or known_hosts is not None:
        env = transport.Credentials(ssh_key=ssh_key, known_hosts=known_hosts).env()
    proposed = enrol.propose(
        remote, name, key_path, profiles=profiles, owner=owner, root=root, env=env
    )
    if proposed.made_key is not None:
        output.say(f"made a host key {proposed.made_key}")
    review = (
        f"an admin reviews it (gitops enroll list) and merges it (gitops enroll accept {name}); "
        f"then this machine gets deploy/{name}"
    )
    match proposed.stage:
        case enrol.Stage.PROPOSED:
            output.say(
                f"proposed {name} on enroll/{name} (key {proposed.key.fingerprint}); {review}"
            )
        case enrol.Stage.PENDING:
            output.say(
                f"enroll/{name} {str(proposed.commit)[:8]} is this machine's proposal already "
                f"(key {proposed.key.fingerprint}); {review}"
            )
        case enrol.Stage.ENROLLED:
            output.say(f"{name} is in main with this machine's key: enrolled")
    if wait is None:
        return 0
    watched = deploy_remote or remote
    output.progress(f"waiting up to {_duration(wait)} for deploy/{name} on {watched}")
    head = enrol.wait_for_deploy(watched, name, wait, env=env)
    if head is None:
        raise GitopsError(
            f"deploy/{name} did not appear on {watched} within {_duration(wait)}; is "
            f"enroll/{name} merged and published? Run 'gitops enroll --wait' again to keep waiting"
        )
    output.say(
        f"deploy/{name} is published ({head[:8]}): next, switch to it with the agent "
        f"(services.gitops-agent with hostName = \"{name}\", or 'gitops agent --config FILE once')"
    )
    return 0


def _duration(seconds: float) -> str:
    whole = int(seconds)
    if whole >= 3600 and whole % 3600 == 0:
        return f"{whole // 3600}h"
    if whole >= 60 and whole % 60 == 0:
        return f"{whole // 60}m"
    return f"{seconds:g}s"


def list_proposals(repo_path: Path, *, as_json: bool) -> int:
    repo = commits.open_repository(repo_path)
    proposals = enrolment.pending(repo)
    if as_json:
        output.emit_json(
            {
                "pending": [
                    {
                        "host": p.host,
                        "commit": str(p.commit),
                        "key": p.key.fingerprint if p.key else None,
                        "problems": list(p.problems),
                    }
                    for p in proposals
                ]
            }
        )
        return 0
    if not proposals:
        output.say("no pending enrolments (enroll/<host> branches)")
    for p in proposals:
        verdict = "ready to accept" if p.ok else "refused: " + "; ".join(p.problems)
        output.say(f"{p.host} {str(p.commit)[:8]}: {verdict}")
    return 0


def accept(repo_path: Path, name: str, admin_key: Path) -> int:
    """Merge ``enroll/<name>`` into main as a signed merge commit (its parents: main and
    the proposal, signed by the admin), after checking it again."""
    repo = commits.open_repository(repo_path)
    signer = keys.load_signer(admin_key)
    old, new, _ = enrolment.accept(repo, name, signer, admin_signature(repo))
    move_main(repo, repo_path, old, new)
    output.say(f"main is now {str(new)[:8]}, with hosts/{name}; push main, then publish")
    return 0


def admin_signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return commits.signature_of("gitops admin", "admin@gitops.invalid")


def move_main(repo: pygit2.Repository, repo_path: Path, old: pygit2.Oid, new: pygit2.Oid) -> None:
    """Fast-forward main; through git when main is checked out, so the work tree follows."""
    if not repo.is_bare and not repo.head_is_detached and repo.head.name == MAIN_REF:
        process.run(["git", "-C", repo_path, "merge", "-q", "--ff-only", str(new)], check=True)
        return
    commits.update_refs(repo, {MAIN_REF: (old, new)}, message="gitops enroll accept")
