"""``gitops publish`` as one call: load the key and the fleet, read the server's deploy
heads, plan, check each host that gets a commit, sign, push. The command only parses
arguments and prints what this returns.

Hosts are refused one by one (a rewound or hand-pushed branch, a source older than the
one already published); the others are published. When another publish moves the
server's branches between our read and our push, the push is refused whole and the run
starts again from the new heads, a few times.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import Fleet
from gitops.protocol import deploy_ref
from gitops.publish import build, checks, evidence, push
from gitops.publish import plan as planning
from gitops.publish.lineage import Generations, SourceOrder
from gitops.trust import commits, keys
from gitops.trust.sshsig import SigningKey

ATTEMPTS = 4


@dataclass(frozen=True)
class Request:
    repo: Path
    source: str  # the main commit to render from
    hosts: tuple[str, ...]  # only these hosts; all when empty
    key_path: Path
    push: bool
    remote: str
    systems: Path | None = None  # `gitops build`'s systems file: pin each host's system


@dataclass(frozen=True)
class Outcome:
    published: planning.Published
    refused: tuple[checks.Refusal, ...]  # hosts that got nothing, and why


@dataclass(frozen=True)
class _Run:
    """What stays the same over the attempts of one publish."""

    request: Request
    repository: pygit2.Repository
    key: SigningKey
    source: pygit2.Commit
    fleet: Fleet
    generations: Generations
    progress: push.Progress
    built: dict[str, build.BuiltSystem] | None  # the systems file, read once


def publish(request: Request, *, progress: push.Progress = push.quiet) -> Outcome:
    key = keys.load_signer(request.key_path)
    repository = commits.open_repository(request.repo)
    source = commits.resolve_commit(repository, request.source)
    fleet = planning.load_fleet_at(repository, source)
    generations = Generations(repository)
    generations.of(source.id)  # a shallow clone fails here, before any work
    built = build.read_systems(request.systems) if request.systems is not None else None
    run = _Run(request, repository, key, source, fleet, generations, progress, built)
    for attempt in range(1, ATTEMPTS + 1):
        try:
            return _attempt(run)
        except push.PushRaceError as err:
            if attempt == ATTEMPTS:
                raise GitopsError(f"{err}; gave up after {ATTEMPTS} attempts, run again") from err
            progress(f"{err}; reading them again")
    raise AssertionError("unreachable")


def _attempt(run: _Run) -> Outcome:
    request, repository = run.request, run.repository
    heads = (
        push.remote_heads(repository, request.remote, progress=run.progress)
        if request.push
        else None
    )
    plan = planning.make_plan(
        repository, str(run.source.id), only=request.hosts, fleet=run.fleet, heads=heads
    )
    reasons = _check(run, plan, heads)
    pinned, missing = build.pins(repository, plan, run.built)
    for host in missing:
        reasons.setdefault(host, checks.NotBuilt(str(request.systems)))
    kept = replace(plan, hosts=tuple(h for h in plan.hosts if h.host not in reasons))
    if heads is not None:
        push.adopt(repository, _bases(kept), remote=request.remote)
    published = planning.write_commits(
        repository,
        kept,
        run.key,
        progress=run.progress,
        generations=run.generations,
        move_refs=not request.push,
        systems=pinned,
    )
    if request.push:
        push.push_published(repository, request.remote, published, progress=run.progress)
    return Outcome(published, checks.group(reasons))


def _bases(plan: planning.Plan) -> dict[str, pygit2.Oid]:
    return {h.host: h.old_head for h in plan.changed if h.old_head is not None}


def _check(
    run: _Run, plan: planning.Plan, heads: dict[str, pygit2.Oid] | None
) -> dict[str, checks.Reason]:
    """Why each host that would get a commit must not (hosts not listed may)."""
    repository, remote = run.repository, run.request.remote
    reasons: dict[str, checks.Reason] = {}
    if heads is not None:
        reasons.update(_check_branches(run, plan, heads))
    order = SourceOrder(repository, run.source.id)
    for host_plan in plan.changed:
        if host_plan.host in reasons or host_plan.old_head is None:
            continue
        reason = checks.check_source(repository, order, host_plan.host, host_plan.old_head, remote)
        if reason is not None:
            reasons[host_plan.host] = reason
    return reasons


def _check_branches(
    run: _Run, plan: planning.Plan, heads: dict[str, pygit2.Oid]
) -> dict[str, checks.Reason]:
    """The server's branch of every host that would get a commit on top of it."""
    repository = run.repository
    on_server = [h.host for h in plan.changed if h.host in heads]
    known = {host: commits.ref_target(repository, deploy_ref(host)) for host in on_server}
    strangers = [host for host in on_server if known[host] is None]
    applied = evidence.reported_applied(
        repository, run.request.remote, run.fleet, strangers, warn=run.progress
    )
    branches = checks.BranchCheck(
        repository, run.request.remote, run.fleet.settings.publisher_trust()
    )
    reasons: dict[str, checks.Reason] = {}
    for host in on_server:
        report = applied.get(host)
        problem = branches.check(
            host, heads[host], known=known[host], applied=report.commit if report else None
        )
        if problem is not None:
            reasons[host] = problem
    return reasons
