"""``gitops publish --recover``: the signed way back after a legitimate history rewrite.

When the server's ``deploy/<host>`` no longer holds the commit the host applied (the
server was restored from a backup), every later publish would be refused by the host as
"does not descend from the applied commit". A recovery commit goes on top of whatever the
server holds now, rendered from main like any deploy commit, and names the applied commit
it supersedes in a ``Recovers`` trailer. Hosts accept it without being touched because a
publisher signed it; nobody without a publisher key can make one, and it names one exact
commit, so it cannot be replayed for another.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, replace
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import Fleet
from gitops.protocol import TRAILER_SOURCE, branch_name, deploy_ref
from gitops.publish import checks, evidence, push
from gitops.publish import plan as planning
from gitops.publish.lineage import Generations, Order, SourceOrder
from gitops.trust import commits, keys

REPORTS_READ = 50  # how many of the host's newest reports are searched for a verified one
_FULL_SHA = re.compile(r"^[0-9a-f]{40}$")


@dataclass(frozen=True)
class Request:
    repo: Path
    source: str
    host: str
    key_path: Path
    remote: str
    applied: str | None  # what the host runs, when its reports cannot say


@dataclass(frozen=True)
class Recovered:
    published: planning.Published
    commit: pygit2.Oid
    supersedes: str
    on_top_of: pygit2.Oid | None  # the server's head it was written on


def recover(request: Request, *, progress: push.Progress = push.quiet) -> Recovered:
    key = keys.load_signer(request.key_path)
    repository = commits.open_repository(request.repo)
    source = commits.resolve_commit(repository, request.source)
    fleet = planning.load_fleet_at(repository, source)
    if request.host not in fleet.hosts:
        raise GitopsError(f"unknown host {request.host}; hosts are the directories in hosts/")
    generations = Generations(repository)
    generations.of(source.id)
    head = push.remote_heads(repository, request.remote, progress=progress).get(request.host)
    applied = _applied(repository, request, fleet, progress)
    _check_needed(repository, request, head, applied.commit)
    if head is not None:
        _check_head(repository, request, fleet, head)
    _check_source(repository, request, source.id, applied)
    push.adopt(repository, {request.host: head}, remote=request.remote)
    plan = planning.make_plan(
        repository, str(source.id), only=[request.host], fleet=fleet, heads={request.host: head}
    )
    plan = replace(
        plan, hosts=tuple(replace(h, recovers=pygit2.Oid(hex=applied.commit)) for h in plan.hosts)
    )
    published = planning.write_commits(
        repository, plan, key, progress=progress, generations=generations, move_refs=False
    )
    push.push_published(repository, request.remote, published, progress=progress)
    return Recovered(published, published.commits[request.host], applied.commit, head)


def _applied(
    repository: pygit2.Repository, request: Request, fleet: Fleet, progress: push.Progress
) -> evidence.Applied:
    if request.applied is not None:
        if not _FULL_SHA.match(request.applied):
            raise GitopsError(
                f"--applied {request.applied!r}: give the full 40-character id of the deploy "
                f"commit {request.host} runs ('gitops agent status' on the host shows it)"
            )
        return evidence.Applied(request.host, request.applied, None, "")
    found = evidence.reported_applied(
        repository, request.remote, fleet, [request.host], depth=REPORTS_READ, warn=progress
    ).get(request.host)
    if found is None:
        raise GitopsError(
            f"no report on reports/{request.host} signed by {request.host}'s key names the "
            "deploy commit it applied; pass --applied <sha> (on the host, 'gitops agent "
            "status' shows it)"
        )
    progress(
        f"{request.host} last reported applying {found.commit[:8]} (report {found.report[:8]})"
    )
    return found


def _check_needed(
    repository: pygit2.Repository, request: Request, head: pygit2.Oid | None, applied: str
) -> None:
    oid = pygit2.Oid(hex=applied)
    if head is not None and (
        head == oid or (oid in repository and repository.descendant_of(head, oid))
    ):
        raise GitopsError(
            f"nothing to recover: {branch_name(deploy_ref(request.host))} on {request.remote} "
            f"contains {applied[:8]}, which {request.host} applied; publish as usual "
            "('gitops publish --push')"
        )


def _check_head(
    repository: pygit2.Repository, request: Request, fleet: Fleet, head: pygit2.Oid
) -> None:
    """The head we build on must itself be a publisher's commit for this host."""
    branches = checks.BranchCheck(repository, request.remote, fleet.settings.publisher_trust())
    problem = branches.check(request.host, head, known=None, applied=None)
    if problem is not None:
        raise GitopsError(problem.problem)


def _check_source(
    repository: pygit2.Repository,
    request: Request,
    source: pygit2.Oid,
    applied: evidence.Applied,
) -> None:
    """The host must not be moved to a main older than the one it runs."""
    running = applied.source or _source_of(repository, applied.commit)
    if running is None:
        return  # the agent still compares Source-Generation with what it runs
    order = SourceOrder(repository, source).of(running)
    if order is Order.SAME_OR_NEWER:
        return
    raise GitopsError(
        f"main {str(source)[:8]} is not newer than {running[:8]}, which {request.host} runs "
        f"({order.value}); fetch main ('git fetch {request.remote} main') and recover from "
        "the newest commit"
    )


def _source_of(repository: pygit2.Repository, sha: str) -> str | None:
    commit = repository.get(sha)
    if not isinstance(commit, pygit2.Commit):
        return None
    return commits.trailers(commit.message).get(TRAILER_SOURCE)
