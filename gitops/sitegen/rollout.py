"""The rollout page: each wave of the staged rollout on ``rollout`` and how far its hosts
are, judged by the code ``gitops publish`` and ``gitops rollout status`` use
(:func:`gitops.fleet.rollout_record.view`), so the three agree. A record that does not
verify is shown as such, never trusted, and never breaks the rest of the site."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.model import FleetSettings, Host
from gitops.fleet.rollout_record import WaveView, local_record, view
from gitops.protocol import ROLLOUT_REF
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners


def rollout_page(
    repo: pygit2.Repository,
    settings: FleetSettings,
    publishers: AllowedSigners,
    hosts: Callable[[], Mapping[str, Host]],
    now: datetime,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The page's template context and its JSON data. ``settings`` and ``publishers`` are
    main's as the build read them; ``hosts`` gives main's hosts (the build's cached fleet),
    asked for only when there is a rollout to show."""
    empty: dict[str, Any] = {"record": None, "waves": (), "problem": "", "rollout": None}
    if commits.ref_target(repo, ROLLOUT_REF) is None:
        return empty, {"rollout": None}
    rollout = settings.rollout
    try:
        record = local_record(repo, publishers)
    except GitopsError as err:
        return {**empty, "problem": str(err)}, {"rollout": None, "problem": str(err)}
    if record is None or rollout is None:
        return empty, {"rollout": None}
    waves: tuple[WaveView, ...] = view(
        repo, record, hosts(), rollout, now=now, stale_after=settings.stale_after
    )
    context = {"record": record, "waves": waves, "problem": "", "rollout": rollout}
    data = {"rollout": {**record.summary(), "waves": [w.to_json() for w in waves]}}
    return context, data
