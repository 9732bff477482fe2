"""Freshness: with ``deploy.expires_after`` set, a scheduled ``gitops publish`` with no
change renews the expiry of the hosts whose head expires soon (a signed heartbeat commit:
same tree, new ``Expires``), and only theirs. A duration too large for a date is a clear
error. Through the real CLI."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pygit2

from gitops.demo import standin
from gitops.protocol import parse_time
from gitops.publish import plan as publishing
from gitops.trust import keys
from testing.helpers import git, git_out
from testing.publishing import HOSTS, served_fleet

DAY = timedelta(days=1)


def test_a_scheduled_publish_renews_only_heads_close_to_expiry(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path, extra_fleet={"deploy": {"expires_after": "3d"}})
    now = datetime.now(UTC)
    repo = pygit2.Repository(str(fleet.root))
    key = keys.load_signing_key(fleet.key_path)
    # Every host published two and a half days ago (expires in half a day), then the
    # servers again just now (expires in three days).
    plan = publishing.make_plan(repo, "main")
    publishing.write_commits(repo, plan, key, now=now - 2.5 * DAY)
    fleet.change("profiles/server.nix", standin.profile_file("server", ["nginx"]), "nginx")
    servers = publishing.make_plan(repo, "main", only=["web-1", "web-2"])
    publishing.write_commits(repo, servers, key, now=now)
    git("push", "-q", "origin", "refs/heads/deploy/*:refs/heads/deploy/*", cwd=fleet.root)
    before = {host: fleet.head(host) for host in HOSTS}

    done = fleet.publish("--push")
    assert done.returncode == 0, done.stderr
    assert "published 2 deploy commits" in done.stdout
    assert "admin-1 (renews expiry)" in done.stdout
    for host in ("admin-1", "dev-ws-1"):
        head = fleet.head(host)
        assert head is not None and head != before[host]
        assert git_out("rev-parse", f"{head}^", cwd=fleet.server) == before[host]
        same_tree = git("diff", "--quiet", before[host] or "", head, cwd=fleet.server, check=False)
        assert same_tree.returncode == 0, "a heartbeat keeps the tree"
        expires = parse_time(fleet.trailers(head)["Expires"])
        assert now + 2.9 * DAY < expires < now + 3.1 * DAY
        subject = git_out("log", "-1", "--format=%s", head, cwd=fleet.server)
        assert subject == f"deploy {host}: renew expiry"
    for host in ("web-1", "web-2"):
        assert fleet.head(host) == before[host], "fresh heads get nothing"

    again = fleet.publish("--push")
    assert again.returncode == 0, again.stderr
    assert "published 0 deploy commits" in again.stdout


def test_an_expiry_too_large_for_a_date_is_a_clear_error(tmp_path: Path) -> None:
    fleet = served_fleet(tmp_path, extra_fleet={"deploy": {"expires_after": "9999999999d"}})
    done = fleet.publish()
    assert done.returncode == 1
    # The fleet's own validation bounds durations (3650d) before anything is signed.
    lines = done.stderr.strip().splitlines()
    assert lines[0].startswith("gitops: error: the fleet at ") and "is invalid" in lines[0]
    assert lines[1].endswith(
        "fleet.yaml:6: deploy.expires_after: is longer than 3650d, the longest gitops accepts"
    )
    assert all(fleet.head(host, fleet.root) is None for host in HOSTS)
