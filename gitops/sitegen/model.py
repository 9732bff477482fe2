"""Typed values read from the repository; frozen, picklable, independent of the build time.

Everything time-dependent (stale, "last seen 3 h ago", expired exemptions) is derived
later, in :mod:`gitops.sitegen.states` and :mod:`gitops.sitegen.compliance`, so a
host's collected data can be cached by the ids of the commits it was read from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum

from gitops.protocol import Report, Result


class Trust(StrEnum):
    VERIFIED = "verified"  # signed by the expected key, signature good
    UNVERIFIED = "unverified"  # unsigned, malformed or bad signature, key not valid then
    UNKNOWN_KEY = "unknown key"  # a good signature by a key that is not the expected one


class State(StrEnum):
    UP_TO_DATE = "up to date"
    PENDING = "pending"
    FAILED = "failed"
    ROLLED_BACK = "rolled back"
    REJECTED = "rejected"
    STALE = "stale"
    OFFLINE = "offline"
    NEVER = "never reported"
    UNVERIFIED = "unverified"


class Flag(StrEnum):
    """True beside any state (docs/dashboard.md, "Host states")."""

    REBOOT_NEEDED = "reboot needed"
    DRIFT = "drift"
    DEPLOY_UNVERIFIED = "deploy head unverified"
    REPORT_UNVERIFIED = "unverified report"


# Most urgent first (the order of the overview's problem list and of the drift page).
URGENCY: tuple[State | Flag, ...] = (
    State.FAILED,
    State.ROLLED_BACK,
    State.REJECTED,
    Flag.DRIFT,
    State.UNVERIFIED,
    State.STALE,
    State.OFFLINE,
    State.PENDING,
    Flag.REBOOT_NEEDED,
    State.NEVER,
)

# The order states are counted and charted in.
STATE_ORDER: tuple[State, ...] = (
    State.UP_TO_DATE,
    State.PENDING,
    State.FAILED,
    State.ROLLED_BACK,
    State.REJECTED,
    State.STALE,
    State.OFFLINE,
    State.UNVERIFIED,
    State.NEVER,
)


@dataclass(frozen=True)
class ReportEntry:
    """One commit on ``reports/<host>``: its verdict and, when it parsed, its report."""

    oid: str
    commit_time: datetime
    trust: Trust
    trust_detail: str  # why not verified, or the verified principal
    time: datetime | None = None  # the report's own time (None when it did not parse)
    result: Result | None = None
    reason: str = ""
    deploy_seen: str | None = None
    deploy_applied: str | None = None
    source_commit: str | None = None
    generation: int | None = None
    store_path: str | None = None
    current_system: str | None = None
    nixos_version: str | None = None
    reboot_required: bool | None = None
    log_tail: str = ""
    changes: tuple[str, ...] = ()  # what changed between the last two systems, if reported
    error: str = ""  # why status.json could not be read

    @property
    def verified(self) -> bool:
        return self.trust is Trust.VERIFIED and self.result is not None

    @property
    def when(self) -> datetime:
        return self.time or self.commit_time


@dataclass(frozen=True)
class DeployEntry:
    """One commit on ``deploy/<host>``, checked against fleet.yaml's publishers."""

    oid: str
    time: datetime
    trust: Trust
    trust_detail: str
    principal: str  # the verified publisher, "" when not verified
    source_commit: str | None
    subject: str
    expires: str | None = None

    @property
    def verified(self) -> bool:
        return self.trust is Trust.VERIFIED


@dataclass(frozen=True)
class HostData:
    """Everything read from one host's refs. Cached by (heads, key id, publishers id)."""

    name: str
    key_id: str  # fingerprint of the host key in main ("" when none)
    publishers_id: str
    reports_head: str | None
    deploy_head: str | None
    reports: tuple[ReportEntry, ...] = ()  # newest first; older heartbeats thinned to one a day
    deploys: tuple[DeployEntry, ...] = ()  # newest first
    latest: Report | None = None  # the newest verified report, parsed
    truncated: bool = False  # older reports exist beyond what was read
    report_count: int = 0
    trust_counts: tuple[tuple[Trust, int], ...] = ()

    @property
    def newest_verified(self) -> ReportEntry | None:
        return next((r for r in self.reports if r.verified), None)

    @property
    def published(self) -> DeployEntry | None:
        """The head of deploy/<host> when its signature verifies, else None."""
        if self.deploys and self.deploys[0].oid == self.deploy_head and self.deploys[0].verified:
            return self.deploys[0]
        return None


@dataclass(frozen=True)
class MainCommit:
    sha: str
    time: datetime
    author: str
    email: str
    subject: str
    pull_request: int | None
    merge: bool


@dataclass(frozen=True)
class HostStatus:
    """A host judged at build time."""

    name: str
    state: State
    flags: tuple[Flag, ...]
    reason: str  # one line: why this state
    last_seen: datetime | None  # time of the newest verified report
    last_result: Result | None
    applied: str | None  # deploy commit the host last applied (verified reports only)
    applied_source: str | None
    published: str | None  # verified head of deploy/<host>
    published_source: str | None
    since: datetime | None  # since when the host is not up to date
    missing: tuple[DeployEntry, ...] = ()  # verified publishes the host has not applied
    nixos_version: str | None = None
    drift_detail: str = ""

    @property
    def urgency(self) -> int:
        """The rank in URGENCY of the state or flag that matters most (lower: more urgent)."""
        ranks = [URGENCY.index(k) for k in (self.state, *self.flags) if k in URGENCY]
        if self.state is State.UP_TO_DATE and not ranks:
            return len(URGENCY) + 1
        return min(ranks) if ranks else len(URGENCY)

    @property
    def most_urgent(self) -> State | Flag:
        """The state or flag that decides the urgency (the state when nothing ranks)."""
        keys: tuple[State | Flag, ...] = (self.state, *self.flags)
        found: State | Flag = self.state
        rank = len(URGENCY)
        for key in keys:
            if key in URGENCY and URGENCY.index(key) < rank:
                found, rank = key, URGENCY.index(key)
        return found


@dataclass(frozen=True)
class Problem:
    """A line in the overview's "most urgent first" list."""

    rank: int
    kind: State | Flag
    host: str
    text: str
    since: datetime | None = None


@dataclass(frozen=True)
class DriftGroup:
    """A section of the drift page: the hosts with one state or flag, longest first."""

    kind: State | Flag
    hosts: tuple[HostStatus, ...]


@dataclass(frozen=True)
class Orphan:
    ref: str
    reason: str
