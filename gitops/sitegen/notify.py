"""Webhooks and forge commit statuses, from what changed since the previous site build.

Each build compares every host's state and published deploy commit with those the previous
build saved (``alerts.json`` in the site directory) and, when ``alerts:`` in fleet.yaml asks
for it:

* POSTs one JSON event listing the changes to each webhook, signed with HMAC-SHA256 of
  the body (``X-Gitops-Signature: sha256=<hex>``, as GitHub signs its webhooks);
* sets a commit status on each main commit that hosts are published from: ``pending``
  while some have not applied it, ``failure`` when one failed, ``success`` when all run
  it (Forgejo and Gitea: ``POST {api}/repos/{repo}/statuses/{sha}``; GitHub the same path).

A delivery that fails is kept in ``alerts.json``'s outbox and tried again by the next
build (at most MAX_ATTEMPTS times); it never fails the build. Secrets are read when
sending and never written or logged. The first build (no previous state) sends no event:
it is the baseline. docs/alerts.md describes the payloads.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import logging
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from gitops.errors import GitopsError
from gitops.fleet.alerts import AlertSettings, CommitStatus, Forge, Webhook
from gitops.protocol import format_time, parse_json
from gitops.sitegen.derived import Derived
from gitops.sitegen.model import HostStatus, State
from gitops.system import http

log = logging.getLogger(__name__)

FILE = "alerts.json"
SCHEMA = 1
MAX_ATTEMPTS = 20  # a delivery tried this many builds in a row is dropped (and said so)
MAX_OUTBOX = 500  # deliveries kept waiting at most (the oldest go first)
MAX_DESCRIPTION = 140  # GitHub's limit on a status description
SIGNATURE_HEADER = "X-Gitops-Signature"
_FAILED = frozenset({State.FAILED, State.ROLLED_BACK, State.REJECTED})


@dataclass(frozen=True)
class HostMark:
    """What the next build compares a host with."""

    state: str
    published: str | None
    applied: str | None

    @classmethod
    def of(cls, status: HostStatus) -> HostMark:
        return cls(str(status.state), status.published, status.applied)


@dataclass
class Saved:
    """``alerts.json``: the state the last build saw, and the deliveries still owed."""

    hosts: dict[str, HostMark] = field(default_factory=dict)
    statuses: dict[str, tuple[str, str]] = field(default_factory=dict)  # sha -> (state, text)
    outbox: list[dict[str, Any]] = field(default_factory=list)
    baseline: bool = False  # True: there was no previous build to compare with

    @classmethod
    def load(cls, path: Path) -> Saved:
        try:
            data = parse_json(path.read_bytes())
            hosts = {n: HostMark(**m) for n, m in data["hosts"].items()}
            statuses = {sha: (s[0], s[1]) for sha, s in data["statuses"].items()}
            return cls(hosts, statuses, list(data["outbox"]))
        except FileNotFoundError:
            return cls(baseline=True)
        except (OSError, ValueError, KeyError, TypeError, IndexError) as err:
            log.warning("%s: unreadable (%s); starting from this build", path, err)
            return cls(baseline=True)

    def to_json(self) -> str:
        data = {
            "schema": SCHEMA,
            "hosts": {n: vars(m) for n, m in sorted(self.hosts.items())},
            "statuses": {sha: list(s) for sha, s in sorted(self.statuses.items())},
            "outbox": self.outbox,
        }
        # Compact: json's C encoder (indent= falls back to the Python one, 6x slower at
        # 10,000 hosts, and this is written on every build).
        return json.dumps(data, sort_keys=True, separators=(",", ":")) + "\n"


# -- what changed ---------------------------------------------------------------------------


def host_changes(
    before: Mapping[str, HostMark], statuses: Mapping[str, HostStatus]
) -> list[dict[str, Any]]:
    """Each host whose state or published deploy commit changed, added or removed."""
    changes = []
    for name in sorted(set(before) | set(statuses)):
        old, status = before.get(name), statuses.get(name)
        new = HostMark.of(status) if status is not None else None
        if old == new or (old is not None and new is not None and _same(old, new)):
            continue
        change: dict[str, Any] = {
            "host": name,
            "from": old.state if old is not None else None,
            "to": new.state if new is not None else None,
            "published_before": old.published if old is not None else None,
        }
        if status is not None:
            change.update(
                reason=status.reason,
                published=status.published,
                applied=status.applied,
                published_source=status.published_source,
                applied_source=status.applied_source,
            )
        changes.append(change)
    return changes


def _same(old: HostMark, new: HostMark) -> bool:
    """Only a state or a new publish is an event (applied moves with the state)."""
    return old.state == new.state and old.published == new.published


def commit_statuses(statuses: Mapping[str, HostStatus]) -> dict[str, tuple[str, str]]:
    """Each main commit hosts are published from: (pending|success|failure, description)."""
    by_source: dict[str, list[HostStatus]] = {}
    for status in statuses.values():
        if status.published_source:
            by_source.setdefault(status.published_source, []).append(status)
    found = {}
    for sha, hosts in by_source.items():
        done = [h for h in hosts if h.state is State.UP_TO_DATE]
        failed = sorted(h.name for h in hosts if h.state in _FAILED)
        text = f"{len(done)}/{len(hosts)} hosts applied it"
        if failed:
            state, text = "failure", f"{text}; failed: {', '.join(failed)}"
        elif len(done) == len(hosts):
            state = "success"
        else:
            state = "pending"
        if len(text) > MAX_DESCRIPTION:
            text = text[: MAX_DESCRIPTION - 1] + "…"
        found[sha] = (state, text)
    return found


# -- deliveries ------------------------------------------------------------------------------


def _event(
    settings: AlertSettings, fleet: str, now: datetime, main: str, changes: list[Any]
) -> Any:
    return {
        "schema": SCHEMA,
        "event": "hosts_changed",
        "id": str(uuid.uuid4()),
        "fleet": fleet,
        "time": format_time(now),
        "main": main,
        "site": settings.site_url or None,
        "changes": changes,
    }


def _status_url(status: CommitStatus, sha: str) -> str:
    return f"{status.api}/repos/{status.repo}/statuses/{sha}"


def _status_body(status: CommitStatus, settings: AlertSettings, state: str, text: str) -> Any:
    body: dict[str, Any] = {"state": state, "description": text, "context": status.context}
    if settings.site_url:
        body["target_url"] = f"{settings.site_url}/drift.html"
    return body


def plan(
    saved: Saved,
    settings: AlertSettings,
    statuses: Mapping[str, HostStatus],
    *,
    fleet: str,
    main: str,
    now: datetime,
) -> Saved:
    """The state to save after this build, with the new deliveries queued behind the old."""
    outbox = list(saved.outbox)
    changes = [] if saved.baseline else host_changes(saved.hosts, statuses)
    if changes:
        event = _event(settings, fleet, now, main, changes)
        outbox += [
            {"kind": "webhook", "hook": hook_id(hook), "body": event, "attempts": 0}
            for hook in settings.webhooks
        ]
    current = commit_statuses(statuses)
    forge = settings.commit_status
    if forge is not None:
        for sha, (state, text) in sorted(current.items()):
            if saved.statuses.get(sha) != (state, text):
                body = _status_body(forge, settings, state, text)
                outbox.append(
                    {"kind": "status", "url": _status_url(forge, sha), "body": body, "attempts": 0}
                )
    hosts = {name: HostMark.of(status) for name, status in statuses.items()}
    if len(outbox) > MAX_OUTBOX:
        log.warning("alerts: %d deliveries waiting; the oldest are dropped", len(outbox))
        outbox = outbox[-MAX_OUTBOX:]
    return Saved(hosts, current, outbox)


def signature(secret: str, body: bytes) -> str:
    """``sha256=<hex>`` of HMAC-SHA256(secret, body): what X-Gitops-Signature carries."""
    return "sha256=" + hmac.new(secret.encode(), body, hashlib.sha256).hexdigest()


def hook_id(hook: Webhook) -> str:
    """What the outbox (in the published site) names a webhook by: never its URL, which
    may carry a token (Slack, Teams and Discord put one in the path)."""
    return hashlib.sha256(hook.url.encode()).hexdigest()[:16]


def _webhook(item: Mapping[str, Any], settings: AlertSettings) -> Webhook:
    for hook in settings.webhooks:
        if hook_id(hook) == item.get("hook") or hook.url == item.get(
            "url"
        ):  # url: outboxes saved before hook ids
            return hook
    raise _DroppedError("its webhook is no longer in fleet.yaml's alerts.webhooks")


def _target(item: Mapping[str, Any], settings: AlertSettings) -> str:
    if item["kind"] == "webhook":
        return _webhook(item, settings).url
    return str(item["url"])


def _headers(item: Mapping[str, Any], body: bytes, settings: AlertSettings) -> dict[str, str]:
    if item["kind"] == "webhook":
        hook = _webhook(item, settings)
        headers = {"X-Gitops-Event": str(item["body"]["event"]), "X-Gitops-Delivery": item_id(item)}
        if hook.secret is not None:
            headers[SIGNATURE_HEADER] = signature(hook.secret.read(), body)
        return headers
    forge = settings.commit_status
    if forge is None:
        raise _DroppedError("alerts.commit_status is gone from fleet.yaml")
    token = forge.token.read()
    if forge.forge is Forge.GITHUB:
        return {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": "2022-11-28",
        }
    return {"Authorization": f"token {token}", "Accept": "application/json"}


def item_id(item: Mapping[str, Any]) -> str:
    body = item["body"]
    return str(body.get("id") or hashlib.sha256(json.dumps(body).encode()).hexdigest()[:32])


class _DroppedError(Exception):
    """A queued delivery whose destination is no longer configured."""


@dataclass
class Delivered:
    sent: int = 0
    failed: int = 0
    dropped: int = 0
    errors: list[str] = field(default_factory=list)


def deliver(saved: Saved, settings: AlertSettings, *, timeout: float = http.TIMEOUT) -> Delivered:
    """Send what the outbox holds, oldest first; what fails stays in it for the next build.
    After the first failure to reach a URL, the rest for that URL wait too (order kept)."""
    result = Delivered()
    kept: list[dict[str, Any]] = []
    unreachable: set[str] = set()
    for item in saved.outbox:
        try:
            url = _target(item, settings)
        except _DroppedError as why:
            log.warning("alerts: dropped a %s delivery: %s", item.get("kind"), why)
            result.dropped += 1
            continue
        if url in unreachable:
            kept.append(item)
            continue
        body = json.dumps(item["body"], sort_keys=True, separators=(",", ":")).encode()
        try:
            headers = _headers(item, body, settings)
            http.post_json(url, body, headers, timeout=timeout)
            result.sent += 1
        except _DroppedError as why:
            log.warning("alerts: dropped a delivery to %s: %s", http.public(url), why)
            result.dropped += 1
        except GitopsError as err:
            attempts = int(item.get("attempts", 0)) + 1
            result.errors.append(str(err))
            if attempts >= MAX_ATTEMPTS:
                log.warning(
                    "alerts: gave up on %s after %d builds: %s", http.public(url), attempts, err
                )
                result.dropped += 1
                continue
            log.warning("alerts: %s (tried again by the next build)", err)
            result.failed += 1
            unreachable.add(url)
            kept.append({**item, "attempts": attempts})
    saved.outbox = kept
    return result


def run(
    out: Path,
    tmp: Path,
    settings: AlertSettings,
    derived: Mapping[str, Derived],
    *,
    fleet: str,
    main: str,
    now: datetime,
    send: bool = True,
) -> Delivered:
    """Compare with the previous build (``out``), deliver, save into the new site (``tmp``)."""
    saved = Saved.load(out / FILE)
    statuses = {name: d.status for name, d in derived.items()}
    after = plan(saved, settings, statuses, fleet=fleet, main=main, now=now)
    result = Delivered()
    if send and after.outbox:
        result = deliver(after, settings)
    (tmp / FILE).write_text(after.to_json(), encoding="utf-8")
    return result
