"""``gitops publish`` as one call: load the key and the fleet, sync with the server,
plan, sign, push. The command only parses arguments and prints what this returns."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from gitops.publish import plan as planning
from gitops.publish import push
from gitops.trust import commits, keys


@dataclass(frozen=True)
class Request:
    repo: Path
    source: str  # the main commit to render from
    hosts: tuple[str, ...]  # only these hosts; all when empty
    key_path: Path
    push: bool
    remote: str


def publish(request: Request, *, progress: push.Progress = push.quiet) -> planning.Published:
    key = keys.load_signing_key(request.key_path)
    repository = commits.open_repository(request.repo)
    fleet = planning.load_fleet_at(repository, commits.resolve_commit(repository, request.source))
    if request.push:
        push.sync_from_remote(
            repository, request.remote, fleet.settings.publisher_trust(), progress=progress
        )
    plan = planning.make_plan(repository, request.source, only=request.hosts, fleet=fleet)
    published = planning.write_commits(repository, plan, key, progress=progress)
    if request.push:
        push.push_published(repository, request.remote, published, progress=progress)
    return published
