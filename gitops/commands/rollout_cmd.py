"""``gitops publish`` with waves, and ``gitops rollout status|resume|abort``
(docs/rollout.md)."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path

from gitops import output
from gitops.commands.publish_cmd import publish_command_result, raise_if_refused
from gitops.errors import GitopsError
from gitops.fleet.rollout import Progress
from gitops.fleet.rollout_record import Record, Status, WaveView, local_record, view
from gitops.inventory.reports import load_main_fleet
from gitops.protocol import ROLLOUT_REF, branch_name, format_time
from gitops.publish import plan as planning
from gitops.publish import rollout, run
from gitops.trust import commits, keys


class Action(StrEnum):
    RESUME = "resume"
    ABORT = "abort"


def has_waves(request: run.Request) -> bool:
    """Whether fleet.yaml at the source declares waves (then publish goes by wave)."""
    return rollout.settings_at(request) is not None


def publish(request: run.Request, *, as_json: bool) -> int:
    """``gitops publish`` when fleet.yaml has ``rollout:``."""
    staged = rollout.publish(request, progress=output.progress)
    outcomes = (*staged.published, *staged.renewed)
    record = staged.record
    if as_json:
        output.emit_json(
            {
                "rollout": record.summary(),
                "steps": list(staged.steps),
                "wave": staged.verdict.reason if staged.verdict else None,
                "publishes": [publish_command_result(o) for o in outcomes],
            }
        )
    else:
        count = sum(len(o.published.commits) for o in outcomes)
        where = f" and pushed to {request.remote}" if request.push and count else ""
        for line in staged.steps:
            output.say(line)
        output.say(f"published {count} deploy commits{where}")
        output.say(_summary(record, staged.verdict.reason if staged.verdict else ""))
    raise_if_refused(tuple(r for o in outcomes for r in o.refused))
    return 0


def _summary(record: Record, reason: str) -> str:
    source = record.source[:8]
    match record.status:
        case Status.ROLLING:
            return f"rollout of {source}: wave {record.current.name} — {reason or 'published'}"
        case Status.HALTED:
            return (
                f"rollout of {source} is HALTED at wave {record.current.name}: {record.reason}; "
                "'gitops rollout resume' or 'gitops rollout abort' (or publish a fix)"
            )
        case Status.ABORTED:
            return f"rollout of {source} was aborted at wave {record.current.name}: {record.reason}"
        case Status.DONE:
            return f"rollout of {source} is done: every wave has it"
    raise AssertionError(record.status)


def status(repo: Path, *, as_json: bool, now: datetime | None = None) -> int:
    repository = commits.open_repository(repo)
    fleet = load_main_fleet(repository)
    record = local_record(repository, fleet.settings.publisher_trust())
    if record is None:
        raise GitopsError(
            f"{repo}: no {branch_name(ROLLOUT_REF)} branch, so no rollout yet (it starts with "
            "the first 'gitops publish' of a fleet.yaml with 'rollout:'; in a clone, fetch it)"
        )
    settings = fleet.settings.rollout
    if settings is None:
        raise GitopsError("main's fleet.yaml has no 'rollout:' section any more")
    waves = view(
        repository,
        record,
        fleet.hosts,
        settings,
        now=now or datetime.now(UTC),
        stale_after=fleet.settings.stale_after,
    )
    if as_json:
        output.emit_json({"rollout": record.summary(), "waves": [w.to_json() for w in waves]})
    else:
        output.say(table(record, waves))
    return 0


_COLUMNS = (Progress.HEALTHY, Progress.SOAKING, Progress.PENDING, Progress.FAILED, Progress.STALE)


def table(record: Record, waves: tuple[WaveView, ...]) -> str:
    lines = [
        f"rollout of {record.source[:8]}: {record.status} at wave {record.current.name}"
        + (f" — {record.reason}" if record.reason else "")
        + (f" ({record.by}, {format_time(record.updated)})" if record.by else ""),
        "",
    ]
    header = ("WAVE", "STATE", "HOSTS", "NEEDED", *(str(p).upper() for p in _COLUMNS))
    rows = [header]
    for wave in waves:
        verdict = wave.verdict
        counts = [str(verdict.count(p)) if verdict else "-" for p in _COLUMNS]
        needed = str(verdict.needed) if verdict else "-"
        rows.append((wave.name, str(wave.state), str(len(wave.hosts)), needed, *counts))
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines += [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]
    failed = [o for w in waves for o in w.observations if o.progress is Progress.FAILED]
    if failed:
        lines += ["", "failed: " + ", ".join(f"{o.host} ({o.detail})" for o in failed[:20])]
    return "\n".join(lines)


def admin(
    repo: Path,
    action: Action,
    *,
    key_path: Path,
    reason: str,
    push: bool,
    remote: str,
    as_json: bool,
) -> int:
    """``gitops rollout resume|abort``: a publisher-signed step on ``rollout``."""
    repository = commits.open_repository(repo)
    fleet = load_main_fleet(repository)
    key = keys.load_signer(key_path)
    principal = planning.publisher_principal(fleet, key)
    base = rollout.fetch_record(repository, remote if push else None)
    record = local_record(repository, fleet.settings.publisher_trust()) if base else None
    if record is None:
        raise GitopsError(f"no rollout to {action}: {branch_name(ROLLOUT_REF)} does not exist")
    now = datetime.now(UTC)
    why = f" ({reason})" if reason else ""
    short = record.source[:8]
    if action is Action.RESUME:
        if record.status is not Status.HALTED:
            raise GitopsError(
                f"the rollout of {short} is {record.status}, not halted: nothing to resume"
            )
        last = record.wave == len(record.waves) - 1
        text = f"resumed by {principal}{why}, past the failures of wave {record.current.name}"
        if last:
            changed = replace(record, status=Status.DONE, reason=text, updated=now, by=principal)
            subject = f"rollout of {short} resumed: done"
        else:
            following = record.waves[record.wave + 1].name
            changed = replace(
                record,
                status=Status.ROLLING,
                wave=record.wave + 1,
                reason=text,
                updated=now,
                by=principal,
            )
            subject = f"rollout of {short} resumed: wave {following} gets it at the next publish"
    else:
        if record.status not in (Status.ROLLING, Status.HALTED):
            raise GitopsError(f"the rollout of {short} is {record.status}: nothing to abort")
        text = f"aborted by {principal}{why}"
        changed = replace(record, status=Status.ABORTED, reason=text, updated=now, by=principal)
        subject = f"rollout of {short} aborted at wave {record.current.name}"
    oid = rollout.save_record(
        repository, changed, base=base, key=key, subject=subject, remote=remote if push else None
    )
    if as_json:
        output.emit_json({"rollout": changed.summary(), "commit": str(oid)})
    else:
        where = f" and pushed to {remote}" if push else ""
        output.say(f"{subject} ({str(oid)[:8]} on {branch_name(ROLLOUT_REF)}{where})")
    return 0
