"""Never build on a rewound or foreign deploy branch: before a host's new commit goes on
top of the server's ``deploy/<host>``, every commit since the last one this publisher
knows (or the host last reported applying) is a publisher's, addressed to that host, and
a fast-forward from it. A bad branch refuses its own host only. Through the real CLI."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.demo import standin
from gitops.protocol import deploy_ref
from gitops.trust import commits
from testing.helpers import git, git_out
from testing.publishing import HOSTS, ServedFleet, served_fleet


@pytest.fixture
def fleet(tmp_path: Path) -> ServedFleet:
    served = served_fleet(tmp_path)
    assert served.publish("--push").returncode == 0
    return served


def _change_servers(fleet: ServedFleet, packages: list[str]) -> str:
    """A change to profiles/server.nix: web-1 and web-2 get a commit."""
    return fleet.change(
        "profiles/server.nix",
        standin.profile_file("server", packages),
        f"server: {' '.join(packages)}",
    )


def _signed_on_server(fleet: ServedFleet, host: str, *, addressed_to: str, parent: str) -> str:
    """A commit signed with the publisher key, written into the server by hand."""
    repo = pygit2.Repository(str(fleet.server))
    parent_commit = repo.get(parent)
    assert isinstance(parent_commit, pygit2.Commit)
    source = git_out("rev-parse", "main", cwd=fleet.server)
    message = commits.format_message(
        f"deploy {host}: by hand",
        "",
        {"Source-Commit": source, "Source-Generation": "1", "Gitops-Host": addressed_to},
    )
    oid = commits.create_signed_commit(
        repo,
        tree=parent_commit.tree_id,
        parents=[parent_commit.id],
        message=message,
        author=commits.signature_of("mallory", "mallory@example.org", datetime.now(UTC)),
        key=fleet.publisher,
    )
    return str(oid)


def test_a_rewound_branch_is_refused_alone_and_the_other_hosts_are_published(
    fleet: ServedFleet,
) -> None:
    _change_servers(fleet, ["nginx"])
    assert fleet.publish("--push").returncode == 0
    first = git_out("rev-list", "--max-parents=0", deploy_ref("web-1"), cwd=fleet.server)
    fleet.force("web-1", first)
    newest = _change_servers(fleet, ["nginx", "acme"])
    done = fleet.publish("--push")
    assert done.returncode == 1
    assert "1 host not published (web-1)" in done.stderr
    assert "deploy/web-1 on origin was rewound or rewritten: its head" in done.stderr
    assert "run 'gitops publish --recover --host web-1'" in done.stderr
    assert fleet.head("web-1") == first, "nothing was built on the rewound branch"
    web_2 = fleet.head("web-2")
    assert web_2 is not None and fleet.trailers(web_2)["Source-Commit"] == newest


def test_an_unsigned_head_refuses_only_its_host_even_with_host(fleet: ServedFleet) -> None:
    head = fleet.head("web-2")
    assert head is not None
    unsigned = git_out(
        "commit-tree", f"{head}^{{tree}}", "-p", head, "-m", "sneaky", cwd=fleet.server
    )
    fleet.force("web-2", unsigned)
    newest = fleet.change_every_host("everyone")
    only_web_1 = fleet.publish("--push", "--host", "web-1")
    assert only_web_1.returncode == 0, only_web_1.stderr
    everyone = fleet.publish("--push")
    assert everyone.returncode == 1
    assert "1 host not published (web-2)" in everyone.stderr
    assert "deploy/web-2 on origin: its head is not signed by a publisher" in everyone.stderr
    assert fleet.head("web-2") == unsigned
    for host in ("web-1", "dev-ws-1", "admin-1"):
        assert fleet.trailers(fleet.head(host) or "")["Source-Commit"] == newest, host


def test_an_unsigned_commit_in_the_middle_is_refused(fleet: ServedFleet) -> None:
    head = fleet.head("web-1")
    assert head is not None
    unsigned = git_out(
        "commit-tree", f"{head}^{{tree}}", "-p", head, "-m", "sneaky", cwd=fleet.server
    )
    on_top = _signed_on_server(fleet, "web-1", addressed_to="web-1", parent=unsigned)
    fleet.force("web-1", on_top)
    _change_servers(fleet, ["nginx"])
    done = fleet.publish("--push")
    assert done.returncode == 1
    assert (
        f"deploy/web-1 on origin: commit {unsigned[:8]} below its head is not signed by a "
        "publisher in fleet.yaml (not signed)"
    ) in done.stderr
    assert fleet.head("web-1") == on_top


def test_a_commit_addressed_to_another_host_is_refused(fleet: ServedFleet) -> None:
    head = fleet.head("web-1")
    assert head is not None
    foreign = _signed_on_server(fleet, "web-1", addressed_to="web-2", parent=head)
    fleet.force("web-1", foreign)
    _change_servers(fleet, ["nginx"])
    done = fleet.publish("--push")
    assert done.returncode == 1
    assert "deploy/web-1 on origin: its head is addressed to web-2, not web-1" in done.stderr
    assert fleet.head("web-1") == foreign


def test_a_fresh_clone_does_not_build_below_what_the_host_reported_applying(
    fleet: ServedFleet, tmp_path: Path
) -> None:
    first = fleet.head("web-1")
    assert first is not None
    _change_servers(fleet, ["nginx"])
    assert fleet.publish("--push").returncode == 0
    applied = fleet.head("web-1")
    assert applied is not None
    fleet.report_applied("web-1", applied)
    fleet.force("web-1", first)  # the server lost the newer commit
    git("gc", "-q", "--prune=now", cwd=fleet.server)
    newest = _change_servers(fleet, ["nginx", "acme"])
    ci = fleet.clone(tmp_path / "ci")
    done = fleet.publish("--push", repo=ci)
    assert done.returncode == 1
    assert (
        f"its head {first[:8]} does not contain {applied[:8]}, the commit web-1 last reported "
        "applying"
    ) in done.stderr
    assert fleet.head("web-1") == first
    assert fleet.trailers(fleet.head("web-2") or "")["Source-Commit"] == newest


def test_a_report_the_host_did_not_sign_is_no_evidence(fleet: ServedFleet, tmp_path: Path) -> None:
    first = fleet.head("web-1")
    assert first is not None
    fleet.report_applied("web-1", first, key=ed25519.Ed25519PrivateKey.generate())
    _change_servers(fleet, ["nginx"])
    done = fleet.publish("--push", repo=fleet.clone(tmp_path / "ci"))
    assert done.returncode == 0, done.stderr
    assert "ignored, not signed by web-1's key" in done.stderr
    assert {h: fleet.head(h) is not None for h in HOSTS} == dict.fromkeys(HOSTS, True)
