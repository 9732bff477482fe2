"""gitops.system.transport against real servers on loopback: OpenSSH's sshd and git's smart-HTTP
CGI (git-http-backend) behind Basic auth. See tests/servers.py for the servers.

What is checked: an agent's fetch of ``deploy/<host>`` and push of ``reports/<host>``
over both; host-key pinning (a different or missing key is refused before anything is
fetched or any credential offered); token auth (refused without or with a wrong token,
the token never in argv or debug logs); protocol v2 (a fetch receives only its own ref
out of thousands); and a whole agent cycle over ssh and over HTTP.
"""

from __future__ import annotations

import base64
import dataclasses
import logging
import os
import re
import subprocess
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import Any

import pygit2
import pytest
from typing_extensions import override

from gitops.agent.cycle import Cycle
from gitops.agent.mirror import INCOMING_REF, Mirror
from gitops.demo.scenario import DemoFleet, InventoryHost
from gitops.errors import GitopsError
from gitops.protocol import Result, deploy_ref, reports_ref
from gitops.report_commits import read_report_commit
from gitops.system import transport
from gitops.trust import keys
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.commits import create_signed_commit, signature_of, verify_commit
from gitops.trust.sshsig import PublicKey
from testing import servers
from testing.env import needs_nix

CI = bool(os.environ.get("CI"))
needs_sshd = pytest.mark.skipif(
    servers.find_sshd() is None and not CI, reason="sshd is not installed (CI installs it)"
)
needs_http_backend = pytest.mark.skipif(
    servers.find_http_backend() is None and not CI,
    reason="git-http-backend is not installed (CI installs git)",
)

TOKEN = "gt_0123456789abcdef-not-a-real-token"
HOSTS = ("web-1", "web-2", "db-1")
MANY_HOSTS = 2000  # 2,000 deploy/* + 2,000 reports/* branches
HOST_KEY_MISMATCH = re.compile(r"host key", re.IGNORECASE)
# A ref received by the client in a GIT_TRACE_PACKET trace: "packet:  fetch< <sha> <ref>".
_TRACED_REF = re.compile(r"packet:\s+\S+< ([0-9a-f]{40}) ((?:refs/|HEAD)[^\s\\\x00]*)")


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="session")
def served_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Every server repository lives here: sshd serves it by path, HTTP as its project root."""
    return tmp_path_factory.mktemp("served")


@pytest.fixture(scope="session")
def ssh_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[servers.SshServer]:
    if servers.find_sshd() is None and not CI:
        pytest.skip("sshd is not installed (CI installs it)")
    with servers.sshd(tmp_path_factory.mktemp("sshd")) as server:
        yield server


@pytest.fixture(scope="session")
def http_server(served_root: Path) -> Iterator[servers.HttpServer]:
    if servers.find_http_backend() is None and not CI:
        pytest.skip("git-http-backend is not installed (CI installs git)")
    with servers.git_http_server(served_root, token=TOKEN) as server:
        yield server


@pytest.fixture
def server_repo(served_root: Path, tmp_path: Path) -> Path:
    """A bare repository with deploy/ and reports/ branches for HOSTS."""
    repo = served_root / f"{tmp_path.name}.git"
    git("init", "-q", "--bare", "-b", "main", repo)
    servers.add_fleet_refs(repo, HOSTS)
    return repo


@pytest.fixture(scope="session")
def many_refs_repo(served_root: Path) -> Path:
    """A bare repository with 2,000 deploy/* and 2,000 reports/* branches."""
    repo = served_root / "many-refs.git"
    git("init", "-q", "--bare", "-b", "main", repo)
    servers.add_fleet_refs(repo, servers.host_names(MANY_HOSTS))
    return repo


@pytest.fixture
def ssh_client(ssh_server: servers.SshServer, tmp_path: Path) -> transport.Credentials:
    """An agent's credentials: its own authorized key and the server's real host key."""
    key = ssh_server.new_client_key(tmp_path / "id_ed25519", "agent@test")
    known_hosts = ssh_server.write_known_hosts(tmp_path / "known_hosts")
    return transport.Credentials(ssh_key=key, known_hosts=known_hosts)


@pytest.fixture
def token_file(tmp_path: Path) -> Path:
    path = tmp_path / "token"
    path.write_text(TOKEN + "\n", encoding="utf-8")
    path.chmod(0o600)
    return path


# -- helpers ---------------------------------------------------------------------------------


def git(*args: str | Path, cwd: Path | None = None) -> str:
    return subprocess.run(
        ["git", *map(str, args)], check=True, capture_output=True, text=True, cwd=cwd
    ).stdout.strip()


def rev(repo: Path, ref: str) -> str | None:
    result = subprocess.run(
        ["git", "--git-dir", str(repo), "rev-parse", "--verify", "-q", ref],
        check=False,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip() or None


def traced_refs(trace: Path) -> set[str]:
    """Names of the refs the client received, from a GIT_TRACE_PACKET file."""
    text = trace.read_text(encoding="utf-8", errors="replace")
    return {match.group(2) for match in _TRACED_REF.finditer(text)}


def has_object(mirror: Mirror, server_repo: Path, ref: str) -> bool:
    """Whether the mirror holds the commit ``ref`` points to on the server."""
    sha = rev(server_repo, ref)
    assert sha is not None, f"{ref} missing on the server"
    return sha in mirror.repo


def assert_nothing_fetched(mirror: Mirror, server_repo: Path, host: str) -> None:
    assert mirror.target(INCOMING_REF) is None
    assert not has_object(mirror, server_repo, deploy_ref(host)), "fetched although refused"


def basic_credential(token: str, user: str = "gitops") -> str:
    return base64.b64encode(f"{user}:{token}".encode()).decode()


def report_commit(repo: pygit2.Repository, host_key_path: Path, text: str) -> pygit2.Oid:
    blob = repo.create_blob(text.encode())
    builder = repo.TreeBuilder()
    builder.insert("status.json", blob, pygit2.enums.FileMode.BLOB)
    parent = repo.references.get(reports_ref("web-1"))
    parents = [parent.target] if parent is not None else []
    return create_signed_commit(
        repo,
        tree=builder.write(),
        parents=[p for p in parents if isinstance(p, pygit2.Oid)],
        message="report web-1: applied\n",
        author=signature_of("gitops-agent web-1", "web-1@gitops-agent.invalid"),
        key=keys.load_signing_key(host_key_path),
    )


# -- ssh -------------------------------------------------------------------------------------


@needs_sshd
def test_ssh_agent_fetch_of_its_deploy_branch(
    ssh_server: servers.SshServer,
    ssh_client: transport.Credentials,
    server_repo: Path,
    tmp_path: Path,
) -> None:
    mirror = Mirror(tmp_path / "agent", "web-2")
    url = ssh_server.url(server_repo)
    head = mirror.fetch_deploy(url, ssh_client.env())
    assert head is not None
    assert str(head) == rev(server_repo, deploy_ref("web-2"))
    assert isinstance(mirror.repo.get(head), pygit2.Commit)
    # Only the one branch came: not the other hosts' deploy or report commits.
    assert not has_object(mirror, server_repo, deploy_ref("web-1"))
    assert not has_object(mirror, server_repo, reports_ref("web-2"))
    assert transport.remote_head(url, deploy_ref("web-2"), env=ssh_client.env()) == str(head)
    # The server saw this agent log in with its own key.
    fingerprint = PublicKey.parse(
        (tmp_path / "id_ed25519.pub").read_text(encoding="utf-8")
    ).fingerprint
    assert f"Accepted publickey for {ssh_server.user}" in ssh_server.server_log()
    assert fingerprint in ssh_server.server_log()


@needs_sshd
def test_ssh_known_hosts_from_ssh_keyscan(
    ssh_server: servers.SshServer, server_repo: Path, tmp_path: Path
) -> None:
    """The documented way to fill known_hosts (agent config: "ssh-keyscan output") works,
    hashed (-H) too."""
    key = ssh_server.new_client_key(tmp_path / "id_ed25519", "agent@test")
    for hashed in ([], ["-H"]):
        scan = subprocess.run(
            ["ssh-keyscan", *hashed, "-p", str(ssh_server.port), servers.LOOPBACK],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
        assert ssh_server.host_public_key.split()[1] in scan
        known_hosts = tmp_path / f"known_hosts{''.join(hashed)}"
        known_hosts.write_text(scan, encoding="utf-8")
        credentials = transport.Credentials(ssh_key=key, known_hosts=known_hosts)
        mirror = Mirror(tmp_path / f"agent{''.join(hashed)}", "db-1")
        head = mirror.fetch_deploy(ssh_server.url(server_repo), credentials.env())
        assert head is not None and str(head) == rev(server_repo, deploy_ref("db-1"))


@needs_sshd
def test_ssh_fetch_of_an_unpublished_host_is_ref_not_found(
    ssh_server: servers.SshServer,
    ssh_client: transport.Credentials,
    server_repo: Path,
    tmp_path: Path,
) -> None:
    mirror = Mirror(tmp_path / "agent", "new-host")
    assert mirror.fetch_deploy(ssh_server.url(server_repo), ssh_client.env()) is None
    with pytest.raises(transport.RefNotFoundError):
        transport.fetch(
            mirror.path,
            ssh_server.url(server_repo),
            [f"+{deploy_ref('new-host')}:{INCOMING_REF}"],
            env=ssh_client.env(),
        )


def _refused_known_hosts(kind: str, server: servers.SshServer, path: Path) -> Path:
    """known_hosts listing another key for the server's address, or nothing at all."""
    if kind == "different-key":
        other = path.with_name("other_host_key")
        keys.new_keypair(other, "someone-else")
        public = " ".join(other.with_name("other_host_key.pub").read_text().split()[:2])
        return server.write_known_hosts(path, public)
    path.write_text("", encoding="utf-8")
    return path


@needs_sshd
@pytest.mark.parametrize("kind", ["different-key", "empty"])
def test_ssh_refuses_a_server_whose_host_key_is_not_pinned(
    kind: str,
    ssh_server: servers.SshServer,
    server_repo: Path,
    tmp_path: Path,
) -> None:
    key = ssh_server.new_client_key(tmp_path / "id_ed25519", "agent@test")
    known_hosts = _refused_known_hosts(kind, ssh_server, tmp_path / "known_hosts")
    credentials = transport.Credentials(ssh_key=key, known_hosts=known_hosts)
    mirror = Mirror(tmp_path / "agent", "web-1")
    url = ssh_server.url(server_repo)
    with pytest.raises(GitopsError) as caught:
        mirror.fetch_deploy(url, credentials.env())
    assert not isinstance(caught.value, transport.RefNotFoundError)
    assert url in str(caught.value)
    assert_nothing_fetched(mirror, server_repo, "web-1")
    with pytest.raises(GitopsError):
        transport.remote_head(url, deploy_ref("web-1"), env=credentials.env())
    # The client stopped before authenticating: an impostor never sees the agent's key.
    fingerprint = PublicKey.parse(
        (tmp_path / "id_ed25519.pub").read_text(encoding="utf-8")
    ).fingerprint
    assert fingerprint not in ssh_server.server_log()


@needs_sshd
@pytest.mark.parametrize("kind", ["different-key", "empty"])
def test_ssh_host_key_refusal_says_why(
    kind: str,
    ssh_server: servers.SshServer,
    server_repo: Path,
    tmp_path: Path,
) -> None:
    """The error must name the cause (ssh said "Host key verification failed"), not only
    git's generic "Could not read from remote repository"."""
    key = ssh_server.new_client_key(tmp_path / "id_ed25519", "agent@test")
    known_hosts = _refused_known_hosts(kind, ssh_server, tmp_path / "known_hosts")
    credentials = transport.Credentials(ssh_key=key, known_hosts=known_hosts)
    mirror = Mirror(tmp_path / "agent", "web-1")
    with pytest.raises(GitopsError) as caught:
        mirror.fetch_deploy(ssh_server.url(server_repo), credentials.env())
    assert HOST_KEY_MISMATCH.search(str(caught.value)), str(caught.value)


@needs_sshd
def test_ssh_unauthorized_client_key_refusal_says_why(
    ssh_server: servers.SshServer,
    server_repo: Path,
    tmp_path: Path,
) -> None:
    key = ssh_server.new_client_key(tmp_path / "id_ed25519", "stranger", authorize=False)
    known_hosts = ssh_server.write_known_hosts(tmp_path / "known_hosts")
    credentials = transport.Credentials(ssh_key=key, known_hosts=known_hosts)
    mirror = Mirror(tmp_path / "agent", "web-1")
    with pytest.raises(GitopsError) as caught:
        mirror.fetch_deploy(ssh_server.url(server_repo), credentials.env())
    assert_nothing_fetched(mirror, server_repo, "web-1")
    assert "Permission denied" in str(caught.value), str(caught.value)


@needs_sshd
def test_ssh_push_of_a_reports_branch(
    ssh_server: servers.SshServer,
    ssh_client: transport.Credentials,
    served_root: Path,
    tmp_path: Path,
) -> None:
    server = served_root / f"{tmp_path.name}.git"
    git("init", "-q", "--bare", "-b", "main", server)
    keys.new_keypair(tmp_path / "host_key", "root@web-1")
    mirror = Mirror(tmp_path / "agent", "web-1")
    first = report_commit(mirror.repo, tmp_path / "host_key", '{"n": 1}\n')
    mirror.set_ref(reports_ref("web-1"), first, "report")
    url = ssh_server.url(server)
    ref = reports_ref("web-1")

    result = transport.push(mirror.path, url, [f"{ref}:{ref}"], env=ssh_client.env())
    assert result.ok, result
    assert [(s.ref, s.flag) for s in result.statuses] == [(ref, "*")]
    assert rev(server, ref) == str(first)
    # The pushed commit is the signed one, byte for byte.
    pushed = pygit2.Repository(str(server))
    trust = AllowedSigners.parse(
        "web-1 " + (tmp_path / "host_key.pub").read_text(encoding="utf-8"), source="test"
    )
    assert verify_commit(pushed, str(first), trust).principal == "web-1"

    second = report_commit(mirror.repo, tmp_path / "host_key", '{"n": 2}\n')
    mirror.set_ref(ref, second, "report")
    result = transport.push(mirror.path, url, [f"{ref}:{ref}"], env=ssh_client.env())
    assert result.ok and [s.flag for s in result.statuses] == [" "]
    assert rev(server, ref) == str(second)

    # A push that is not a fast-forward is refused by the server, and said so, not raised.
    mirror.set_ref(ref, first, "rewind")
    result = transport.push(mirror.path, url, [f"{ref}:{ref}"], env=ssh_client.env())
    assert not result.ok
    assert [s.flag for s in result.refused()] == ["!"]
    assert rev(server, ref) == str(second)


# -- smart HTTP with a token -----------------------------------------------------------------


@needs_http_backend
def test_http_fetch_with_a_token(
    http_server: servers.HttpServer, server_repo: Path, token_file: Path, tmp_path: Path
) -> None:
    mirror = Mirror(tmp_path / "agent", "db-1")
    env = transport.Credentials(http_token_file=token_file).env()
    url = http_server.url(server_repo)
    head = mirror.fetch_deploy(url, env)
    assert head is not None and str(head) == rev(server_repo, deploy_ref("db-1"))
    assert transport.remote_head(url, deploy_ref("db-1"), env=env) == str(head)
    assert not has_object(mirror, server_repo, deploy_ref("web-1"))


@needs_http_backend
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_http_refuses_a_missing_or_wrong_token(
    token: str | None,
    http_server: servers.HttpServer,
    server_repo: Path,
    tmp_path: Path,
) -> None:
    credentials = transport.Credentials()
    if token is not None:
        (tmp_path / "token").write_text(token, encoding="utf-8")
        credentials = transport.Credentials(http_token_file=tmp_path / "token")
    mirror = Mirror(tmp_path / "agent", "db-1")
    url = http_server.url(server_repo)
    before = http_server.stats.unauthorized
    with pytest.raises(GitopsError) as caught:
        mirror.fetch_deploy(url, credentials.env())
    assert not isinstance(caught.value, transport.RefNotFoundError)
    assert url in str(caught.value)
    assert http_server.stats.unauthorized > before
    assert_nothing_fetched(mirror, server_repo, "db-1")
    with pytest.raises(GitopsError):
        transport.remote_head(url, deploy_ref("db-1"), env=credentials.env())
    # Pushing is refused too, and nothing moves on the server.
    ref = reports_ref("db-1")
    mirror.set_ref(ref, _any_commit(mirror), "test")
    old = rev(server_repo, ref)
    with pytest.raises(GitopsError):
        transport.push(mirror.path, url, [f"{ref}:{ref}"], env=credentials.env())
    assert rev(server_repo, ref) == old


def _any_commit(mirror: Mirror) -> pygit2.Oid:
    tree = mirror.repo.TreeBuilder().write()
    who = signature_of("t", "t@example.org")
    return mirror.repo.create_commit(None, who, who, "x\n", tree, [])


@needs_http_backend
@pytest.mark.parametrize("token", [None, "wrong-token"])
def test_http_auth_refusal_says_why(
    token: str | None,
    http_server: servers.HttpServer,
    server_repo: Path,
    tmp_path: Path,
) -> None:
    """The error must say what happened, not git's misleading "could not read Username ...:
    terminal prompts disabled": without a token, that the server wants one; with a wrong
    one, that the server refused it (not "set http_token_file": it is set)."""
    credentials = transport.Credentials()
    if token is not None:
        (tmp_path / "token").write_text(token, encoding="utf-8")
        credentials = transport.Credentials(http_token_file=tmp_path / "token")
    mirror = Mirror(tmp_path / "agent", "db-1")
    with pytest.raises(GitopsError) as caught:
        mirror.fetch_deploy(http_server.url(server_repo), credentials.env())
    message = str(caught.value)
    assert "terminal prompts disabled" not in message, message
    if token is None:
        assert re.search(r"http_token_file|credential|token", message, re.IGNORECASE), message
    else:
        assert re.search(r"refused|rejected|401|invalid", message, re.IGNORECASE), message
        assert "set http_token_file" not in message, message


@needs_http_backend
def test_http_token_is_not_in_argv(
    http_server: servers.HttpServer,
    server_repo: Path,
    token_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    calls: list[list[str]] = []

    class RecordingPopen(subprocess.Popen[bytes]):
        def __init__(self, args: Any, *rest: Any, **kwargs: Any) -> None:
            calls.append([str(a) for a in args])
            super().__init__(args, *rest, **kwargs)

    monkeypatch.setattr(subprocess, "Popen", RecordingPopen)
    env = transport.Credentials(http_token_file=token_file).env()
    mirror = Mirror(tmp_path / "agent", "web-1")
    url = http_server.url(server_repo)
    assert mirror.fetch_deploy(url, env) is not None
    transport.remote_head(url, deploy_ref("web-1"), env=env)
    mirror.set_ref(reports_ref("web-1"), _any_commit(mirror), "test")
    ref = reports_ref("web-1")
    assert transport.push(mirror.path, url, [f"+{ref}:{ref}"], env=env).ok
    git_calls = [c for c in calls if c[0] == "git"]
    assert len(git_calls) >= 3
    secrets = (TOKEN, basic_credential(TOKEN))
    for argv in calls:
        for secret in secrets:
            assert all(secret not in arg for arg in argv), argv


@needs_http_backend
def test_http_token_is_not_in_debug_logs(
    http_server: servers.HttpServer,
    server_repo: Path,
    token_file: Path,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Neither the token nor the Basic credential that encodes it (base64 of user:token,
    as good as the token) may reach a log, also at DEBUG level."""
    caplog.set_level(logging.DEBUG)
    env = transport.Credentials(http_token_file=token_file).env()
    mirror = Mirror(tmp_path / "agent", "web-1")
    url = http_server.url(server_repo)
    assert mirror.fetch_deploy(url, env) is not None
    transport.remote_head(url, deploy_ref("web-1"), env=env)
    assert "git" in caplog.text and "fetch" in caplog.text  # the calls were logged
    assert TOKEN not in caplog.text
    assert basic_credential(TOKEN) not in caplog.text, (
        "the debug log holds 'Authorization: Basic <base64 of gitops:token>'"
    )


@needs_http_backend
def test_http_token_is_not_sent_to_another_server_on_redirect(
    served_root: Path, server_repo: Path, token_file: Path, tmp_path: Path
) -> None:
    """A server that redirects elsewhere (another origin) must not receive the token: the
    Authorization header goes only to the configured server."""
    with servers.git_http_server(served_root, token=TOKEN) as elsewhere:

        class Redirect(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                self.send_response(302)
                self.send_header("Location", f"{elsewhere.base_url}{self.path}")
                self.send_header("Content-Length", "0")
                self.end_headers()

            @override
            def log_message(self, format: str, *args: object) -> None:
                pass

        with servers.serving(Redirect) as port:
            url = f"http://{servers.LOOPBACK}:{port}/{server_repo.name}"
            mirror = Mirror(tmp_path / "agent", "web-1")
            env = transport.Credentials(http_token_file=token_file).env()
            with pytest.raises(GitopsError):
                mirror.fetch_deploy(url, env)
        assert elsewhere.stats.requests, "git did not follow the redirect at all"
        assert elsewhere.stats.with_authorization == 0
        assert_nothing_fetched(mirror, server_repo, "web-1")


@needs_http_backend
def test_http_push_with_a_token(
    http_server: servers.HttpServer,
    served_root: Path,
    token_file: Path,
    tmp_path: Path,
) -> None:
    server = served_root / f"{tmp_path.name}.git"
    git("init", "-q", "--bare", "-b", "main", server)
    keys.new_keypair(tmp_path / "host_key", "root@web-1")
    mirror = Mirror(tmp_path / "agent", "web-1")
    commit = report_commit(mirror.repo, tmp_path / "host_key", '{"n": 1}\n')
    ref = reports_ref("web-1")
    mirror.set_ref(ref, commit, "report")
    env = transport.Credentials(http_token_file=token_file).env()
    result = transport.push(mirror.path, http_server.url(server), [f"{ref}:{ref}"], env=env)
    assert result.ok, result
    assert rev(server, ref) == str(commit)
    assert any(
        r.startswith("POST /") and "git-receive-pack" in r for r in http_server.stats.requests
    )


# -- protocol v2: a fetch costs the same whatever the fleet size -----------------------------


@needs_sshd
@needs_http_backend
@pytest.mark.parametrize("via", ["ssh", "http"])
def test_v2_fetch_receives_only_the_hosts_own_ref(
    via: str,
    ssh_server: servers.SshServer,
    http_server: servers.HttpServer,
    many_refs_repo: Path,
    token_file: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    host = servers.host_names(MANY_HOSTS)[1234]
    if via == "ssh":
        key = ssh_server.new_client_key(tmp_path / "id_ed25519", "agent@test")
        known_hosts = ssh_server.write_known_hosts(tmp_path / "known_hosts")
        env = transport.Credentials(ssh_key=key, known_hosts=known_hosts).env()
        url = ssh_server.url(many_refs_repo)
    else:
        env = transport.Credentials(http_token_file=token_file).env()
        url = http_server.url(many_refs_repo)
    trace = tmp_path / "trace"
    monkeypatch.setenv("GIT_TRACE_PACKET", str(trace))
    mirror = Mirror(tmp_path / "agent", host)
    head = mirror.fetch_deploy(url, env)
    assert head is not None and str(head) == rev(many_refs_repo, deploy_ref(host))
    assert "version 2" in trace.read_text(encoding="utf-8")
    assert traced_refs(trace) == {deploy_ref(host)}
    # An idle poll: nothing new, and still only the one ref.
    trace.unlink()
    assert mirror.fetch_deploy(url, env) == head
    assert traced_refs(trace) == {deploy_ref(host)}


@needs_sshd
def test_ssh_server_without_accept_env_git_protocol_sends_every_ref(
    many_refs_repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Documents a deployment requirement: git asks for v2 over ssh through the
    GIT_PROTOCOL environment variable, which sshd drops unless ``AcceptEnv GIT_PROTOCOL``;
    the server then answers v0 with all 4,000 refs, whatever the client asked."""
    with servers.sshd(tmp_path / "sshd", accept_git_protocol=False) as plain:
        key = plain.new_client_key(tmp_path / "id_ed25519", "agent@test")
        known_hosts = plain.write_known_hosts(tmp_path / "known_hosts")
        env = transport.Credentials(ssh_key=key, known_hosts=known_hosts).env()
        trace = tmp_path / "trace"
        monkeypatch.setenv("GIT_TRACE_PACKET", str(trace))
        mirror = Mirror(tmp_path / "agent", "host-0007")
        assert mirror.fetch_deploy(plain.url(many_refs_repo), env) is not None
    refs = traced_refs(trace)
    assert len(refs) >= 2 * MANY_HOSTS
    assert deploy_ref("host-1999") in refs and reports_ref("host-0000") in refs


@needs_http_backend
def test_v2_poll_bytes_do_not_grow_with_the_fleet_but_libgit2s_do(
    http_server: servers.HttpServer,
    served_root: Path,
    many_refs_repo: Path,
    token_file: Path,
    tmp_path: Path,
) -> None:
    """On the wire (a counting TCP proxy): the agent's fetch and idle poll cost the same
    bytes against 8 refs and against 4,000; pygit2's Remote.fetch of the same one ref
    receives the whole advertisement every time."""
    host = "host-0003"  # same commits (fixed dates) in both repositories
    small = served_root / f"{tmp_path.name}-small.git"
    git("init", "-q", "--bare", "-b", "main", small)
    servers.add_fleet_refs(small, servers.host_names(MANY_HOSTS)[:4])
    assert rev(small, deploy_ref(host)) == rev(many_refs_repo, deploy_ref(host))
    env = transport.Credentials(http_token_file=token_file).env()
    costs: dict[str, tuple[int, int]] = {}
    with servers.CountingProxy(http_server.port) as proxy:
        for name, repo in (("small", small), ("large", many_refs_repo)):
            url = f"http://{servers.LOOPBACK}:{proxy.port}/{repo.name}"
            mirror = Mirror(tmp_path / f"agent-{name}", host)
            proxy.reset()
            assert mirror.fetch_deploy(url, env) is not None
            first = proxy.from_server
            proxy.reset()
            assert mirror.fetch_deploy(url, env) is not None
            costs[name] = (first, proxy.from_server)
        large_url = f"http://{servers.LOOPBACK}:{proxy.port}/{many_refs_repo.name}"
        libgit2_repo = pygit2.init_repository(str(tmp_path / "pygit2.git"), bare=True)
        remote = libgit2_repo.remotes.create_anonymous(large_url)
        callbacks = pygit2.RemoteCallbacks(credentials=pygit2.UserPass("gitops", TOKEN))
        spec = f"+{deploy_ref(host)}:{INCOMING_REF}"
        remote.fetch([spec], callbacks=callbacks)
        proxy.reset()
        remote.fetch([spec], callbacks=callbacks)  # the idle poll
        libgit2_poll = proxy.from_server
        heads = remote.list_heads(callbacks=callbacks)
    small_first, small_poll = costs["small"]
    large_first, large_poll = costs["large"]
    # The first fetch carries a pack: its bytes may differ by a few (the server packs the
    # same objects a little differently from a packed or a loose repository), never by
    # anything like the 4,000 refs (~240 KB) the large repository holds.
    assert abs(large_first - small_first) < 256, costs
    assert large_poll == small_poll, costs
    assert large_poll < 2000, costs
    # libgit2: every ref, every poll (~60 bytes a ref).
    assert len(heads) == 2 * MANY_HOSTS
    assert libgit2_poll > 2 * MANY_HOSTS * 50, libgit2_poll
    assert libgit2_poll > 50 * large_poll


# -- a whole agent cycle over the network ----------------------------------------------------


@needs_nix
@needs_sshd
@needs_http_backend
@pytest.mark.slow
@pytest.mark.parametrize("via", ["ssh", "http"])
def test_agent_cycle_applies_and_reports_over_the_network(
    via: str,
    ssh_server: servers.SshServer,
    http_server: servers.HttpServer,
    served_root: Path,
    token_file: Path,
    tmp_path: Path,
) -> None:
    inventory = [
        InventoryHost("web-1", ("server",), {"profiles": ["server"], "owner": "ops"}),
        InventoryHost("laptop-1", ("workstation",), {"profiles": ["workstation"]}),
    ]
    demo = DemoFleet(served_root / f"{tmp_path.name}-demo", inventory, say=lambda _: None)
    demo.create()
    published = demo.publish()
    assert sorted(published.commits) == ["laptop-1", "web-1"]
    host = "web-1"
    config = demo.agent_config(host)
    if via == "ssh":
        key = ssh_server.new_client_key(tmp_path / "id_ed25519", f"root@{host}")
        config = dataclasses.replace(
            config,
            remote=ssh_server.url(demo.server),
            ssh_key=key,
            known_hosts=ssh_server.write_known_hosts(tmp_path / "known_hosts"),
        )
    else:
        config = dataclasses.replace(
            config, remote=http_server.url(demo.server), http_token_file=token_file
        )

    result = Cycle(config).run()

    assert result.result == Result.APPLIED, result.reason
    assert result.deploy_seen == str(published.commits[host])
    assert result.push is not None and result.push.pushed, result.push
    server = pygit2.Repository(str(demo.server))
    pushed = server.references[reports_ref(host)].target
    assert isinstance(pushed, pygit2.Oid)
    report = read_report_commit(server, pushed)
    assert report.status is not None and b'"result": "applied"' in report.status
    trust = AllowedSigners.of([(host, PublicKey.from_crypto(demo.host_keys[host].public_key()))])
    assert verify_commit(server, pushed, trust).principal == host
    # The next cycle has nothing to do and costs one small fetch.
    again = Cycle(config).run()
    assert again.result == Result.UNCHANGED, again.reason


# -- the publisher's side over ssh -----------------------------------------------------------


@needs_sshd
@pytest.mark.parametrize("remote", ["named-remote", "url"])
def test_publish_cli_pushes_deploy_branches_over_ssh(
    remote: str,
    ssh_server: servers.SshServer,
    served_root: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``gitops publish --push`` over ssh: fetches deploy/*, checks the remote heads, pushes
    atomically. ``--remote`` may name a remote or, as for ``git push``, be its URL."""
    from gitops import cli

    inventory = [
        InventoryHost("web-1", ("server",), {"profiles": ["server"]}),
        InventoryHost("web-2", ("server",), {"profiles": ["server"]}),
    ]
    demo = DemoFleet(served_root / f"{tmp_path.name}-demo", inventory, say=lambda _: None)
    demo.create()
    key = ssh_server.new_client_key(tmp_path / "id_publisher", "publisher")
    known_hosts = ssh_server.write_known_hosts(tmp_path / "known_hosts")
    ssh_env = transport.Credentials(ssh_key=key, known_hosts=known_hosts).env()
    monkeypatch.setenv("GIT_SSH_COMMAND", ssh_env["GIT_SSH_COMMAND"])
    url = ssh_server.url(demo.server)
    git("remote", "set-url", "origin", url, cwd=demo.repo_dir)
    argv = ["publish", "--repo", str(demo.repo_dir), "--key", str(demo.publisher_key_path)]
    argv += ["--push", "--remote", "origin" if remote == "named-remote" else url]

    assert cli.execute(argv) == 0

    for host in ("web-1", "web-2"):
        local = rev(demo.repo_dir / ".git", deploy_ref(host))
        assert local is not None and rev(demo.server, deploy_ref(host)) == local
    # Publishing again with nothing new fetches, verifies and pushes nothing.
    assert cli.execute(argv) == 0
