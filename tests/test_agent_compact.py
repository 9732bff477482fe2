"""The agent's mirror stays small (gitops.agent.compact): pushed report history is cut and
everything is packed, while the agent keeps verifying, refusing rollbacks and reporting,
and reports it could not push are kept until they are.

Real cycles against the demo fleet; compaction is made due after a few reports instead of
about 100 by lowering its threshold.
"""

from __future__ import annotations

import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gitops.agent import compact
from gitops.agent.cycle import Cycle, CycleResult
from gitops.agent.mirror import APPLIED_REF, REMOTE_REPORTS_REF, Mirror
from gitops.agent.reporter import pending_reports
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet, git
from gitops.protocol import Result, reports_ref
from gitops.report_commits import create_report_commit
from testing.helpers import published_demo, remote_reports

HOSTS = {"alpha": ["workstation"], "gamma": ["server"]}
LIMIT = 9  # loose objects: three reports (commit, tree, status.json)


@pytest.fixture
def demo(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DemoFleet:
    monkeypatch.setattr(compact, "LOOSE_LIMIT", LIMIT)
    return published_demo(tmp_path / "demo", HOSTS)


def run(demo: DemoFleet, host: str, *, force_report: bool = False) -> CycleResult:
    return Cycle(demo.agent_config(host), force_report=force_report).run()


def mirror_of(demo: DemoFleet, host: str) -> Mirror:
    return Mirror(demo.agent_config(host).state_dir, host)


def local_reports(mirror: Mirror) -> int:
    """Report commits the mirror holds (its history stops at the shallow cut)."""
    head = mirror.target(mirror.local_reports_ref)
    return 0 if head is None else sum(1 for _ in mirror.repo.walk(head))


def test_the_mirror_stays_bounded_and_still_refuses_a_rollback(demo: DemoFleet) -> None:
    assert run(demo, "gamma").result == Result.APPLIED
    kept = []
    for _ in range(12):
        result = run(demo, "gamma", force_report=True)
        assert result.push is not None and result.push.pushed, result.push
        mirror = mirror_of(demo, "gamma")
        kept.append(local_reports(mirror))
        assert compact.loose_objects(mirror.path) < LIMIT
    assert max(kept) <= LIMIT // 3 + 1, f"pushed history is cut: {kept}"
    mirror = mirror_of(demo, "gamma")
    assert mirror.repo.is_shallow and compact.packs(mirror.path) == 1
    reports = remote_reports(demo, "gamma")
    assert len(reports) == 13 == len({r.report_id for r in reports}), "the server has them all"
    assert mirror.target(REMOTE_REPORTS_REF) == mirror.target(reports_ref("gamma"))
    # The floor and the applied tree survive: a new deploy is verified against it ...
    applied = mirror.target(APPLIED_REF)
    assert applied is not None and mirror.applied_file("flake.nix") is not None
    demo.merge_change(
        {"hosts/gamma/configuration.nix": standin.host_configuration(["server"], {"k": '"1"'})},
        "gamma: change",
    )
    demo.publish()
    assert run(demo, "gamma").result == Result.APPLIED
    # ... and a head that does not descend from it is refused.
    demo.push_rollback("gamma")
    refused = run(demo, "gamma")
    assert refused.result == Result.REJECTED, refused.reason
    assert "does not descend from the applied commit" in refused.reason
    results = [r.result for r in remote_reports(demo, "gamma")]
    assert results[-2:] == [Result.APPLIED, Result.REJECTED]
    git("--git-dir", mirror.path, "fsck", "--no-dangling", cwd=mirror.path)


def test_reports_that_could_not_be_pushed_survive_compaction(
    demo: DemoFleet, tmp_path: Path
) -> None:
    run(demo, "alpha")
    for _ in range(3):
        run(demo, "alpha", force_report=True)
    assert mirror_of(demo, "alpha").repo.is_shallow, "compacted once while online"
    hidden = demo.server.with_name("server.hidden")
    demo.server.rename(hidden)
    try:
        for count in range(1, 6):
            offline = run(demo, "alpha", force_report=True)
            assert offline.result == Result.FETCH_FAILED
            assert offline.push is not None and offline.push.pending == count
    finally:
        hidden.rename(demo.server)
    mirror = mirror_of(demo, "alpha")
    assert compact.loose_objects(mirror.path) < LIMIT, "compacted while offline"
    assert len(pending_reports(mirror)) == 5
    back = run(demo, "alpha", force_report=True)
    assert back.push is not None and back.push.pushed and back.push.pending == 0
    reports = remote_reports(demo, "alpha")
    assert [r.result for r in reports] == [Result.APPLIED] + [Result.UNCHANGED] * 3 + [
        Result.FETCH_FAILED
    ] * 5 + [Result.UNCHANGED]
    assert len({r.report_id for r in reports}) == len(reports)


def test_a_moved_server_branch_is_rebased_onto_from_a_compacted_mirror(
    demo: DemoFleet, tmp_path: Path
) -> None:
    run(demo, "alpha")
    for _ in range(3):
        run(demo, "alpha", force_report=True)
    assert mirror_of(demo, "alpha").repo.is_shallow
    # Someone else adds a signed report to reports/alpha on the server.
    other = Mirror(tmp_path / "other-state", "alpha")
    git(
        "fetch", "-q", demo.server, f"{reports_ref('alpha')}:{reports_ref('alpha')}", cwd=other.path
    )
    extra = replace(
        remote_reports(demo, "alpha")[-1],
        report_id=str(uuid.uuid4()),
        reason="written elsewhere",
        time=datetime.now(UTC),
    )
    parent = other.target(reports_ref("alpha"))
    oid = create_report_commit(other.repo, extra, parent=parent, key=demo.host_keys["alpha"])
    git("push", "-q", demo.server, f"{oid}:{reports_ref('alpha')}", cwd=other.path)
    result = run(demo, "alpha", force_report=True)
    assert result.push is not None and result.push.pushed, result.push
    reports = remote_reports(demo, "alpha")
    assert len(reports) == 6 == len({r.report_id for r in reports})
    assert reports[-2].reason == "written elsewhere"


def test_a_server_that_lost_reports_gets_new_ones_from_a_compacted_mirror(
    demo: DemoFleet,
) -> None:
    """The server restored from an older backup: the mirror's cut is above the server's
    tip, so the next push cannot be a fast-forward from what the host kept; the agent
    rebases its last report and the new one onto the server's tip, and pushes."""
    run(demo, "alpha")
    for _ in range(3):
        run(demo, "alpha", force_report=True)
    assert mirror_of(demo, "alpha").repo.is_shallow
    ids = [r.report_id for r in remote_reports(demo, "alpha")]
    restored = git("rev-list", "--max-parents=0", reports_ref("alpha"), cwd=demo.server)
    git("update-ref", reports_ref("alpha"), restored, cwd=demo.server)
    result = run(demo, "alpha", force_report=True)
    assert result.push is not None and result.push.pushed, result.push
    after = [r.report_id for r in remote_reports(demo, "alpha")]
    assert after[0] == ids[0] and len(after) == len(set(after))
    assert after[-2] == ids[-1], "the last report the host had pushed is pushed again"


def test_a_server_cannot_cut_the_mirror_inside_the_deploy_chain(demo: DemoFleet) -> None:
    """The git server serves a deploy commit the host has not fetched yet as reports/gamma
    and refuses the host's reports, until compaction is due. Cutting the history there
    would hide the path from every later head down to the applied commit: the host would
    refuse each new deploy for good. The cut is made only at a report the host signed."""
    assert run(demo, "gamma").result == Result.APPLIED
    applied = git("rev-parse", "refs/heads/deploy/gamma", cwd=demo.server)
    heads = []
    for value in ('"1"', '"2"'):
        demo.merge_change(
            {"hosts/gamma/configuration.nix": standin.host_configuration(["server"], {"k": value})},
            f"gamma: k={value}",
        )
        demo.publish()
        heads.append(git("rev-parse", "refs/heads/deploy/gamma", cwd=demo.server))
    middle, newest = heads
    git("update-ref", "refs/heads/deploy/gamma", applied, cwd=demo.server)
    git("update-ref", reports_ref("gamma"), middle, cwd=demo.server)
    hook = demo.server / "hooks" / "pre-receive"
    hook.write_text('#!/bin/sh\necho "gitops: reports are paused" >&2\nexit 1\n')
    hook.chmod(0o755)
    for _ in range(4):
        run(demo, "gamma", force_report=True)
    mirror = mirror_of(demo, "gamma")
    assert str(mirror.target(REMOTE_REPORTS_REF)) == middle
    assert compact.loose_objects(mirror.path) < LIMIT, "compacted while refused"
    shallow = mirror.path / compact.SHALLOW_FILE
    assert not shallow.exists() or middle not in shallow.read_text()
    # The server behaves again: the newest head descends from the applied one, as it did.
    hook.unlink()
    git("update-ref", "refs/heads/deploy/gamma", newest, cwd=demo.server)
    result = run(demo, "gamma")
    assert result.result == Result.APPLIED, result.reason
