"""``gitops publish`` with ``rollout:`` in fleet.yaml: a new main commit goes to the first
wave only, and to the next when the current one passed (docs/rollout.md).

Each run reads the rollout record (``rollout``, from the server when pushing), starts a
new rollout when main moved, publishes the source to the waves reached (an ordinary
:func:`gitops.publish.run.publish` restricted to their hosts), judges the current wave
from its hosts' signed reports, and records each step (started, wave reached, halted,
done) as a publisher-signed commit on ``rollout``. Hosts of later waves keep their deploy
tree; with ``deploy.expires_after`` they still get heartbeat commits (their own source,
their own tree).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import Fleet
from gitops.fleet.rollout import Decision, RolloutSettings, WaveVerdict, assign, judge_wave
from gitops.fleet.rollout_record import (
    REPORTS_TRACKING,
    Record,
    Status,
    WaveRecord,
    observe_wave,
    read_record,
    write_record,
)
from gitops.fleet.source import TreeSource
from gitops.protocol import (
    REPORTS_PREFIX,
    ROLLOUT_REF,
    TRAILER_SOURCE,
    branch_name,
    deploy_ref,
    reports_ref,
)
from gitops.publish import plan as planning
from gitops.publish import push, run
from gitops.system import transport
from gitops.trust import commits, keys
from gitops.trust.sshsig import SigningKey


@dataclass(frozen=True)
class Staged:
    """What one run did."""

    record: Record
    steps: tuple[str, ...]  # what changed in the rollout, one line each (none: nothing)
    verdict: WaveVerdict | None  # the current wave's, as judged at the end
    published: tuple[run.Outcome, ...]  # the source to the waves reached
    renewed: tuple[run.Outcome, ...]  # heartbeats of hosts not reached


def settings_at(request: run.Request) -> RolloutSettings | None:
    """fleet.yaml's ``rollout:`` at the source commit (None: publish to every host)."""
    repository = commits.open_repository(request.repo)
    source = commits.resolve_commit(repository, request.source)
    return planning.load_fleet_at(repository, source).settings.rollout


@dataclass(frozen=True)
class _Context:
    request: run.Request
    repository: pygit2.Repository
    fleet: Fleet
    settings: RolloutSettings
    key: SigningKey
    principal: str
    now: datetime
    progress: push.Progress


def publish(
    request: run.Request, *, now: datetime | None = None, progress: push.Progress = push.quiet
) -> Staged:
    repository = commits.open_repository(request.repo)
    source = commits.resolve_commit(repository, request.source)
    fleet = planning.load_fleet_at(repository, source)
    settings = fleet.settings.rollout
    if settings is None:
        raise GitopsError("fleet.yaml has no 'rollout:' section; publish without waves")
    key = keys.load_signer(request.key_path)
    context = _Context(
        request,
        repository,
        fleet,
        settings,
        key,
        planning.publisher_principal(fleet, key),
        now or datetime.now(UTC),
        progress,
    )
    base = fetch_record(repository, request.remote if request.push else None)
    trust = fleet.settings.publisher_trust()
    previous = read_record(repository, base, trust) if base is not None else None
    steps: list[str] = []
    if previous is None or previous.source != str(source.id):
        _refuse_older(repository, source, previous)
        record = _start(context, source, previous)
        steps.append(f"rollout of {str(source.id)[:8]} started: wave {record.current.name}")
    else:
        record = previous
    published: list[run.Outcome] = []
    verdict = None
    while True:
        unpublished = record.current.published is None
        record, outcome = _publish_reached(context, record)
        if outcome is not None:
            published.append(outcome)
        if unpublished and record.current.published is not None:
            size = len(record.current.hosts)
            steps.append(
                f"wave {record.current.name} ({size} host{'s' if size != 1 else ''}) "
                f"given {record.source[:8]}"
            )
        if record.status is not Status.ROLLING:
            break
        verdict = _judge(context, record)
        if verdict.decision is Decision.WAIT:
            break
        record, line = _decide(context, record, verdict)
        steps.append(line)
    renewed = _renew_others(context, record)
    if record != previous:
        _save(context, record, base, steps or [f"rollout of {record.source[:8]}: recorded"])
    return Staged(record, tuple(steps), verdict, tuple(published), renewed)


def _refuse_older(
    repository: pygit2.Repository, source: pygit2.Commit, previous: Record | None
) -> None:
    if previous is None:
        return
    old = pygit2.Oid(hex=previous.source)
    if old in repository and repository.descendant_of(old, source.id):
        raise GitopsError(
            f"main {source.short_id} is older than {previous.source[:8]}, which is being "
            "rolled out (a stale clone?); publish from an up-to-date main"
        )


def _start(context: _Context, source: pygit2.Commit, previous: Record | None) -> Record:
    hosts = {name: host.tags for name, host in context.fleet.hosts.items()}
    groups = assign(context.settings, hosts)
    waves = tuple(
        WaveRecord(wave.name, dict.fromkeys(group))
        for wave, group in zip(context.settings.waves, groups, strict=True)
    )
    reason = ""
    if previous is not None and previous.status in (Status.ROLLING, Status.HALTED):
        reason = f"supersedes the {previous.status} rollout of {previous.source[:8]}"
    return Record(
        source=str(source.id),
        status=Status.ROLLING,
        wave=0,
        waves=waves,
        updated=context.now,
        reason=reason,
        by=context.principal,
    )


def _publish_reached(context: _Context, record: Record) -> tuple[Record, run.Outcome | None]:
    """Publish the source to every host of the waves reached; record each one's tree."""
    request = context.request
    reached = [h for w in record.reached() for h in w.hosts if h in context.fleet.hosts]
    wanted = set(request.hosts)
    hosts = sorted(h for h in reached if not wanted or h in wanted)
    if not hosts:
        return _with_trees(context, record), None
    if record.status in (Status.HALTED, Status.ABORTED):
        # Nothing new reaches anyone; hosts of the current wave keep what they were given.
        return record, None
    outcome = run.publish(
        replace(request, source=record.source, hosts=tuple(hosts)), progress=context.progress
    )
    return _with_trees(context, record), outcome


def _with_trees(context: _Context, record: Record) -> Record:
    """``record`` with the deploy tree of every reached host filled in, and when each
    reached wave was first published."""
    repository = context.repository
    source = commits.resolve_commit(repository, record.source)
    tree_source = TreeSource(repository, source.tree)
    waves = list(record.waves)
    for index, wave in enumerate(record.reached()):
        if all(t is not None for t in wave.hosts.values()) and wave.published is not None:
            continue
        trees = {
            name: (
                target
                if target is not None or name not in context.fleet.hosts
                else str(
                    planning.render_host_tree(
                        repository, source, context.fleet, context.fleet.hosts[name], tree_source
                    )
                )
            )
            for name, target in wave.hosts.items()
        }
        waves[index] = WaveRecord(wave.name, trees, wave.published or context.now)
    return replace(record, waves=tuple(waves))


def _judge(context: _Context, record: Record) -> WaveVerdict:
    wave = record.current
    heads = report_heads(context.repository, context.request, wave.hosts)
    observations = observe_wave(
        context.repository,
        wave,
        context.fleet.hosts,
        heads,
        now=context.now,
        soak=context.settings.soak,
        stale_after=context.fleet.settings.stale_after,
    )
    return judge_wave(
        wave.name, observations, context.settings.success_threshold, context.settings.soak
    )


def _decide(context: _Context, record: Record, verdict: WaveVerdict) -> tuple[Record, str]:
    if verdict.decision is Decision.HALT:
        halted = replace(record, status=Status.HALTED, reason=verdict.reason, updated=context.now)
        return halted, f"rollout of {record.source[:8]} halted: {verdict.reason}"
    last = record.wave == len(record.waves) - 1
    if last:
        done = replace(record, status=Status.DONE, reason=verdict.reason, updated=context.now)
        return done, f"rollout of {record.source[:8]} done: {verdict.reason}"
    following = record.waves[record.wave + 1]
    advanced = replace(record, wave=record.wave + 1, reason=verdict.reason, updated=context.now)
    return advanced, f"{verdict.reason}: wave {following.name} gets {record.source[:8]}"


def report_heads(
    repository: pygit2.Repository, request: run.Request, hosts: Iterable[str]
) -> dict[str, pygit2.Oid]:
    """The heads of ``hosts``' reports branches: fetched from the server when pushing,
    else this repository's own ``reports/<host>`` (a mirror)."""
    names = sorted(hosts)
    if not request.push:
        found = {h: commits.ref_target(repository, reports_ref(h)) for h in names}
        return {h: oid for h, oid in found.items() if oid is not None}
    git_dir = Path(repository.path)
    listed = transport.list_refs(git_dir, request.remote, f"{REPORTS_PREFIX}*")
    present = [h for h in names if reports_ref(h) in listed]
    if present:
        transport.fetch(
            git_dir,
            request.remote,
            [f"+{reports_ref(h)}:{REPORTS_TRACKING}{h}" for h in present],
            stdin=True,
        )
    return {h: pygit2.Oid(hex=listed[reports_ref(h)]) for h in present}


def _renew_others(context: _Context, record: Record) -> tuple[run.Outcome, ...]:
    """Heartbeats for the hosts the rollout has not reached: each is published again from
    the source its deploy head came from, which renews an expiring head and changes
    nothing else."""
    if context.fleet.settings.expires_after is None:
        return ()
    reached = {h for w in record.reached() for h in w.hosts}
    others = [h for h in context.fleet.hosts if h not in reached]
    if not others:
        return ()
    repository, request = context.repository, context.request
    if request.push:
        heads: dict[str, pygit2.Oid] = push.remote_heads(
            repository, request.remote, progress=context.progress
        )
    else:
        heads = {}
        for host in others:
            head = commits.ref_target(repository, deploy_ref(host))
            if head is not None:
                heads[host] = head
    by_source: dict[str, list[str]] = defaultdict(list)
    for host in others:
        head = heads.get(host)
        commit = repository.get(head) if head is not None else None
        if not isinstance(commit, pygit2.Commit):
            continue  # never published: it waits for its wave
        source = commits.trailers(commit.message).get(TRAILER_SOURCE)
        if source is not None and pygit2.Oid(hex=source) in repository:
            by_source[source].append(host)
    return tuple(
        run.publish(replace(request, source=source, hosts=tuple(hosts)), progress=context.progress)
        for source, hosts in sorted(by_source.items())
    )


def fetch_record(repository: pygit2.Repository, remote: str | None) -> pygit2.Oid | None:
    """The head of ``rollout``: the server's (fetched here) when ``remote``, else local."""
    if remote is None:
        return commits.ref_target(repository, ROLLOUT_REF)
    git_dir = Path(repository.path)
    listed = transport.list_refs(git_dir, remote, ROLLOUT_REF)
    sha = listed.get(ROLLOUT_REF)
    if sha is None:
        return None
    transport.fetch(git_dir, remote, [f"+{ROLLOUT_REF}:{ROLLOUT_REF}"])
    return pygit2.Oid(hex=sha)


def save_record(
    repository: pygit2.Repository,
    record: Record,
    *,
    base: pygit2.Oid | None,
    key: SigningKey,
    subject: str,
    remote: str | None,
    notes: tuple[str, ...] = (),
) -> pygit2.Oid:
    """Sign ``record`` on top of ``base`` and move ``rollout`` (on ``remote`` first, when
    given: a server that moved meanwhile refuses it, and nothing moves here)."""
    oid = write_record(repository, record, parent=base, key=key, subject=subject, notes=notes)
    git_dir = Path(repository.path)
    if remote is not None:
        pushed = transport.push_commits(git_dir, remote, {ROLLOUT_REF: str(oid)})
        if not pushed.ok:
            details = "; ".join(s.summary for s in pushed.refused()) or pushed.message
            raise GitopsError(
                f"{remote} refused {branch_name(ROLLOUT_REF)} ({details}): another publish or "
                "admin moved it meanwhile; run again"
            )
    local = commits.ref_target(repository, ROLLOUT_REF)
    transport.update_local_refs(
        git_dir,
        {ROLLOUT_REF: (str(local) if local is not None else None, str(oid))},
        message=subject,
    )
    return oid


def _save(context: _Context, record: Record, base: pygit2.Oid | None, steps: list[str]) -> None:
    """One commit for the run: its first step as the subject, the others in the body."""
    remote = context.request.remote if context.request.push else None
    save_record(
        context.repository,
        replace(record, by=context.principal),
        base=base,
        key=context.key,
        subject=steps[0],
        remote=remote,
        notes=tuple(steps[1:]),
    )
