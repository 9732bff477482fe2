"""The demo's staged rollout: waves in fleet.yaml, a change that breaks every host's
health check, and the canary wave that halts it before it reaches anyone else
(docs/rollout.md). Through the real staged publish (:mod:`gitops.publish.rollout`),
pushing to the gitops server with the publisher's key."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import pygit2
import yaml

from gitops.agent.cycle import CycleResult
from gitops.demo import standin
from gitops.demo.scenario import git
from gitops.demo.served import ServedFleet
from gitops.fleet.rollout_record import Record
from gitops.protocol import deploy_ref
from gitops.publish import rollout, run
from gitops.trust import commits

REMOTE = "gitops"  # the demo clone's name for the gitops server's fleet.git


@dataclass(frozen=True)
class WavesOutcome:
    canary: str
    started: Record  # after the first staged publish: the canary has the change
    canary_run: CycleResult
    halted: Record  # after the next one
    untouched: tuple[str, ...]  # hosts whose deploy branch did not move


@contextlib.contextmanager
def _as_publisher(demo: ServedFleet) -> Iterator[None]:
    """git talks to the gitops server with the publisher's key (the stand-in ssh)."""
    command = demo.env(demo.publisher_key_path)["GIT_SSH_COMMAND"]
    before = os.environ.get("GIT_SSH_COMMAND")
    os.environ["GIT_SSH_COMMAND"] = command
    try:
        with demo._ssh():
            yield
    finally:
        if before is None:
            os.environ.pop("GIT_SSH_COMMAND", None)
        else:
            os.environ["GIT_SSH_COMMAND"] = before


def _head(demo: ServedFleet, host: str) -> pygit2.Oid | None:
    """deploy/<host> on the gitops server."""
    return commits.ref_target(pygit2.Repository(str(demo.record)), deploy_ref(host))


def _staged_publish(demo: ServedFleet) -> rollout.Staged:
    request = run.Request(
        repo=demo.repo_dir,
        source="main",
        hosts=(),
        key_path=demo.publisher_key_path,
        push=True,
        remote=REMOTE,
        systems=demo.build_systems(),
    )
    with _as_publisher(demo):
        return rollout.publish(request)


def canary_halts(demo: ServedFleet, canary: str, say: Callable[[str], None]) -> WavesOutcome:
    """Declare waves (``canary`` first), merge a bad change, publish by wave."""
    git("remote", "add", REMOTE, demo.url("fleet.git"), cwd=demo.repo_dir)
    fleet_file = demo.repo_dir / "fleet.yaml"
    settings = yaml.safe_load(fleet_file.read_text(encoding="utf-8"))
    settings["rollout"] = {
        "waves": [{"name": "canary", "hosts": [canary]}, {"name": "everyone"}],
        "success_threshold": 0.9,
        "soak": "30m",
    }
    demo.merge_change(
        {"fleet.yaml": yaml.safe_dump(settings, sort_keys=False)},
        f"Merge pull request #4 from alice/waves\n\nfleet.yaml: {canary} is the canary",
    )
    demo.merge_change(
        {"modules/default.nix": standin.MODULES.replace("];", "];\n  unhealthy = true;")},
        "Merge pull request #5 from bob/baseline\n\nmodules: a stricter security baseline",
    )
    heads = {host: _head(demo, host) for host in demo.hosts}
    started = _staged_publish(demo)
    say("   " + "\n   ".join(started.steps))
    canary_run = demo.run_agent(canary)
    say(f"    {canary:<16} {canary_run.result:<13} {canary_run.reason}")
    halted = _staged_publish(demo)
    say("   " + "\n   ".join(halted.steps))
    untouched = tuple(h for h in demo.hosts if h != canary and _head(demo, h) == heads[h])
    say(
        f"   {len(untouched)} of {len(demo.hosts) - 1} other hosts never received it; "
        "'gitops rollout resume' or 'abort' decides (or a fix on main starts a new rollout)\n"
    )
    return WavesOutcome(canary, started.record, canary_run, halted.record, untouched)
