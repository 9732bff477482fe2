"""The rollout page: each wave of the staged rollout on ``rollout`` and how far its hosts
are, judged by the code ``gitops publish`` and ``gitops rollout status`` use
(:func:`gitops.fleet.rollout_record.view`), so the three agree. A record that does not
verify is shown as such, never trusted, and never breaks the rest of the site."""

from __future__ import annotations

from datetime import datetime
from typing import Any

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import Fleet, load_fleet
from gitops.fleet.rollout_record import WaveView, local_record, view
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import ROLLOUT_REF
from gitops.trust import commits


def rollout_page(
    repo: pygit2.Repository, main: pygit2.Commit, fleet: Fleet | None, now: datetime
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page's template context and its JSON data."""
    empty: dict[str, Any] = {"record": None, "waves": (), "problem": "", "rollout": None}
    if commits.ref_target(repo, ROLLOUT_REF) is None:
        return empty, {"rollout": None}
    if fleet is None:  # the build reused a cached summary of main
        fleet = load_fleet(TreeSource(repo, main.tree), Problems())
    settings = fleet.settings.rollout
    try:
        record = local_record(repo, fleet.settings.publisher_trust())
    except GitopsError as err:
        return {**empty, "problem": str(err)}, {"rollout": None, "problem": str(err)}
    if record is None or settings is None:
        return empty, {"rollout": None}
    waves: tuple[WaveView, ...] = view(
        repo, record, fleet.hosts, settings, now=now, stale_after=fleet.settings.stale_after
    )
    context = {"record": record, "waves": waves, "problem": "", "rollout": settings}
    data = {"rollout": {**record.summary(), "waves": [w.to_json() for w in waves]}}
    return context, data
