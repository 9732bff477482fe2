"""Freshness: deploy commits that expire, and the heartbeat commits that renew them.

With ``deploy.expires_after`` set, every deploy commit carries an ``Expires`` trailer and
agents refuse it after that time, so a frozen server or a stopped publisher shows. A
scheduled ``gitops publish`` with nothing to change then writes, for each host whose head
expires within a third of ``expires_after``, a heartbeat commit: the same tree, a new
``Expires``. Hosts whose head is fresh get nothing.
"""

from __future__ import annotations

from datetime import datetime, timedelta

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import TRAILER_EXPIRES, parse_time
from gitops.trust import commits

RENEWAL_FRACTION = 3  # renew once less than expires_after / 3 is left


def _too_large(seconds: int) -> GitopsError:
    return GitopsError(
        f"deploy.expires_after in fleet.yaml ({seconds} seconds) is too large: the expiry "
        "would fall after the year 9999; use a duration such as 7d or 30d"
    )


def expiry(moment: datetime, expires_after: int) -> datetime:
    """When a deploy commit written at ``moment`` expires."""
    try:
        return moment + timedelta(seconds=expires_after)
    except OverflowError as err:
        raise _too_large(expires_after) from err


def renewal_window(expires_after: int) -> timedelta:
    try:
        return timedelta(seconds=expires_after / RENEWAL_FRACTION)
    except OverflowError as err:
        raise _too_large(expires_after) from err


def needs_renewal(head: pygit2.Commit, now: datetime, expires_after: int) -> bool:
    """Whether ``head`` expires (or has no readable expiry) within the renewal window."""
    value = commits.trailers(head.message).get(TRAILER_EXPIRES)
    if value is None:
        return True
    try:
        expires = parse_time(value)
    except ValueError:
        return True
    return expires - now <= renewal_window(expires_after)
