"""``gitops server maintain`` and ``gitops server archive`` on a real server directory,
with reports pushed through git and the server's own hooks: loose objects stay bounded,
archive marks are made once and never moved, nobody else can push them, and the chain
still verifies across a mark (the site reads through it)."""

from __future__ import annotations

import os
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest

from gitops.demo.scenario import DemoFleet
from gitops.protocol import Report, Result, archive_ref, reports_ref
from gitops.report_commits import create_report_commit
from gitops.server import hooks
from gitops.server.layout import IDENTITY_ENV, Layout
from gitops.server.maintain import objects
from gitops.server.updates import Update
from gitops.sitegen import collect
from gitops.sitegen.model import Trust
from gitops.sitegen.verify import trust_id
from gitops.trust import commits
from testing.helpers import gitops, public_line, published_demo

HOSTS = {"web-1": ["server"], "db-1": ["server"]}
HOST = "web-1"


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


@pytest.fixture
def layout(demo: DemoFleet, tmp_path: Path) -> Layout:
    done = gitops("server", "init", "--dir", tmp_path / "srv", "--repo", demo.server, "--mirror")
    assert done.returncode == 0, done.stderr
    return Layout(tmp_path / "srv")


class Agent:
    """Commits signed reports in its own repository and pushes them as the host would."""

    def __init__(self, demo: DemoFleet, layout: Layout, path: Path) -> None:
        self.key = demo.host_keys[HOST]
        self.layout = layout
        self.repo = pygit2.init_repository(str(path), bare=True)
        self.tip: pygit2.Oid | None = None
        self.count = 0

    def commit(self, when: datetime) -> pygit2.Oid:
        self.count += 1
        report = Report(
            host=HOST,
            time=when,
            agent_version="t",
            result=Result.UNCHANGED,
            reason=f"heartbeat {self.count}",
            report_id=f"r-{self.count}",
        )
        self.tip = create_report_commit(self.repo, report, parent=self.tip, key=self.key)
        self.repo.references.create(reports_ref(HOST), self.tip, force=True)
        return self.tip

    def push(self, ref: str | None = None, identity: str = f"host:{HOST}") -> None:
        done = self.try_push(ref or reports_ref(HOST), identity)
        assert done.returncode == 0, done.stderr

    def try_push(
        self, ref: str, identity: str, target: Path | None = None
    ) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in os.environ.items() if k != IDENTITY_ENV}
        env[IDENTITY_ENV] = identity  # what serve sets
        return subprocess.run(
            ["git", "--git-dir", self.repo.path, "push", "-q",
             str(target or self.layout.host_repo(HOST)), f"{self.tip}:{ref}"],
            env=env, capture_output=True, text=True, check=False,
        )  # fmt: skip


def fsck(repo: Path) -> None:
    subprocess.run(
        ["git", "--git-dir", repo, "fsck", "--no-progress", "--strict"],
        check=True,
        capture_output=True,
    )


def git_out(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "--git-dir", repo, *args], check=True, capture_output=True, text=True
    ).stdout


def head(repo: Path) -> pygit2.Oid | None:
    return commits.ref_target(pygit2.Repository(str(repo)), reports_ref(HOST))


def test_maintain_keeps_loose_objects_and_packs_bounded(
    demo: DemoFleet, layout: Layout, tmp_path: Path
) -> None:
    agent = Agent(demo, layout, tmp_path / "agent.git")
    start = int(datetime(2026, 11, 1, tzinfo=UTC).timestamp())
    repos = (layout.host_repo(HOST), layout.fleet)
    for batch in range(3):
        for n in range(30):  # 90 objects: under receive.unpackLimit, so they land loose
            agent.commit(datetime.fromtimestamp(start + (batch * 30 + n) * 3600, UTC))
        agent.push()
    before = {repo: objects(repo) for repo in repos}
    # Without maintenance every report lies loose, in the host's repository (exploded by
    # receive-pack) and in fleet.git (written by the fan-in).
    assert all(before[repo].loose >= 270 for repo in repos), before

    done = gitops("server", "maintain", "--dir", layout.root)

    assert done.returncode == 0, done.stderr
    assert "3 repositories: 2 packed, 0 with refs packed, 1 left as they were" in done.stdout
    for repo in repos:
        assert objects(repo).loose == 0
        assert head(repo) == agent.tip
        fsck(repo)
    # Round after round, loose objects go and the packs stay few (a geometric progression).
    for batch in range(3, 7):
        for n in range(30):
            agent.commit(datetime.fromtimestamp(start + (batch * 30 + n) * 3600, UTC))
        agent.push()
        maintained = gitops("server", "maintain", "--dir", layout.root, "--min-loose", "50")
        assert maintained.returncode == 0, maintained.stderr
        for repo in repos:
            found = objects(repo)
            assert found.loose == 0 and found.packs <= 3, (repo, found)
    for repo in repos:
        fsck(repo)
        assert head(repo) == agent.tip
    # A repository with fewer loose objects than --min-loose is left alone.
    agent.commit(datetime.fromtimestamp(start + 300 * 3600, UTC))
    agent.push()
    again = gitops("server", "maintain", "--dir", layout.root)
    assert "0 packed" in again.stdout and objects(layout.fleet).loose == 3


MONTHS = ["2026-09-10", "2026-09-20", "2026-10-05", "2026-10-25", "2026-11-03", "2026-12-01"]


def _day(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(hour=12, tzinfo=UTC)


def _site_entries(layout: Layout, demo: DemoFleet) -> list[tuple[str, Trust]]:
    repo = collect.open_repo(layout.fleet)
    model, _ = collect.load_main(repo, collect.main_head(repo))
    deploys, reports = collect.list_heads(repo)
    publishers = model.settings.publisher_trust()
    data = collect.HostReader(repo).collect(
        HOST,
        model.hosts[HOST],
        reports_head=reports[HOST],
        deploy_head=deploys.get(HOST),
        publishers=publishers,
        publishers_id=trust_id(publishers),
        previous=None,
        now=_day("2026-12-02"),
    )
    return [(entry.oid, entry.trust) for entry in data.reports]


def kept_packs(repo: Path) -> dict[str, int]:
    """name of each .keep pack -> its inode (rewritten packs get new ones)."""
    folder = repo / "objects" / "pack"
    return {
        p.stem: (folder / f"{p.stem}.pack").stat().st_ino for p in sorted(folder.glob("*.keep"))
    }


def commits_in(repo: Path, pack: str) -> int:
    listed = subprocess.run(
        ["git", "--git-dir", repo, "verify-pack", "-v", repo / "objects" / "pack" / f"{pack}.idx"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return sum(" commit " in line for line in listed.splitlines())


def test_archive_marks_months_once_keeps_their_pack_and_the_chain_verifies(
    demo: DemoFleet, layout: Layout, tmp_path: Path
) -> None:
    agent = Agent(demo, layout, tmp_path / "agent.git")
    oids = {day: agent.commit(_day(day)) for day in MONTHS}
    agent.push()
    site_before = _site_entries(layout, demo)
    assert len(site_before) == len(MONTHS)
    assert all(trust is Trust.VERIFIED for _, trust in site_before)

    done = gitops("server", "archive", "--dir", layout.root, "--before", "2026-11")

    assert done.returncode == 0, done.stderr
    assert "2 archive marks created" in done.stdout, done.stdout
    fleet = pygit2.Repository(str(layout.fleet))
    assert commits.ref_target(fleet, archive_ref(HOST, "2026-09")) == oids["2026-09-20"]
    assert commits.ref_target(fleet, archive_ref(HOST, "2026-10")) == oids["2026-10-25"]
    assert commits.ref_target(fleet, archive_ref("db-1", "2026-10")) is None  # never reported
    # History is untouched, and what the marks reach sits in one kept pack.
    assert head(layout.fleet) == head(layout.host_repo(HOST)) == agent.tip
    first = kept_packs(layout.fleet)
    assert len(first) == 1 and commits_in(layout.fleet, next(iter(first))) == 4
    fsck(layout.fleet)
    # The site reads and verifies across the marks as before, and git verifies every
    # commit from a mark down, as docs/server.md shows.
    assert _site_entries(layout, demo) == site_before
    signers = tmp_path / "web-1.allowed_signers"
    signers.write_text(f"{HOST} {public_line(demo.host_keys[HOST])}\n")
    verdicts = git_out(
        layout.fleet, "-c", f"gpg.ssh.allowedSignersFile={signers}", "log", "--format=%G?",
        archive_ref(HOST, "2026-10"),
    ).split()  # fmt: skip
    assert verdicts == ["G"] * 4
    # Maintenance never rewrites the kept pack, and nothing is stored twice.
    for n in range(40):
        agent.commit(_day("2026-12-02").replace(minute=n))
    agent.push()
    assert gitops("server", "maintain", "--dir", layout.root).returncode == 0
    assert kept_packs(layout.fleet) == first
    counted = dict(
        line.split(": ") for line in git_out(layout.fleet, "count-objects", "-v").splitlines()
    )
    distinct = len(
        git_out(layout.fleet, "cat-file", "--batch-all-objects", "--batch-check").splitlines()
    )
    assert counted["count"] == "0" and int(counted["in-pack"]) == distinct, counted
    # Running it again marks nothing new; a later month adds one mark and one small pack.
    again = gitops("server", "archive", "--dir", layout.root, "--before", "2026-11")
    assert "0 archive marks created" in again.stdout and kept_packs(layout.fleet) == first
    later = gitops("server", "archive", "--dir", layout.root, "--before", "2026-12")
    assert "1 archive marks created" in later.stdout, later.stdout
    packs = kept_packs(layout.fleet)
    assert set(first) < set(packs) and len(packs) == 2
    (newer,) = set(packs) - set(first)
    assert commits_in(layout.fleet, newer) == 1  # only November's report
    assert (
        commits.ref_target(pygit2.Repository(str(layout.fleet)), archive_ref(HOST, "2026-11"))
        == oids["2026-11-03"]
    )
    fsck(layout.fleet)
    # The host goes on pushing on top of the same, unrewritten chain.
    agent.commit(_day("2026-12-03"))
    agent.push()
    assert head(layout.fleet) == agent.tip
    # A month that has not ended cannot be marked.
    future = gitops("server", "archive", "--dir", layout.root, "--before", "2099-01")
    assert future.returncode == 1 and "a mark is for a month that has ended" in future.stderr


def test_nobody_but_the_server_writes_archive_refs(
    demo: DemoFleet, layout: Layout, tmp_path: Path
) -> None:
    agent = Agent(demo, layout, tmp_path / "agent.git")
    agent.commit(_day("2026-10-01"))
    agent.push()
    ref = archive_ref(HOST, "2026-10")
    # Over git: the host to its repository, a publisher to fleet.git.
    pushed = agent.try_push(ref, f"host:{HOST}")
    assert pushed.returncode != 0 and "hidden ref" in pushed.stderr, pushed.stderr
    pushed = agent.try_push(ref, "publisher:publisher@example.org", target=layout.fleet)
    assert pushed.returncode != 0
    assert commits.ref_target(pygit2.Repository(str(layout.fleet)), ref) is None
    # The hook refuses on its own too (not only git's hideRefs), for every identity.
    assert agent.tip is not None
    update = Update(None, agent.tip, ref)
    for repo, identity in (
        (layout.host_repo(HOST), f"host:{HOST}"),
        (layout.fleet, "publisher:publisher@example.org"),
        (layout.fleet, "admin:alice@example.org"),
    ):
        lines = hooks.pre_receive(layout, repo, {IDENTITY_ENV: identity}, [update])
        assert lines == [
            f"gitops: {ref}: refs/archive/ is written only by 'gitops server archive' on "
            "the server itself; nobody pushes it"
        ], (identity, lines)
    # Clients do not even see the marks.
    assert gitops("server", "archive", "--dir", layout.root, "--months", "0").returncode == 0
    assert commits.ref_target(pygit2.Repository(str(layout.fleet)), ref) == agent.tip
    listed = subprocess.run(
        ["git", "ls-remote", layout.fleet], check=True, capture_output=True, text=True
    ).stdout
    assert "refs/archive/" not in listed and reports_ref(HOST) in listed
