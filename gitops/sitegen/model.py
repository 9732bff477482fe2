"""Typed values read from the repository; frozen, picklable, independent of the build time.

Everything time-dependent (stale, "last seen 3 h ago", expired exemptions) is derived
later, in :mod:`gitops.sitegen.states` and :mod:`gitops.sitegen.compliance`, so a
host's collected data can be cached by the ids of the commits it was read from.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum

from gitops.fleet.model import CveExemption
from gitops.protocol import CommandAck, Report, Result


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

    DEPLOY_REWOUND = "deploy head rewound"  # not above what was verified or applied before
    REPORTS_REWRITTEN = "reports rewritten"  # reports the site saw are gone from the branch
    DRIFT = "drift"  # running something other than what it last applied
    INVALID_REPORT = "invalid report"  # the newest report commit does not parse
    FUTURE_REPORT = "report from the future"  # dated ahead of the build: not counted
    REBOOT_NEEDED = "reboot needed"  # kernel, initrd or modules changed under it
    REBOOT_PENDING = "reboot pending"  # a boot-mode host waits to boot what it applied
    DEPLOY_UNVERIFIED = "deploy head unverified"
    REPORT_UNVERIFIED = "unverified report"


# Most urgent first (the order of the overview's problem list and of the drift page).
URGENCY: tuple[State | Flag, ...] = (
    State.FAILED,
    State.ROLLED_BACK,
    State.REJECTED,
    Flag.DEPLOY_REWOUND,
    Flag.REPORTS_REWRITTEN,
    Flag.DRIFT,
    State.UNVERIFIED,
    Flag.INVALID_REPORT,
    Flag.FUTURE_REPORT,
    State.STALE,
    State.OFFLINE,
    State.PENDING,
    Flag.REBOOT_NEEDED,
    State.NEVER,
)
# How far ahead of the build a report may be dated (clocks differ) and still count.
CLOCK_SKEW = timedelta(minutes=5)
# Flags that are expected, not a problem: shown, never listed as urgent.
QUIET_FLAGS: frozenset[Flag] = frozenset({Flag.REBOOT_PENDING})

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
    action: str = "switch"  # switch, boot or test
    log_tail: str = ""
    changes: tuple[str, ...] = ()  # what changed between the last two systems, if reported
    error: str = ""  # why status.json could not be read
    commands: tuple[CommandAck, ...] = ()  # signed commands this report acknowledges
    reboot_needed_since: datetime | None = None

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
    recovers: str | None = None  # the applied commit a recovery commit supersedes

    @property
    def verified(self) -> bool:
        return self.trust is Trust.VERIFIED


@dataclass(frozen=True)
class Parsed:
    """A verified report commit's parsed report (what policies and the host page read)."""

    oid: str
    report: Report


@dataclass(frozen=True)
class DroppedReport:
    """A report commit the site saw on ``reports/<host>`` that the branch no longer holds."""

    oid: str
    when: datetime
    result: Result | None
    trust: Trust


@dataclass(frozen=True)
class Rewind:
    """``deploy/<host>`` no longer descends from a commit it must descend from."""

    head: str
    floor: str  # the commit it should contain
    why: str  # "applied by the host" or "published before"


@dataclass(frozen=True)
class SbomRef:
    """A host's newest SBOM the site accepted: signed by the host, parsed, naming it."""

    commit: str  # the report commit holding sbom.cdx.json
    system: str  # the store path it describes
    nixos_version: str
    time: str
    components: int
    packages: int  # distinct (name, version)
    packages_id: str  # digest of those pairs (hosts running the same set share it)
    size: int  # bytes of sbom.cdx.json


@dataclass(frozen=True)
class RefusedSbom:
    commit: str
    why: str


@dataclass(frozen=True)
class SbomState:
    """Where a host's SBOM search stopped: read again only above ``head``."""

    head: str | None  # reports/<host> when it was searched
    key_id: str  # the host key the commits were checked with
    found: SbomRef | None
    refused: tuple[RefusedSbom, ...] = ()  # newer SBOMs than ``found`` refused, newest first
    # A first read that stopped early (gitops.sitegen.collect.QUICK_READ): the commit the
    # search goes on from in a later build; None when searched as far as it goes.
    pending: str | None = None


@dataclass(frozen=True)
class HostSoftware:
    """What the aggregate software pages need of a host (kept in its derived row)."""

    sbom: SbomState
    stale: bool  # the host's newest report runs another system than the SBOM describes
    exemptions: tuple[CveExemption, ...]  # the host's own CVE exemptions (host.yaml)

    @classmethod
    def of(cls, data: HostData, exemptions: tuple[CveExemption, ...]) -> HostSoftware | None:
        """What the pages show of ``data``'s SBOM (None: the host has never reported)."""
        if data.sbom is None:
            return None
        found = data.sbom.found
        newest = data.newest_verified
        running = newest.current_system if newest is not None else None
        stale = found is not None and running is not None and running != found.system
        return cls(data.sbom, stale, exemptions)


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
    # The newest verified reports, parsed, newest first, down to the first that was not
    # dated in the future when read (the one counted then; usually the only one).
    latest: tuple[Parsed, ...] = ()
    truncated: bool = False  # older reports exist beyond what was read
    report_count: int = 0
    trust_counts: tuple[tuple[Trust, int], ...] = ()
    dropped: tuple[DroppedReport, ...] = ()  # reports the branch lost since the site saw them
    deploy_floor: str | None = None  # the newest verified deploy head seen: never below it
    rewind: Rewind | None = None  # set when the deploy head is below what it must contain
    sbom: SbomState | None = None  # gitops.sitegen.software
    # A first read of the newest reports only (collect.QUICK_READ): the commit from which
    # a later build reads on; None when the history was read as far as WINDOW.
    older: str | None = None

    @property
    def history_pending(self) -> bool:
        """Whether a later build still reads older reports (or searches for the SBOM)."""
        return self.older is not None or (self.sbom is not None and self.sbom.pending is not None)

    @property
    def newest_verified(self) -> ReportEntry | None:
        return next((r for r in self.reports if r.verified), None)

    def report_of(self, entry: ReportEntry) -> Report | None:
        return next((p.report for p in self.latest if p.oid == entry.oid), None)

    @property
    def published(self) -> DeployEntry | None:
        """The head of deploy/<host> when its signature verifies and it is not rewound."""
        head = self.deploys[0] if self.deploys else None
        if head is None or head.oid != self.deploy_head or not head.verified or self.rewind:
            return None
        return head


@dataclass(frozen=True)
class FlagNote:
    """What a flag means for this host, in one line."""

    flag: Flag
    text: str


@dataclass(frozen=True)
class MainCommit:
    sha: str
    time: datetime
    author: str
    email: str
    subject: str
    pull_request: int | None


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
    notes: tuple[FlagNote, ...] = ()
    reboot_pending_since: datetime | None = None
    reboot_needed_since: datetime | None = None  # as the counted report says

    def note(self, flag: Flag) -> str:
        return next((n.text for n in self.notes if n.flag is flag), str(flag))

    @property
    def quiet(self) -> bool:
        """Up to date, with nothing to look at (expected flags only)."""
        return self.state is State.UP_TO_DATE and all(f in QUIET_FLAGS for f in self.flags)

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

    def why(self, status: HostStatus) -> str:
        return status.note(self.kind) if isinstance(self.kind, Flag) else status.reason


@dataclass(frozen=True)
class Orphan:
    ref: str
    reason: str


@dataclass(frozen=True)
class Enrolment:
    """A pending ``enroll/<host>`` proposal and what would refuse it (nothing: ready)."""

    host: str
    commit: str
    problems: tuple[str, ...]
