"""Staged rollouts (docs/rollout.md): a new main commit reaches the first wave only, moves
on when that wave's signed reports show it applied and healthy for the soak time, halts
when too many fail, and an admin resumes or aborts it; every step is a publisher-signed
commit on ``rollout``. On a real bare server, with reports signed by each host's key and
an injected clock."""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2
import pytest

from gitops.commands import rollout_cmd
from gitops.fleet.model import load_fleet
from gitops.fleet.rollout import (
    Decision,
    Observation,
    Progress,
    RolloutSettings,
    Wave,
    assign,
    judge_wave,
)
from gitops.fleet.rollout_record import Status, read_record
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.protocol import ROLLOUT_REF, Report, Result, reports_ref
from gitops.publish import plan as publishing
from gitops.publish import rollout, run
from gitops.report_commits import create_report_commit
from gitops.sitegen import build as site
from gitops.trust import commits, keys
from testing.helpers import git, gitops, public_line
from testing.publishing import HOSTS, ServedFleet, served_fleet

MINUTE = timedelta(minutes=1)
WAVES: dict[str, object] = {
    "rollout": {
        "waves": [
            {"name": "canary", "hosts": ["web-1"]},
            {"name": "early", "hosts": ["web-2"]},
            {"name": "everyone"},
        ],
        "success_threshold": 0.9,
        "soak": "30m",
    }
}


@dataclass
class Rollout:
    fleet: ServedFleet
    t0: datetime
    before: dict[str, str | None]  # each host's deploy head before the change

    def run(self, at: timedelta) -> rollout.Staged:
        request = run.Request(
            repo=self.fleet.root,
            source="main",
            hosts=(),
            key_path=self.fleet.key_path,
            push=True,
            remote="origin",
        )
        return rollout.publish(request, now=self.t0 + at)

    def report(
        self,
        host: str,
        at: timedelta,
        result: Result = Result.APPLIED,
        *,
        applied: str | None = None,
    ) -> None:
        """A report signed by ``host``'s key: it saw its current head and applied it (or,
        for a failure, kept ``applied``)."""
        head = self.fleet.head(host)
        report = Report(
            host=host,
            time=self.t0 + at,
            agent_version="test",
            result=result,
            reason=f"{result} at +{at}",
            report_id=uuid.uuid4().hex,
            deploy_seen=head,
            deploy_applied=applied if applied is not None else head,
        )
        repo = pygit2.Repository(str(self.fleet.server))
        parent = commits.ref_target(repo, reports_ref(host))
        oid = create_report_commit(repo, report, parent=parent, key=self.fleet.host_keys[host])
        git("update-ref", reports_ref(host), str(oid), cwd=self.fleet.server)

    def record(self) -> tuple[Status, str, str]:
        """The server's rollout record: status, current wave, reason (signature checked)."""
        repo = pygit2.Repository(str(self.fleet.server))
        head = commits.ref_target(repo, ROLLOUT_REF)
        assert head is not None
        trust = publishing.load_fleet_at(
            repo, commits.resolve_commit(repo, "main")
        ).settings.publisher_trust()
        found = read_record(repo, head, trust)
        return found.status, found.current.name, found.reason

    def moved(self) -> set[str]:
        return {h for h in HOSTS if self.fleet.head(h) != self.before[h]}


def _rolled_out_fleet(tmp_path: Path) -> Rollout:
    """Every host published and healthy a day ago; then a change to every host on main."""
    fleet = served_fleet(tmp_path, extra_fleet=WAVES)
    t0 = datetime.now(UTC)
    repo = pygit2.Repository(str(fleet.root))
    key = keys.load_signing_key(fleet.key_path)
    publishing.write_commits(
        repo, publishing.make_plan(repo, "main"), key, now=t0 - 2 * 1440 * MINUTE
    )
    git("push", "-q", "origin", "refs/heads/deploy/*:refs/heads/deploy/*", cwd=fleet.root)
    before = {h: fleet.head(h) for h in HOSTS}
    setup = Rollout(fleet, t0, before)
    for host in HOSTS:
        setup.report(host, -1440 * MINUTE)
    fleet.change_every_host("v2")
    return setup


def test_a_change_advances_wave_by_wave_after_the_soak_time(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    setup = _rolled_out_fleet(tmp_path)

    first = setup.run(0 * MINUTE)
    assert first.steps[0].startswith("rollout of ") and "started: wave canary" in first.steps[0]
    assert setup.moved() == {"web-1"}, "only the canary gets the change"
    assert setup.record()[:2] == (Status.ROLLING, "canary")

    setup.report("web-1", 2 * MINUTE)
    waiting = setup.run(10 * MINUTE)
    assert waiting.steps == ()
    assert waiting.verdict is not None and waiting.verdict.decision is Decision.WAIT
    assert "0 of 1 hosts healthy for 30m, 1 needed (1 soaking" in waiting.verdict.reason
    assert setup.moved() == {"web-1"}, "applied, but not yet for the soak time"

    passed = setup.run(33 * MINUTE)
    assert any("wave early gets" in s for s in passed.steps), passed.steps
    assert setup.moved() == {"web-1", "web-2"}
    assert setup.record()[:2] == (Status.ROLLING, "early")

    setup.report("web-2", 34 * MINUTE)
    setup.run(70 * MINUTE)
    assert setup.moved() == set(HOSTS), "the last wave is everyone else"
    assert setup.record()[:2] == (Status.ROLLING, "everyone")

    for host in ("dev-ws-1", "admin-1"):
        setup.report(host, 71 * MINUTE)
    done = setup.run(105 * MINUTE)
    assert setup.record()[0] is Status.DONE
    assert done.steps[-1].startswith("rollout of ") and " done: " in done.steps[-1]

    # The record is auditable with plain git: one signed commit per step.
    log = git("log", "--format=%s", "rollout", cwd=setup.fleet.server).stdout.splitlines()
    source = done.record.source[:8]
    assert log == [
        f"rollout of {source} done: wave everyone: 2 of 2 hosts applied and healthy for 30m "
        "(2 needed)",
        f"wave early: 1 of 1 hosts applied and healthy for 30m (1 needed): wave everyone gets "
        f"{source}",
        f"wave canary: 1 of 1 hosts applied and healthy for 30m (1 needed): wave early gets "
        f"{source}",
        f"rollout of {source} started: wave canary",
    ]
    trust = setup.fleet.root / "publishers"
    trust.write_text(f"publisher@example.org {public_line(setup.fleet.publisher)}\n")
    for rev in ("rollout", "rollout~3"):
        verified = git(
            "-c",
            f"gpg.ssh.allowedSignersFile={trust}",
            "verify-commit",
            rev,
            cwd=setup.fleet.server,
            check=False,
        )
        assert verified.returncode == 0, verified.stderr
    capsys.readouterr()
    # The clock is injected, so in-process: the CLI would judge at the real time.
    assert rollout_cmd.status(setup.fleet.server, as_json=True, now=setup.t0 + 106 * MINUTE) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rollout"]["status"] == "done"
    assert [w["state"] for w in data["waves"]] == ["passed", "passed", "done"]
    assert data["waves"][2]["counts"]["healthy"] == 2


def test_failures_halt_the_rollout_before_the_next_wave_and_resume_goes_on(
    tmp_path: Path,
) -> None:
    setup = _rolled_out_fleet(tmp_path)
    setup.run(0 * MINUTE)
    old = setup.before["web-1"]
    setup.report("web-1", 3 * MINUTE, Result.ROLLED_BACK, applied=old)

    halted = setup.run(5 * MINUTE)
    assert halted.record.status is Status.HALTED
    reason = halted.record.reason
    assert reason.startswith("wave canary: 1 of 1 hosts failed (web-1 (rolled-back))"), reason
    assert setup.moved() == {"web-1"}, "the bad change reached no other host"
    again = setup.run(60 * MINUTE)
    assert again.steps == () and setup.moved() == {"web-1"}, "halted stays halted"

    shown = gitops("rollout", "status", "--repo", setup.fleet.server)
    assert shown.returncode == 0, shown.stderr
    assert "halted at wave canary" in shown.stdout
    assert "failed: web-1 (rolled-back)" in shown.stdout
    # The site's rollout page judges with the same code.
    site.build(setup.fleet.server, tmp_path / "site", now=setup.t0 + 61 * MINUTE, send_alerts=False)
    page = (tmp_path / "site" / "rollout.html").read_text()
    assert "is <strong>halted</strong> at wave\n<strong>canary</strong>" in page
    assert "<td>rolled-back</td>" in page
    data = json.loads((tmp_path / "site" / "rollout.json").read_text())["rollout"]
    assert data["status"] == "halted"
    assert [(w["name"], w["state"]) for w in data["waves"]] == [
        ("canary", "halted"),
        ("early", "waiting"),
        ("everyone", "waiting"),
    ]
    assert data["waves"][0]["members"][0]["progress"] == "failed"
    # A second build reuses its cached summary of main: the same page.
    first = (tmp_path / "site" / "rollout.json").read_text()
    site.build(setup.fleet.server, tmp_path / "site", now=setup.t0 + 61 * MINUTE, send_alerts=False)
    assert (tmp_path / "site" / "rollout.json").read_text() == first

    resumed = gitops(
        "rollout",
        "resume",
        "--repo",
        setup.fleet.root,
        "--key",
        setup.fleet.key_path,
        "--reason",
        "web-1 has a broken disk",
        "--push",
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed: wave early gets it at the next publish" in resumed.stdout
    status, wave, why = setup.record()
    assert (status, wave) == (Status.ROLLING, "early")
    assert (
        why
        == "resumed by publisher@example.org (web-1 has a broken disk), past the failures of wave canary"
    )
    setup.run(61 * MINUTE)
    assert setup.moved() == {"web-1", "web-2"}


def test_an_aborted_rollout_stops_and_the_next_change_starts_again_at_the_canary(
    tmp_path: Path,
) -> None:
    setup = _rolled_out_fleet(tmp_path)
    setup.run(0 * MINUTE)
    aborted = gitops(
        "rollout", "abort", "--repo", setup.fleet.root, "--key", setup.fleet.key_path, "--push"
    )
    assert aborted.returncode == 0, aborted.stderr
    assert setup.record()[0] is Status.ABORTED
    setup.report("web-1", 1 * MINUTE)
    later = setup.run(120 * MINUTE)
    assert later.steps == () and setup.moved() == {"web-1"}, "aborted: no wave moves"
    again = gitops(
        "rollout", "resume", "--repo", setup.fleet.root, "--key", setup.fleet.key_path, "--push"
    )
    assert again.returncode == 1
    assert again.stderr.strip() == (
        f"gitops: error: the rollout of {later.record.source[:8]} is aborted, not halted: "
        "nothing to resume"
    )

    setup.fleet.change_every_host("v3")
    fresh = setup.run(121 * MINUTE)
    assert "started: wave canary" in fresh.steps[0]
    assert fresh.record.status is Status.ROLLING and fresh.record.wave == 0
    assert setup.moved() == {"web-1"}


def test_a_plain_publish_uses_the_waves_through_the_cli(tmp_path: Path) -> None:
    setup = _rolled_out_fleet(tmp_path)
    done = setup.fleet.publish("--push")
    assert done.returncode == 0, done.stderr
    assert "started: wave canary" in done.stdout
    assert "published 1 deploy commits and pushed to origin" in done.stdout
    assert setup.moved() == {"web-1"}


# -- settings and judging, without git ---------------------------------------------------


def _problems(tmp_path: Path, rollout_yaml: str) -> list[str]:
    fleet = served_fleet(tmp_path)
    text = (fleet.root / "fleet.yaml").read_text() + rollout_yaml
    (fleet.root / "fleet.yaml").write_text(text)
    problems = Problems()
    load_fleet(DirSource(fleet.root), problems)
    return [line.split("fleet.yaml", 1)[1] for line in problems.lines()]


@pytest.mark.parametrize(
    ("rollout_yaml", "expected"),
    [
        (
            "rollout:\n  waves:\n  - {name: canary, hosts: [web-1]}\n",
            ":7: rollout.waves[0].name: the last wave ('canary') must take every remaining "
            "host; remove its tags, hosts or percent, or add a last wave {name: everyone}",
        ),
        (
            "rollout:\n  waves:\n  - {name: canary, hosts: [web-9]}\n  - {name: rest}\n",
            ": rollout.waves[0].hosts: unknown host 'web-9'; hosts are the directories in hosts/",
        ),
        (
            "rollout:\n  waves:\n  - {name: a, tags: [x], percent: 5}\n  - {name: rest}\n",
            ":7: rollout.waves[0].percent: a wave selects by one of tags, hosts or percent, "
            "not tags and percent",
        ),
        (
            "rollout:\n  waves: [{name: rest}]\n  success_threshold: 90\n",
            ":7: rollout.success_threshold: '90' is not a fraction between 0 and 1; write e.g. "
            "0.9 (90 % of a wave applied and healthy)",
        ),
        (
            "rollout:\n  waves: [{name: all}, {name: rest}]\n",
            ":6: rollout.waves[0].name: wave 'all' takes every remaining host, so the waves "
            "after it get none; give it tags, hosts or percent, or make it the last wave",
        ),
    ],
)
def test_bad_rollout_settings_are_one_clear_line_each(
    tmp_path: Path, rollout_yaml: str, expected: str
) -> None:
    assert _problems(tmp_path, rollout_yaml) == [expected]


def test_waves_take_tags_then_a_stable_percentage_then_the_rest() -> None:
    settings = RolloutSettings(
        (Wave("canary", tags=("canary",)), Wave("early", percent=10), Wave("everyone"))
    )
    hosts = {f"h{i:02d}": (("canary",) if i < 2 else ()) for i in range(40)}
    canary, early, rest = assign(settings, hosts)
    assert canary == ("h00", "h01")
    assert len(early) == 4 and not set(early) & set(canary)
    assert assign(settings, hosts)[1] == early, "the same hosts every time"
    assert len(rest) == 34


def test_a_wave_halts_as_soon_as_the_threshold_cannot_be_met() -> None:
    def wave(*progress: Progress) -> list[Observation]:
        return [Observation(f"h{i}", p, None, str(p)) for i, p in enumerate(progress)]

    ok, bad = Progress.HEALTHY, Progress.FAILED
    assert judge_wave("w", wave(*[ok] * 9, bad), 0.9, 60).decision is Decision.PASS
    assert judge_wave("w", wave(*[ok] * 8, bad, bad), 0.9, 60).decision is Decision.HALT
    waiting = judge_wave("w", wave(*[ok] * 8, bad, Progress.SOAKING), 0.9, 60)
    assert waiting.decision is Decision.WAIT and waiting.needed == 9
    assert judge_wave("w", [], 0.9, 60).decision is Decision.PASS, "an empty wave passes"


def test_hosts_not_reached_keep_their_tree_but_get_heartbeats(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path, extra_fleet={**WAVES, "deploy": {"expires_after": "3d"}})
    t0 = datetime.now(UTC)
    repo = pygit2.Repository(str(fleet.root))
    key = keys.load_signing_key(fleet.key_path)
    # Published two and a half days ago: every head expires within the renewal window.
    publishing.write_commits(repo, publishing.make_plan(repo, "main"), key, now=t0 - 3600 * MINUTE)
    git("push", "-q", "origin", "refs/heads/deploy/*:refs/heads/deploy/*", cwd=fleet.root)
    setup = Rollout(fleet, t0, {h: fleet.head(h) for h in HOSTS})
    fleet.change_every_host("v2")

    staged = setup.run(0 * MINUTE)
    assert setup.moved() == set(HOSTS)
    assert len(staged.renewed) == 1, "one source: the one every waiting head came from"
    assert sorted(staged.renewed[0].published.commits) == ["admin-1", "dev-ws-1", "web-2"]
    for host in ("web-2", "dev-ws-1", "admin-1"):
        head, before = fleet.head(host), setup.before[host]
        assert head is not None and before is not None
        subject = git("log", "-1", "--format=%s", head, cwd=fleet.server).stdout.strip()
        assert subject == f"deploy {host}: renew expiry"
        same = git("diff", "--quiet", before, head, cwd=fleet.server, check=False)
        assert same.returncode == 0, "the same tree: only the expiry moved"
    canary = fleet.head("web-1")
    assert canary is not None
    changed = git(
        "diff", "--quiet", setup.before["web-1"] or "", canary, cwd=fleet.server, check=False
    )
    assert changed.returncode == 1, "the canary got the change"
