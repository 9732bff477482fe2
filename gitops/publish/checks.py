"""What must hold before a host gets a new deploy commit, and the one line that says why
it does not.

* **The branch**: the server's ``deploy/<host>`` must be something hosts accept a child
  of: every commit since the last one this publisher knows (its local ``deploy/<host>``,
  else what the host last reported applying) signed by a publisher in fleet.yaml and
  addressed to this host, and a fast-forward from it, unless a publisher signed a
  recovery commit (``Recovers``) for the rewrite.
* **The source**: the source being published must descend from (or be) the one the
  branch's head was rendered from, so no publish moves a host to an older ``main``.

A host that fails either is refused alone; the others are published.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import pygit2

from gitops.protocol import TRAILER_HOST, TRAILER_RECOVERS, TRAILER_SOURCE, branch_name, deploy_ref
from gitops.publish.lineage import Order, SourceOrder
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError

LISTED_HOSTS = 5


def _hosts(hosts: Sequence[str]) -> str:
    shown = ", ".join(hosts[:LISTED_HOSTS])
    more = len(hosts) - LISTED_HOSTS
    return shown + (f" and {more} more hosts" if more > 0 else "")


def _short(sha: object) -> str:
    return str(sha)[:8]


@dataclass(frozen=True)
class BadBranch:
    """The server's deploy branch of one host cannot be built on."""

    host: str
    problem: str

    def describe(self, _hosts: Sequence[str]) -> str:
        return self.problem


@dataclass(frozen=True)
class OlderSource:
    source: str
    published: str
    remote: str

    def describe(self, hosts: Sequence[str]) -> str:
        return (
            f"main {_short(self.source)} is older than {_short(self.published)}, already "
            f"published to {_hosts(hosts)}; fetch main ('git fetch {self.remote} main') and "
            "publish from the newer commit"
        )


@dataclass(frozen=True)
class UnrelatedSource:
    source: str
    published: str

    def describe(self, hosts: Sequence[str]) -> str:
        return (
            f"main {_short(self.source)} does not descend from {_short(self.published)}, "
            f"already published to {_hosts(hosts)} (main was rewritten, or that was "
            f"published from another branch); publish from a commit that contains "
            f"{_short(self.published)}"
        )


@dataclass(frozen=True)
class UnknownSource:
    source: str
    published: str
    remote: str

    def describe(self, hosts: Sequence[str]) -> str:
        return (
            f"{_hosts(hosts)} {'was' if len(hosts) == 1 else 'were'} last published from "
            f"main {_short(self.published)}, which this clone does not have (newer than "
            f"{_short(self.source)}?); run 'git fetch {self.remote} main' and publish from "
            "the newest main commit"
        )


@dataclass(frozen=True)
class NotBuilt:
    """Publishing with a systems file, a host whose new tree is not one it names."""

    systems: str  # the systems file

    def describe(self, hosts: Sequence[str]) -> str:
        return (
            f"{self.systems} names no system built from the deploy tree of {_hosts(hosts)} "
            "(built from another main commit, or the host failed to build); run "
            f"'gitops build --systems {self.systems}' from the commit you publish"
        )


Reason = BadBranch | OlderSource | UnrelatedSource | UnknownSource | NotBuilt


@dataclass(frozen=True)
class Refusal:
    """Hosts that get nothing this time, and the one line that says why."""

    hosts: tuple[str, ...]
    text: str


def group(reasons: Mapping[str, Reason]) -> tuple[Refusal, ...]:
    """One line per distinct reason (a stale main refuses every host for one reason)."""
    by_reason: dict[Reason, list[str]] = defaultdict(list)
    for host in sorted(reasons):
        by_reason[reasons[host]].append(host)
    return tuple(
        Refusal(tuple(hosts), reason.describe(hosts)) for reason, hosts in by_reason.items()
    )


def check_source(
    repo: pygit2.Repository, order: SourceOrder, host: str, base: pygit2.Oid, remote: str
) -> Reason | None:
    """Refuse to publish to ``host`` a source older than the one ``base`` was rendered from."""
    base_commit = repo.get(base)
    assert isinstance(base_commit, pygit2.Commit)
    published = commits.trailers(base_commit.message).get(TRAILER_SOURCE)
    if published is None:
        return BadBranch(
            host,
            f"{branch_name(deploy_ref(host))}'s head {_short(base)} has no {TRAILER_SOURCE} "
            "trailer, so this publish cannot be shown not to be older; if it was made by hand, "
            f"supersede it with 'gitops publish --recover --host {host} --applied <sha>'",
        )
    match order.of(published):
        case Order.SAME_OR_NEWER:
            return None
        case Order.OLDER:
            return OlderSource(str(order.source), published, remote)
        case Order.UNRELATED:
            return UnrelatedSource(str(order.source), published)
        case Order.UNKNOWN:
            return UnknownSource(str(order.source), published, remote)


@dataclass(frozen=True)
class BranchCheck:
    """Checks the server's deploy branches against what this publisher knows."""

    repo: pygit2.Repository
    remote: str
    trust: AllowedSigners  # the publishers in fleet.yaml

    def check(
        self, host: str, head: pygit2.Oid, *, known: pygit2.Oid | None, applied: str | None
    ) -> BadBranch | None:
        """``known``: the local deploy/<host> (what this clone published or verified);
        ``applied``: what the host last reported applying, used when nothing is known."""
        if head == known:
            return None
        floor = known if known is not None else self._present(applied)
        problem = self._unsigned_or_foreign(host, head, floor)
        if problem is not None:
            return BadBranch(host, problem)
        # A publisher-signed recovery commit sanctions a rewrite: any one of them for what
        # this clone saw, but for what the host applied only one naming that commit, since
        # the host accepts no other.
        if known is not None:
            what = "the last commit this clone saw there"
            return self._rewound(host, head, str(known), what, exact=False)
        if applied is not None:
            what = f"the commit {host} last reported applying"
            return self._rewound(host, head, applied, what, exact=True)
        return None

    def _present(self, sha: str | None) -> pygit2.Oid | None:
        if sha is None:
            return None
        try:
            oid = pygit2.Oid(hex=sha)
        except ValueError:
            return None
        return oid if oid in self.repo else None

    def _new_commits(self, head: pygit2.Oid, floor: pygit2.Oid | None) -> list[pygit2.Commit]:
        """The commits since ``floor``; with no floor only the head (older commits may be
        signed by keys rotated out of fleet.yaml since)."""
        if floor is None:
            commit = self.repo.get(head)
            assert isinstance(commit, pygit2.Commit)
            return [commit]
        walker = self.repo.walk(head, pygit2.enums.SortMode.TOPOLOGICAL)
        walker.hide(floor)
        return list(walker)

    def _unsigned_or_foreign(
        self, host: str, head: pygit2.Oid, floor: pygit2.Oid | None
    ) -> str | None:
        branch = f"{branch_name(deploy_ref(host))} on {self.remote}"
        for commit in self._new_commits(head, floor):
            where = (
                "its head" if commit.id == head else f"commit {_short(commit.id)} below its head"
            )
            try:
                commits.verify_commit(self.repo, commit.id, self.trust)
            except SignatureError as err:
                return (
                    f"{branch}: {where} is not signed by a publisher in fleet.yaml ({err}): "
                    "someone pushed to it by hand; investigate, then put the last good commit "
                    f"back ('git push --force {self.remote} <good>:{deploy_ref(host)}')"
                )
            target = commits.trailers(commit.message).get(TRAILER_HOST)
            if target != host:
                return (
                    f"{branch}: {where} is addressed to {target or 'no host'}, not {host}; "
                    f"put the last good commit back ('git push --force {self.remote} "
                    f"<good>:{deploy_ref(host)}')"
                )
        return None

    def _rewound(
        self, host: str, head: pygit2.Oid, floor: str, what: str, *, exact: bool
    ) -> BadBranch | None:
        oid = self._present(floor)
        if oid is not None and (head == oid or self.repo.descendant_of(head, oid)):
            return None
        recovered = self._recovered(head, oid)
        if (floor in recovered) if exact else bool(recovered):
            return None
        return BadBranch(
            host,
            f"{branch_name(deploy_ref(host))} on {self.remote} was rewound or rewritten: its "
            f"head {_short(head)} does not contain {_short(floor)}, {what}, so {host} would "
            "refuse anything built on it. If the server was restored from a backup, run "
            f"'gitops publish --recover --host {host}'; otherwise push {_short(floor)} back",
        )

    def _recovered(self, head: pygit2.Oid, floor: pygit2.Oid | None) -> set[str]:
        """What the publisher-signed recovery commits above ``floor`` supersede."""
        walker = self.repo.walk(head, pygit2.enums.SortMode.TOPOLOGICAL)
        if floor is not None:
            walker.hide(floor)
        found = set()
        for commit in walker:
            recovers = commits.trailers(commit.message).get(TRAILER_RECOVERS)
            if recovers is None:
                continue
            try:
                commits.verify_commit(self.repo, commit.id, self.trust)
            except SignatureError:
                continue
            found.add(recovers)
        return found
