"""Webhooks and forge commit statuses from the site build, against a real HTTP receiver on
loopback that checks each signature and payload."""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import override

from gitops.errors import GitopsError
from gitops.fleet.alerts import Secret, parse_alerts
from gitops.fleet.schema import Problems, Reader
from gitops.protocol import Result
from gitops.sitegen import build as site_build
from gitops.sitegen import notify
from testing.servers import LOOPBACK, serving
from testing.site_helpers import NOW, Fleet, standard_fleet

SECRET = "webhook-secret-of-the-test"
TOKEN = "forge-token-of-the-test"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class Receiver:
    url: str
    requests: list[Received] = field(default_factory=list)
    failing: bool = False

    def take(self) -> list[Received]:
        found, self.requests[:] = list(self.requests), []
        return found


@contextlib.contextmanager
def receiver() -> Iterator[Receiver]:
    state = Receiver("")

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers["Content-Length"]))
            if state.failing:
                self.send_response(503)
                self.end_headers()
                self.wfile.write(b"down for maintenance")
                return
            state.requests.append(Received(self.path, dict(self.headers.items()), body))
            self.send_response(201)
            self.end_headers()

        @override
        def log_message(self, format: str, *args: object) -> None:
            pass

    with serving(Handler) as port:
        state.url = f"http://{LOOPBACK}:{port}"
        yield state


def check_signature(request: Received) -> Any:
    """The receiver's side: HMAC-SHA256 of the raw body with the shared secret."""
    expected = "sha256=" + hmac.new(SECRET.encode(), request.body, hashlib.sha256).hexdigest()
    assert hmac.compare_digest(request.headers["X-Gitops-Signature"], expected)
    return request.json()


def with_alerts(fleet: Fleet, url: str, forge: str = "forgejo") -> str:
    fleet.alerts = {
        "webhooks": [{"url": f"{url}/hooks/gitops", "secret_env": "GITOPS_TEST_WEBHOOK_SECRET"}],
        "commit_status": {
            "forge": forge,
            "api": url if forge == "github" else f"{url}/api/v1",
            "repo": "infra/fleet",
            "token_env": "GITOPS_TEST_STATUS_TOKEN",
        },
        "site_url": "https://fleet.example.org",
    }
    return fleet.commit_main("Send alerts", NOW - timedelta(hours=1))


@pytest.fixture(autouse=True)
def secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GITOPS_TEST_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("GITOPS_TEST_STATUS_TOKEN", TOKEN)


def test_state_changes_reach_the_webhook_signed_and_commit_statuses_follow(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "site"
    with receiver() as hook:
        with_alerts(fleet, hook.url)
        site_build.build(fleet.path, out, now=NOW, workers=1)
        first = hook.take()
        # The first build is the baseline: no event, but every rollout gets its status.
        assert not [r for r in first if r.path == "/hooks/gitops"]
        statuses = {r.path.rsplit("/", 1)[1]: r for r in first}
        published = json.loads((out / "inventory.json").read_text())["hosts"]
        sources = {h["published_source"] for h in published if h["published_source"]}
        assert set(statuses) == sources
        for request in statuses.values():
            assert request.path.startswith("/api/v1/repos/infra/fleet/statuses/")
            assert request.headers["Authorization"] == f"token {TOKEN}"
        rollout = max(statuses.values(), key=lambda r: r.json()["description"])
        body = rollout.json()
        assert body["state"] == "failure"  # "failed" and others failed to apply it
        assert body["context"] == "gitops/fleet"
        assert body["target_url"] == "https://fleet.example.org/drift.html"
        assert "failed: failed, rejected, rolledback" in body["description"]

        fleet.report("pending", NOW + timedelta(minutes=30))  # now up to date
        site_build.build(fleet.path, out, now=NOW + timedelta(hours=1), workers=1)
        second = hook.take()
        (event,) = [check_signature(r) for r in second if r.path == "/hooks/gitops"]
        assert event["event"] == "hosts_changed"
        assert event["fleet"] == "test"
        assert [(c["host"], c["from"], c["to"]) for c in event["changes"]] == [
            ("pending", "pending", "up to date")
        ]
        assert event["changes"][0]["applied"] == fleet.deploy_head("pending")
        (status,) = [r for r in second if r.path != "/hooks/gitops"]
        applied = int(body["description"].split("/")[0])
        assert status.path == rollout.path
        assert status.json()["description"].startswith(f"{applied + 1}/12 hosts applied it")

        # The receiver is down: the build still succeeds, the event waits.
        hook.failing = True
        fleet.report("up", NOW + timedelta(hours=1, minutes=30), Result.SWITCH_FAILED)
        stats = site_build.build(fleet.path, out, now=NOW + timedelta(hours=2), workers=1)
        assert stats.alerts["failed"] >= 1 and stats.alerts["sent"] == 0
        saved = json.loads((out / notify.FILE).read_text())
        assert [item["kind"] for item in saved["outbox"]] == ["webhook", "status"]
        assert "HTTP 503" in caplog.text
        hook.failing = False
        stats = site_build.build(fleet.path, out, now=NOW + timedelta(hours=2), workers=1)
        assert stats.alerts == {"sent": 2, "failed": 0, "dropped": 0}
        (late,) = [check_signature(r) for r in hook.take() if r.path == "/hooks/gitops"]
        assert [(c["host"], c["to"]) for c in late["changes"]] == [("up", "failed")]
        assert json.loads((out / notify.FILE).read_text())["outbox"] == []
    # Secrets are read when sending, never kept or said.
    assert SECRET not in (out / notify.FILE).read_text() and TOKEN not in caplog.text
    assert SECRET not in caplog.text


def test_a_webhook_url_with_a_token_is_not_published_or_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Slack, Teams and Discord webhooks carry their token in the URL. alerts.json is
    published with the site, and the build's warnings reach CI logs: neither names it."""
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "site"
    token_path = "/services/T0001/B0002/XXXXtokenXXXX"
    with receiver() as hook:
        fleet.alerts = {"webhooks": [{"url": f"{hook.url}{token_path}?key=query-token"}]}
        fleet.commit_main("Send alerts", NOW - timedelta(hours=1))
        site_build.build(fleet.path, out, now=NOW, workers=1)
        hook.failing = True
        fleet.report("up", NOW + timedelta(minutes=30), Result.SWITCH_FAILED)
        stats = site_build.build(fleet.path, out, now=NOW + timedelta(hours=1), workers=1)
        assert stats.alerts["failed"] == 1
        published = (out / notify.FILE).read_text()
        assert json.loads(published)["outbox"][0]["kind"] == "webhook"
        assert "HTTP 503" in caplog.text and f"POST {hook.url}/…" in caplog.text
        hook.failing = False
        stats = site_build.build(fleet.path, out, now=NOW + timedelta(hours=1), workers=1)
        assert stats.alerts["sent"] == 1
        (request,) = hook.take()
        assert request.path == f"{token_path}?key=query-token"
    for text in (published, caplog.text, json.dumps(stats.alerts)):
        assert "XXXXtokenXXXX" not in text and "query-token" not in text


def test_github_statuses_and_no_alerts(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "site"
    with receiver() as hook:
        with_alerts(fleet, hook.url, forge="github")
        site_build.build(fleet.path, out, now=NOW, workers=1, send_alerts=False)
        assert hook.take() == []  # --no-alerts: queued, not sent
        assert len(json.loads((out / notify.FILE).read_text())["outbox"]) == 2
        site_build.build(fleet.path, out, now=NOW, workers=1)
        sent = hook.take()
    assert {r.path.rsplit("/", 1)[0] for r in sent} == {"/repos/infra/fleet/statuses"}
    for request in sent:
        assert request.headers["Authorization"] == f"Bearer {TOKEN}"
        assert request.headers["Accept"] == "application/vnd.github+json"
        assert request.json()["state"] in ("pending", "success", "failure")


def test_alerts_settings_are_checked() -> None:
    problems = Problems()
    data = {
        "webhooks": [{"url": "ftp://x", "secret_env": "A B"}],
        "commit_status": {"forge": "svn", "repo": "nope", "token_env": "T", "token_file": "/t"},
        "colour": "red",
    }
    parse_alerts(Reader(data, "fleet.yaml", problems))
    text = "\n".join(str(p) for p in problems.items)
    for expected in (
        "must be an http:// or https:// URL",
        "'A B' is not an environment variable name",
        "'svn' is not forgejo, gitea or github",
        "'nope' is not owner/name",
        "give token_env or token_file, not both",
        "colour",
    ):
        assert expected in text


def test_a_secret_file_that_is_not_text_is_one_line_naming_the_file(tmp_path: Path) -> None:
    binary = tmp_path / "webhook-secret"
    binary.write_bytes(b"\xff\xfe\x00hunter2")
    with pytest.raises(GitopsError, match="webhook-secret: not UTF-8 text") as caught:
        Secret(file=str(binary)).read()
    assert "\n" not in str(caught.value) and "hunter2" not in str(caught.value)
