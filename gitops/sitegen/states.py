"""A host's state at build time (docs/dashboard.md, "Host states"), and at past moments
for the 30-day chart.

Only verified reports and verified deploy commits count. The newest verified report
decides: none → never reported (or unverified, when reports exist but none verifies);
older than ``stale_after`` → stale; ``build-failed``/``switch-failed`` → failed;
``rolled-back`` → rolled back; ``rejected`` → rejected; ``fetch-failed`` → offline;
``deploy_applied`` equal to the verified head of ``deploy/<host>`` → up to date;
otherwise pending. Reboot needed and drift are flags beside the state.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime, timedelta

from gitops.protocol import Result
from gitops.sitegen.model import DeployEntry, Flag, HostData, HostStatus, ReportEntry, State

_BY_RESULT: dict[Result | None, State] = {
    Result.BUILD_FAILED: State.FAILED,
    Result.SWITCH_FAILED: State.FAILED,
    Result.ROLLED_BACK: State.ROLLED_BACK,
    Result.REJECTED: State.REJECTED,
    Result.FETCH_FAILED: State.OFFLINE,
}
MAX_MISSING = 20


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


def _failing_since(data: HostData, state: State) -> datetime | None:
    since = None
    for entry in data.reports:
        if not entry.verified:
            continue
        if _BY_RESULT.get(entry.result) is not state:
            break
        since = entry.when
    return since


def _flags(
    data: HostData, newest: ReportEntry | None, published: DeployEntry | None
) -> tuple[tuple[Flag, ...], str]:
    """The flags beside the state, and what the drift is when there is drift."""
    flags: list[Flag] = []
    drift_detail = ""
    if newest is not None:
        if newest.reboot_required:
            flags.append(Flag.REBOOT_NEEDED)
        running, built = newest.current_system, newest.store_path
        if running and built and running != built:
            flags.append(Flag.DRIFT)
            drift_detail = (
                f"running {short_path(running)}, not "
                f"{short_path(built)} built from the applied deploy commit"
            )
    if data.deploy_head is not None and published is None:
        flags.append(Flag.DEPLOY_UNVERIFIED)
    if data.reports and not data.reports[0].verified and newest is not None:
        flags.append(Flag.REPORT_UNVERIFIED)
    return tuple(flags), drift_detail


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
        reason = (
            f"{data.report_count} report(s), none verifies: {first.trust_detail or first.error}"
        )
        return reason, data.reports[-1].commit_time
    assert newest is not None  # every other state is judged from a verified report
    applied = newest.deploy_applied
    match state:
        case State.STALE:
            when = newest.when.strftime("%Y-%m-%d %H:%M UTC")
            reason = f"no verified report since {when} (stale after {describe_age(stale_after)})"
            return reason, newest.when
        case State.FAILED | State.ROLLED_BACK | State.REJECTED | State.OFFLINE:
            return newest.reason or str(newest.result), _failing_since(data, state)
        case State.PENDING:
            since = missing[-1].time if missing else None
            if published is None:
                return "no verified deploy commit to apply", since
            return f"published {short(published.oid)}, applied {short(applied)}", since
    return f"applied {short(applied)}", None


def judge(data: HostData, *, now: datetime, stale_after: int) -> HostStatus:
    newest = data.newest_verified
    published = data.published
    state = _state_of(newest, published, now, stale_after, bool(data.reports))
    flags, drift_detail = _flags(data, newest, published)
    applied = newest.deploy_applied if newest is not None else None
    missing = missing_publishes(data, applied) if state is not State.UP_TO_DATE else ()
    reason, since = _explain(data, state, newest, published, missing, stale_after)
    return HostStatus(
        name=data.name,
        state=state,
        flags=flags,
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
        drift_detail=drift_detail,
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
