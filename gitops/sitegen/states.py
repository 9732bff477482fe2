"""A host's state at build time (docs/dashboard.md, "Host states"), and at past moments
for the 30-day chart.

Only verified reports and verified deploy commits count, and a report dated ahead of the
build (beyond CLOCK_SKEW) does not. The newest counted report decides: none → never
reported (or unverified, when reports exist but none counts); older than ``stale_after``
→ stale; ``build-failed``/``substitute-failed``/``switch-failed`` → failed; ``rolled-back`` → rolled back;
``rejected`` → rejected; ``fetch-failed`` → offline; ``deploy_applied`` equal to the
verified head of ``deploy/<host>`` → up to date; otherwise pending. Flags beside the state
say what else is true (drift, reboot needed or pending, a rewound deploy head, a
rewritten reports branch, an invalid or future report).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from gitops.protocol import Result
from gitops.sitegen.model import (
    CLOCK_SKEW,
    DeployEntry,
    Flag,
    FlagNote,
    HostData,
    HostStatus,
    ReportEntry,
    State,
)

_BY_RESULT: dict[Result | None, State] = {
    Result.BUILD_FAILED: State.FAILED,
    Result.SWITCH_FAILED: State.FAILED,
    Result.SUBSTITUTE_FAILED: State.FAILED,
    Result.ROLLED_BACK: State.ROLLED_BACK,
    Result.REJECTED: State.REJECTED,
    Result.FETCH_FAILED: State.OFFLINE,
}
MAX_MISSING = 20
MAX_NAMED = 3  # dropped reports named in one line


def _utc_minute(moment: datetime) -> str:
    return moment.strftime("%Y-%m-%d %H:%M UTC")


def short(sha: str | None) -> str:
    return sha[:8] if sha else "none"


def short_path(path: str) -> str:
    """``/nix/store/<32 chars>-name`` as ``<8 chars>…-name`` (the full path is in the JSON)."""
    name = path.removeprefix("/nix/store/")
    digest, dash, rest = name.partition("-")
    return f"{digest[:8]}…{dash}{rest}" if dash and len(digest) > 8 else path


def describe_age(seconds: float) -> str:
    if seconds < 0:
        return "in the future"
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{int(seconds // size)} {unit}"
    return f"{int(seconds)} s"


def _state_of(
    report: ReportEntry | None,
    published: DeployEntry | None,
    moment: datetime,
    stale_after: int,
    any_reports: bool,
) -> State:
    if report is None:
        return State.UNVERIFIED if any_reports else State.NEVER
    if (moment - report.when).total_seconds() > stale_after:
        return State.STALE
    by_result = _BY_RESULT.get(report.result)
    if by_result is not None:
        return by_result
    if published is not None and report.deploy_applied == published.oid:
        return State.UP_TO_DATE
    return State.PENDING


def missing_publishes(data: HostData, applied: str | None) -> tuple[DeployEntry, ...]:
    """Verified deploy commits above the one the host applied, newest first."""
    found = []
    for entry in data.deploys:
        if entry.oid == applied:
            break
        if entry.verified:
            found.append(entry)
        if len(found) >= MAX_MISSING:
            break
    return tuple(found)


def _failing_since(data: HostData, newest: ReportEntry, state: State) -> datetime | None:
    """The first report of the current run of ``state``'s result, counted from ``newest``."""
    since = None
    for entry in data.reports[data.reports.index(newest) :]:
        if not entry.verified:
            continue
        if _BY_RESULT.get(entry.result) is not state:
            break
        since = entry.when
    return since


def counted(data: HostData, now: datetime) -> ReportEntry | None:
    """The report the host is judged by: its newest verified one not dated ahead of ``now``."""
    limit = now + CLOCK_SKEW
    return next((r for r in data.reports if r.verified and r.when <= limit), None)


def _boot_pending_since(data: HostData, newest: ReportEntry) -> datetime | None:
    """When a boot-mode host (action ``boot``) set up the system it has not booted yet."""
    built = newest.store_path
    waiting = built and (newest.current_system != built or newest.reboot_required)
    if newest.action != "boot" or not waiting:
        return None
    since = newest.when
    for entry in data.reports:
        if not entry.verified or entry.when > newest.when:
            continue
        if entry.action != "boot" or entry.store_path != built:
            break
        since = entry.when
    return since


def _system_notes(
    data: HostData, newest: ReportEntry | None
) -> tuple[list[FlagNote], datetime | None]:
    """Drift, reboot needed, reboot pending: what the counted report says of the system."""
    if newest is None:
        return [], None
    pending = _boot_pending_since(data, newest)
    if pending is not None:
        text = f"reboot pending since {_utc_minute(pending)}: the next boot runs what it applied"
        return [FlagNote(Flag.REBOOT_PENDING, text)], pending
    notes = []
    if newest.reboot_required or newest.reboot_needed_since is not None:
        text = "kernel, initrd or modules changed"
        if newest.reboot_needed_since is not None:
            text += f"; reboot needed since {_utc_minute(newest.reboot_needed_since)}"
        notes.append(FlagNote(Flag.REBOOT_NEEDED, text))
    running, built = newest.current_system, newest.store_path
    if running and built and running != built:
        text = (
            f"running {short_path(running)}, not "
            f"{short_path(built)} built from the applied deploy commit"
        )
        notes.append(FlagNote(Flag.DRIFT, text))
    return notes, None


def _trust_notes(data: HostData, newest: ReportEntry | None) -> list[FlagNote]:
    """What does not add up in the branches: rewound, rewritten, unverified, invalid."""
    notes = []
    if data.rewind is not None:
        rewind = data.rewind
        text = (
            f"deploy/{data.name} is at {short(rewind.head)}, which does not descend from "
            f"{short(rewind.floor)} ({rewind.why}): a rollback, refused"
        )
        notes.append(FlagNote(Flag.DEPLOY_REWOUND, text))
    elif data.deploy_head is not None and data.published is None:
        text = f"deploy/{data.name} head {short(data.deploy_head)} does not verify"
        notes.append(FlagNote(Flag.DEPLOY_UNVERIFIED, text))
    if data.dropped:
        named = ", ".join(
            f"{short(d.oid)} ({d.result or 'invalid'}, {_utc_minute(d.when)})"
            for d in data.dropped[:MAX_NAMED]
        )
        more = f" and {len(data.dropped) - MAX_NAMED} more" if len(data.dropped) > MAX_NAMED else ""
        text = f"reports/{data.name} was rewritten; gone: {named}{more}"
        notes.append(FlagNote(Flag.REPORTS_REWRITTEN, text))
    first = data.reports[0] if data.reports else None
    if first is not None and newest is not None and first is not newest and not first.verified:
        if first.error:
            text = f"newest report {short(first.oid)} is invalid: {first.error}"
            notes.append(FlagNote(Flag.INVALID_REPORT, text))
        else:
            text = f"newest report {short(first.oid)} does not verify: {first.trust_detail}"
            notes.append(FlagNote(Flag.REPORT_UNVERIFIED, text))
    return notes


def _future_note(data: HostData, newest: ReportEntry | None) -> list[FlagNote]:
    ahead = data.newest_verified
    if ahead is None or ahead is newest:
        return []
    text = (
        f"report {short(ahead.oid)} is dated {_utc_minute(ahead.when)}, ahead of this "
        "build (a wrong clock or a forged date): not counted"
    )
    return [FlagNote(Flag.FUTURE_REPORT, text)]


def _explain(
    data: HostData,
    state: State,
    newest: ReportEntry | None,
    published: DeployEntry | None,
    missing: tuple[DeployEntry, ...],
    stale_after: int,
) -> tuple[str, datetime | None]:
    """Why the host is in ``state`` (one line), and since when."""
    if state is State.NEVER:
        return "no report on reports/" + data.name, None
    if state is State.UNVERIFIED:
        first = data.reports[0]
        why = f"invalid: {first.error}" if first.error else first.trust_detail
        return f"{data.report_count} report(s), none counts: {why}", data.reports[-1].commit_time
    assert newest is not None  # every other state is judged from a counted report
    applied = newest.deploy_applied
    match state:
        case State.STALE:
            reason = (
                f"no verified report since {_utc_minute(newest.when)} "
                f"(stale after {describe_age(stale_after)})"
            )
            return reason, newest.when
        case State.FAILED | State.ROLLED_BACK | State.REJECTED | State.OFFLINE:
            return newest.reason or str(newest.result), _failing_since(data, newest, state)
        case State.PENDING:
            since = missing[-1].time if missing else None
            if data.rewind is not None:
                return f"deploy/{data.name} was rewound: nothing to apply", since
            if published is None:
                return "no verified deploy commit to apply", since
            return f"published {short(published.oid)}, applied {short(applied)}", since
    return f"applied {short(applied)}", None


def judge(data: HostData, *, now: datetime, stale_after: int) -> HostStatus:
    newest = counted(data, now)
    published = data.published
    any_reports = bool(data.reports)
    state = _state_of(newest, published, now, stale_after, any_reports)
    system_notes, pending_since = _system_notes(data, newest)
    notes = (*_trust_notes(data, newest), *system_notes, *_future_note(data, newest))
    applied = newest.deploy_applied if newest is not None else None
    behind = state is not State.UP_TO_DATE and data.rewind is None
    missing = missing_publishes(data, applied) if behind else ()
    reason, since = _explain(data, state, newest, published, missing, stale_after)
    drift = next((n.text for n in notes if n.flag is Flag.DRIFT), "")
    return HostStatus(
        name=data.name,
        state=state,
        flags=tuple(n.flag for n in notes),
        reason=reason,
        last_seen=newest.when if newest is not None else None,
        last_result=newest.result if newest is not None else None,
        applied=applied,
        applied_source=newest.source_commit if newest is not None else None,
        published=published.oid if published is not None else None,
        published_source=published.source_commit if published is not None else None,
        since=since,
        missing=missing,
        nixos_version=newest.nixos_version if newest is not None else None,
        drift_detail=drift,
        notes=notes,
        reboot_pending_since=pending_since,
        reboot_needed_since=newest.reboot_needed_since if newest is not None else None,
    )


def day_ends(now: datetime, days: int = 30) -> list[datetime]:
    """The end of each of the last ``days`` UTC days, the last one being ``now``."""
    today = now.replace(hour=0, minute=0, second=0, microsecond=0)
    ends = [today - timedelta(days=offset) for offset in range(days - 1, 0, -1)]
    return [*ends, now]


def samples(
    data: HostData, ends: Sequence[datetime], stale_after: int
) -> tuple[tuple[State, str | None], ...]:
    """The host's state as the site would have shown it at each moment of ``ends``
    (ascending), and its NixOS version then, in one pass over the history: only the
    reports and deploy commits that existed at that moment count."""
    # Ascending by time; on equal times the newer commit (lower index) comes last and wins,
    # as it would newest-first.
    reports = [
        r for _, _, r in sorted((r.when, -i, r) for i, r in enumerate(data.reports) if r.verified)
    ]
    deploys = [
        d for _, _, d in sorted((d.time, -i, d) for i, d in enumerate(data.deploys) if d.verified)
    ]
    first_commit = min((r.commit_time for r in data.reports), default=None)
    result = []
    ri = di = 0
    report: ReportEntry | None = None
    published: DeployEntry | None = None
    for moment in ends:
        while ri < len(reports) and reports[ri].when <= moment:
            report = reports[ri]
            ri += 1
        while di < len(deploys) and deploys[di].time <= moment:
            published = deploys[di]
            di += 1
        any_reports = first_commit is not None and first_commit <= moment
        state = _state_of(report, published, moment, stale_after, any_reports)
        result.append((state, report.nixos_version if report is not None else None))
    return tuple(result)
