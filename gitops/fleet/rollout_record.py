"""The rollout record on ``rollout`` (one signed commit per step, ``rollout.json``), and
what each host's signed reports say of the change it was given.

Shared by ``gitops publish`` (which moves a rollout), ``gitops rollout`` (which shows,
resumes or aborts it) and the site (which shows it), so all three judge a wave alike.

A host "applied the change" when the deploy commit its newest verified report says it
applied has the deploy tree the source renders for it (so a heartbeat commit, with the
same tree, still counts, and a host the change did not touch counts from the start); it
failed when its newest report is a build or switch failure or a rollback
of that tree.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import Host
from gitops.fleet.rollout import (
    FAILURES,
    HEALTHY,
    Observation,
    Progress,
    RolloutSettings,
    WaveVerdict,
    judge_wave,
)
from gitops.protocol import (
    ROLLOUT_FILE,
    ROLLOUT_REF,
    ROLLOUT_SCHEMA,
    STATUS_FILE,
    Report,
    branch_name,
    format_time,
    is_host_name,
    parse_json,
    parse_time,
    reports_ref,
)
from gitops.report_commits import read_file, walk_reports
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError, SigningKey

MAX_REPORTS: Final = 200  # newest reports read per host to find since when it runs the change
CLOCK_SKEW: Final = timedelta(minutes=5)  # a report dated further ahead does not count
MAX_REASON: Final = 2000
MAX_RECORD_BYTES: Final = 1 << 20  # a larger rollout.json is refused unread


class Status(StrEnum):
    ROLLING = "rolling"  # the current wave has the change; the next waits for it
    HALTED = "halted"  # too many hosts of the current wave failed; an admin decides
    ABORTED = "aborted"  # an admin stopped it: no further wave gets this source
    DONE = "done"  # every wave has it


@dataclass(frozen=True)
class WaveRecord:
    name: str
    # Each host of the wave -> the deploy tree the source renders for it, once the wave
    # is reached (None: not yet). A host applied the change when it runs a deploy commit
    # with that tree.
    hosts: dict[str, str | None] = field(default_factory=dict)
    published: datetime | None = None  # when the wave was first given the source


@dataclass(frozen=True)
class Record:
    """One state of the rollout of ``source``."""

    source: str  # the main commit being rolled out
    status: Status
    wave: int  # index of the current wave (the last one reached)
    waves: tuple[WaveRecord, ...]
    updated: datetime
    reason: str = ""  # why it halted, was resumed or aborted
    by: str = ""  # who made this step (the signing publisher's principal)

    @property
    def current(self) -> WaveRecord:
        return self.waves[self.wave]

    def reached(self) -> tuple[WaveRecord, ...]:
        """The waves that are given the source."""
        return self.waves[: self.wave + 1]

    def wave_of(self, host: str) -> int | None:
        return next((i for i, w in enumerate(self.waves) if host in w.hosts), None)

    def summary(self) -> dict[str, Any]:
        """Where the rollout stands, as ``gitops rollout status --json`` and the site's
        rollout.json show it (the current wave by name)."""
        return {
            "source": self.source,
            "status": str(self.status),
            "wave": self.current.name,
            "reason": self.reason,
            "by": self.by,
            "updated": format_time(self.updated),
        }

    def to_json(self) -> str:
        data: dict[str, Any] = {
            "schema": ROLLOUT_SCHEMA,
            "source": self.source,
            "status": str(self.status),
            "wave": self.wave,
            "updated": format_time(self.updated),
            "reason": self.reason,
            "by": self.by,
            "waves": [
                {
                    "name": w.name,
                    "published": format_time(w.published) if w.published else None,
                    "hosts": dict(sorted(w.hosts.items())),
                }
                for w in self.waves
            ],
        }
        return json.dumps(data, indent=1) + "\n"

    @classmethod
    def from_json(cls, text: bytes | str) -> Record:
        """ValueError says what is wrong."""
        data = parse_json(text, limit=MAX_RECORD_BYTES)
        if not isinstance(data, dict) or data.get("schema") != ROLLOUT_SCHEMA:
            raise ValueError(f"not a rollout record of schema {ROLLOUT_SCHEMA}")
        waves = tuple(_wave(item) for item in _typed(data, "waves", list))
        wave = _typed(data, "wave", int)
        if not waves or not 0 <= wave < len(waves):
            raise ValueError(f"wave {wave} is not one of its {len(waves)} waves")
        try:
            status = Status(_typed(data, "status", str))
        except ValueError as err:
            raise ValueError(f"status: {err}") from err
        return cls(
            source=_typed(data, "source", str),
            status=status,
            wave=wave,
            waves=waves,
            updated=parse_time(_typed(data, "updated", str)),
            reason=_typed(data, "reason", str)[:MAX_REASON],
            by=_typed(data, "by", str),
        )


def _typed(data: Mapping[str, Any], key: str, kind: type) -> Any:
    value = data.get(key)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise ValueError(f"{key}: expected {kind.__name__}")
    return value


def _is_object_id(value: object) -> bool:
    return (
        isinstance(value, str)
        and len(value) in (40, 64)
        and all(c in "0123456789abcdef" for c in value)
    )


def _wave(item: object) -> WaveRecord:
    if not isinstance(item, dict):
        raise ValueError("waves: expected objects")
    hosts = _typed(item, "hosts", dict)
    for host, target in hosts.items():
        if not is_host_name(host) or not (target is None or _is_object_id(target)):
            raise ValueError(f"waves: bad host entry {str(host)[:60]!r}")
    published = item.get("published")
    return WaveRecord(
        name=_typed(item, "name", str),
        hosts=dict(hosts),
        published=parse_time(published) if published is not None else None,
    )


def read_record(repo: pygit2.Repository, oid: pygit2.Oid, trust: AllowedSigners) -> Record:
    """The record in commit ``oid`` of ``rollout``, which a publisher must have signed."""
    where = f"{branch_name(ROLLOUT_REF)} at {str(oid)[:8]}"
    try:
        commits.verify_commit(repo, oid, trust)
    except SignatureError as err:
        raise GitopsError(
            f"{where} is not signed by a publisher in fleet.yaml ({err}); the rollout cannot "
            "be trusted: find out who wrote it (git log rollout)"
        ) from err
    commit = repo.get(oid)
    assert isinstance(commit, pygit2.Commit)
    text = read_file(commit, ROLLOUT_FILE)
    try:
        return Record.from_json(text or b"")
    except ValueError as err:
        raise GitopsError(f"{where}: {ROLLOUT_FILE} is invalid: {err}") from err


def local_record(repo: pygit2.Repository, trust: AllowedSigners) -> Record | None:
    head = commits.ref_target(repo, ROLLOUT_REF)
    return read_record(repo, head, trust) if head is not None else None


def write_record(
    repo: pygit2.Repository,
    record: Record,
    *,
    parent: pygit2.Oid | None,
    key: SigningKey,
    subject: str,
    notes: tuple[str, ...] = (),
) -> pygit2.Oid:
    """A signed commit (on no ref yet) holding ``record``; its author is ``record.by``;
    ``notes``: more lines for the message body."""
    builder = repo.TreeBuilder()
    builder.insert(
        ROLLOUT_FILE, repo.create_blob(record.to_json().encode()), pygit2.enums.FileMode.BLOB
    )
    body = f"Source: {record.source}\nStatus: {record.status}"
    for paragraph in (*reversed(notes), record.reason):
        if paragraph and paragraph != subject:
            body = f"{paragraph}\n\n{body}"
    author = commits.signature_of(record.by.split("@")[0] or record.by, record.by, record.updated)
    return commits.create_signed_commit(
        repo,
        tree=builder.write(),
        parents=[parent] if parent is not None else [],
        message=commits.format_message(subject, body),
        author=author,
        key=key,
    )


def step(record: Record, **changes: Any) -> Record:
    return replace(record, **changes)


# -- what the hosts say ---------------------------------------------------------------------


def verified_reports(
    repo: pygit2.Repository, host: Host, head: pygit2.Oid, *, now: datetime
) -> Iterator[Report]:
    """``host``'s reports from ``head`` back, newest first, that its own key signed, that
    parse, name it and are not dated ahead of ``now``; at most :data:`MAX_REPORTS` read."""
    trust = host.trust()
    for count, oid in enumerate(walk_reports(repo, head)):
        if count >= MAX_REPORTS or oid not in repo:
            return
        try:
            commits.verify_commit(repo, oid, trust)
        except SignatureError:
            continue
        commit = repo.get(oid)
        assert isinstance(commit, pygit2.Commit)
        try:
            report = Report.from_json(read_file(commit, STATUS_FILE) or b"")
        except ValueError:
            continue
        if report.host == host.name and report.time <= now + CLOCK_SKEW:
            yield report


TreeOf = Callable[[str | None], pygit2.Oid | None]


def tree_lookup(repo: pygit2.Repository) -> TreeOf:
    """The tree of a commit id (None when unknown here), cached."""
    cache: dict[str, pygit2.Oid | None] = {}

    def tree_of(sha: str | None) -> pygit2.Oid | None:
        if sha is None:
            return None
        if sha not in cache:
            try:
                commit = repo.get(sha)
            except (ValueError, KeyError):
                commit = None
            cache[sha] = commit.tree_id if isinstance(commit, pygit2.Commit) else None
        return cache[sha]

    return tree_of


def progress_of(
    host: str,
    reports: Iterator[Report],
    target: pygit2.Oid | None,
    tree_of: TreeOf,
    *,
    now: datetime,
    soak: int,
    stale_after: int,
) -> Observation:
    """Where ``host`` is with the deploy tree ``target``, from its reports (newest first)."""
    newest = next(reports, None)
    if target is None:
        return Observation(host, Progress.PENDING, None, "not published to it yet")
    if newest is None:
        return Observation(host, Progress.PENDING, None, "no verified report")
    if (now - newest.time).total_seconds() > stale_after:
        return Observation(host, Progress.STALE, newest.time, "no report since " + _at(newest))
    if newest.result in FAILURES and tree_of(newest.deploy_seen) == target:
        return Observation(host, Progress.FAILED, newest.time, str(newest.result))
    if newest.result not in HEALTHY or tree_of(newest.deploy_applied) != target:
        return Observation(host, Progress.PENDING, None, f"{newest.result} at {_at(newest)}")
    since = newest.time
    for report in reports:
        if report.result not in HEALTHY or tree_of(report.deploy_applied) != target:
            break
        since = report.time
    if (now - since).total_seconds() >= soak:
        return Observation(host, Progress.HEALTHY, since, f"healthy since {_at_time(since)}")
    return Observation(host, Progress.SOAKING, since, f"healthy since {_at_time(since)}")


def _at(report: Report) -> str:
    return _at_time(report.time)


def _at_time(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def observe_wave(
    repo: pygit2.Repository,
    wave: WaveRecord,
    hosts: Mapping[str, Host],
    report_heads: Mapping[str, pygit2.Oid],
    *,
    now: datetime,
    soak: int,
    stale_after: int,
    tree_of: TreeOf | None = None,
) -> tuple[Observation, ...]:
    """Each host of ``wave`` (hosts no longer in main are left out), judged from the
    reports under ``report_heads`` (host -> head of its reports branch)."""
    lookup = tree_of or tree_lookup(repo)
    found = []
    for name, target in sorted(wave.hosts.items()):
        host = hosts.get(name)
        if host is None:
            continue
        head = report_heads.get(name)
        reports = verified_reports(repo, host, head, now=now) if head is not None else iter(())
        found.append(
            progress_of(
                name,
                reports,
                pygit2.Oid(hex=target) if target is not None else None,
                lookup,
                now=now,
                soak=soak,
                stale_after=stale_after,
            )
        )
    return tuple(found)


# -- the rollout at a glance (gitops rollout status, the site) ---------------------------

# Where a pushing publish fetches the reports it judges by (a clone that is not a mirror).
REPORTS_TRACKING: Final = "refs/gitops/rollout/reports/"


class WaveState(StrEnum):
    PASSED = "passed"  # the rollout went past it
    CURRENT = "current"  # it has the change; the rollout waits for it
    HALTED = "halted"
    ABORTED = "aborted"
    DONE = "done"  # the last wave of a finished rollout
    WAITING = "waiting"  # not reached: its hosts keep their previous deploy tree


@dataclass(frozen=True)
class WaveView:
    name: str
    state: WaveState
    hosts: tuple[str, ...]
    observations: tuple[Observation, ...]  # empty for a wave not reached
    verdict: WaveVerdict | None  # None for a wave not reached

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "state": str(self.state),
            "hosts": len(self.hosts),
        }
        if self.verdict is not None:
            data["needed"] = self.verdict.needed
            data["counts"] = {str(p): self.verdict.count(p) for p in Progress}
            data["decision"] = str(self.verdict.decision)
            data["reason"] = self.verdict.reason
        data["members"] = [
            {
                "host": o.host,
                "progress": str(o.progress),
                "since": format_time(o.since) if o.since else None,
                "detail": o.detail,
            }
            for o in self.observations
        ] or [{"host": h, "progress": None} for h in self.hosts]
        return data


def local_report_heads(repo: pygit2.Repository, hosts: Iterable[str]) -> dict[str, pygit2.Oid]:
    """Reports heads as this repository has them: ``reports/<host>`` (a mirror), else
    what the last pushing publish fetched."""
    found = {}
    for host in hosts:
        head = commits.ref_target(repo, reports_ref(host)) or commits.ref_target(
            repo, f"{REPORTS_TRACKING}{host}"
        )
        if head is not None:
            found[host] = head
    return found


def view(
    repo: pygit2.Repository,
    record: Record,
    hosts: Mapping[str, Host],
    settings: RolloutSettings,
    *,
    now: datetime,
    stale_after: int,
) -> tuple[WaveView, ...]:
    """Each wave of ``record``, its hosts judged from this repository's reports."""
    lookup = tree_lookup(repo)
    views = []
    for index, wave in enumerate(record.waves):
        members = tuple(sorted(wave.hosts))
        if index > record.wave:
            views.append(WaveView(wave.name, WaveState.WAITING, members, (), None))
            continue
        observations = observe_wave(
            repo,
            wave,
            hosts,
            local_report_heads(repo, members),
            now=now,
            soak=settings.soak,
            stale_after=stale_after,
            tree_of=lookup,
        )
        verdict = judge_wave(wave.name, observations, settings.success_threshold, settings.soak)
        state = WaveState.PASSED
        if index == record.wave:
            state = {
                Status.ROLLING: WaveState.CURRENT,
                Status.HALTED: WaveState.HALTED,
                Status.ABORTED: WaveState.ABORTED,
                Status.DONE: WaveState.DONE,
            }[record.status]
        views.append(WaveView(wave.name, state, members, observations, verdict))
    return tuple(views)
