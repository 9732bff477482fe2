"""Talking to the git server, through the git CLI.

Objects are read and written with pygit2 everywhere else; only the network goes through
``git``, because libgit2 has no protocol v2: every libgit2 fetch downloads the whole ref
advertisement, so with two branches per host an idle poll would cost O(fleet) bytes.
``git -c protocol.version=2 fetch`` asks only for the ref it wants (bench/poll_cost.py
measures both). The CLI also gives us ``push --atomic`` and OpenSSH's own host-key
checking (``StrictHostKeyChecking=yes`` against a known_hosts we own), where pygit2
accepts any host key by default.
"""

from __future__ import annotations

import base64
import shlex
import subprocess
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from gitops.errors import GitopsError
from gitops.system import process

# Settings that make the git CLI ignore the user's and the system's configuration.
HERMETIC_ENV: Mapping[str, str] = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_CONFIG_GLOBAL": "/dev/null",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ASKPASS": "/bin/false",
    "SSH_ASKPASS": "/bin/false",
    "LC_ALL": "C",
}


@dataclass(frozen=True)
class Credentials:
    """How an agent authenticates to the git server. Never logged, never in argv."""

    ssh_key: Path | None = None
    known_hosts: Path | None = None
    http_token_file: Path | None = None
    http_username: str = "gitops"

    def env(self) -> dict[str, str]:
        env = dict(HERMETIC_ENV)
        ssh = ["ssh", "-F", "/dev/null", "-o", "BatchMode=yes", "-o", "ConnectTimeout=30"]
        if self.known_hosts is not None:
            ssh += [
                "-o",
                f"UserKnownHostsFile={self.known_hosts}",
                "-o",
                "StrictHostKeyChecking=yes",
                "-o",
                "GlobalKnownHostsFile=/dev/null",
            ]
        if self.ssh_key is not None:
            ssh += ["-o", "IdentitiesOnly=yes", "-i", str(self.ssh_key)]
        env["GIT_SSH_COMMAND"] = shlex.join(ssh)
        if self.http_token_file is not None:
            try:
                token = self.http_token_file.read_text(encoding="utf-8").strip()
            except OSError as err:
                raise GitopsError(
                    f"{self.http_token_file}: cannot read the http token ({err.strerror})"
                ) from err
            basic = base64.b64encode(f"{self.http_username}:{token}".encode()).decode()
            # Passed as configuration in the environment, not argv: argv is world-readable.
            env.update(
                {
                    "GIT_CONFIG_COUNT": "1",
                    "GIT_CONFIG_KEY_0": "http.extraHeader",
                    "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
                }
            )
        return env


def _git(
    args: Sequence[str | Path],
    *,
    env: Mapping[str, str] | None,
    check: bool = True,
    timeout: float | None = 600,
    input: str | None = None,
) -> subprocess.CompletedProcess[str]:
    return process.run(["git", *args], check=check, env=env, timeout=timeout, input=input)


class RefNotFoundError(GitopsError):
    """The remote has no such ref (e.g. nothing published for this host yet)."""


class TransientError(GitopsError):
    """The server could not take the connection just now (busy, restarting): try again
    after a pause. sshd drops connections beyond ``MaxStartups`` before the handshake."""


# What a busy or restarting server makes ssh, git or curl say.
_TRANSIENT = (
    "kex_exchange_identification",
    "ssh_exchange_identification",
    "Connection reset by",  # "... by peer", "... by 192.0.2.1 port 22"
    "Broken pipe",
    "Connection timed out",
    "Connection closed by",
    "returned error: 429",
    "returned error: 502",
    "returned error: 503",
    "returned error: 504",
    "the gitops server is busy",  # gitops server serve: every push slot is taken
)


def _is_transient(stderr: str) -> bool:
    return any(marker in stderr for marker in _TRANSIENT)


def fetch(
    git_dir: Path,
    remote: str,
    refspecs: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    depth: int | None = None,
    prune: bool = False,
    stdin: bool = False,
) -> None:
    """Fetch only ``refspecs`` over protocol v2, no tags; ``prune`` drops the local refs
    a wildcard refspec maps to that the remote no longer has; ``stdin`` passes the
    refspecs on standard input, for lists that grow with the fleet."""
    extra = [f"--depth={depth}"] if depth is not None else []
    if prune:
        extra.append("--prune")
    _fetch(git_dir, remote, refspecs, env=env, extra=extra, stdin=stdin)


# git takes --filter only for a named remote, which it records as the promisor of what the
# filter left out; the URL is set for this one command (in argv: URLs hold no secret).
_PROMISOR_REMOTE = "gitops"
_FILTER_IGNORED = "filtering not recognized by server"


def fetch_commits_only(
    git_dir: Path, remote: str, refspecs: Sequence[str], *, env: Mapping[str, str] | None = None
) -> bool:
    """Fetch ``refspecs`` without trees and blobs (``--filter=tree:0``); False when the
    server does not allow filters (``uploadpack.allowFilter``) and sent everything."""
    stderr = _fetch(
        git_dir,
        _PROMISOR_REMOTE,
        refspecs,
        env=env,
        extra=["--filter=tree:0"],
        config=[f"remote.{_PROMISOR_REMOTE}.url={remote}"],
        shown=remote,
    )
    return _FILTER_IGNORED not in stderr


def _fetch(
    git_dir: Path,
    remote: str,
    refspecs: Sequence[str],
    *,
    env: Mapping[str, str] | None,
    extra: Sequence[str] = (),
    config: Sequence[str] = (),
    shown: str | None = None,
    stdin: bool = False,
) -> str:
    settings = [part for item in ("protocol.version=2", *config) for part in ("-c", item)]
    args: list[str | Path] = [
        *settings,
        "--git-dir",
        git_dir,
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-auto-gc",
        *extra,
        *(["--stdin"] if stdin else []),
    ]
    listed = "".join(f"{refspec}\n" for refspec in refspecs) if stdin else None
    result = _git([*args, remote, *([] if stdin else refspecs)], env=env, check=False, input=listed)
    shown = shown or remote
    if result.returncode != 0:
        if "couldn't find remote ref" in result.stderr:
            raise RefNotFoundError(f"{shown} has no {', '.join(refspecs)}")
        raise GitopsError(f"fetch from {shown} failed: {_last_line(result.stderr, env)}")
    return result.stderr


def prune(git_dir: Path) -> None:
    """Delete the objects no ref reaches (refused downloads), packed ones too."""
    _git(["--git-dir", git_dir, "gc", "--quiet", "--prune=now"], env=HERMETIC_ENV)


def remote_head(remote: str, ref: str, *, env: Mapping[str, str] | None = None) -> str | None:
    """The commit ``ref`` points to on ``remote`` (protocol v2: asks for that ref only)."""
    result = _git(
        ["-c", "protocol.version=2", "ls-remote", "--refs", remote, ref], env=env, check=False
    )
    if result.returncode != 0:
        raise GitopsError(f"cannot reach {remote}: {_last_line(result.stderr, env)}")
    for line in result.stdout.splitlines():
        sha, _, name = line.partition("\t")
        if name == ref:
            return sha
    return None


@dataclass(frozen=True)
class RefStatus:
    ref: str
    flag: str  # git push --porcelain: ' ' ff, '+' forced, '*' new, '=' up to date, '!' rejected
    summary: str

    @property
    def ok(self) -> bool:
        return self.flag != "!"


@dataclass(frozen=True)
class PushResult:
    statuses: tuple[RefStatus, ...] = field(default_factory=tuple)
    message: str = ""

    @property
    def ok(self) -> bool:
        return bool(self.statuses) and all(s.ok for s in self.statuses)

    def refused(self) -> list[RefStatus]:
        return [s for s in self.statuses if not s.ok]


def _parse_push(
    result: subprocess.CompletedProcess[str], remote: str, env: Mapping[str, str] | None
) -> PushResult:
    statuses = []
    for line in result.stdout.splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and len(parts[0]) == 1:
            statuses.append(RefStatus(parts[1].split(":")[-1], parts[0], parts[2]))
    message = _last_line(result.stderr, env)
    if not statuses and result.returncode != 0:
        error = TransientError if _is_transient(result.stderr) else GitopsError
        raise error(f"push to {remote} failed: {message}")
    return PushResult(tuple(statuses), message)


def list_refs(
    git_dir: Path, remote: str, pattern: str, *, env: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Every ref on ``remote`` matching ``pattern`` (e.g. ``refs/heads/deploy/*``) and the
    commit it points to; protocol v2 asks the server for that prefix only."""
    result = _git(
        ["-c", "protocol.version=2", "--git-dir", git_dir, "ls-remote", "--refs", remote, pattern],
        env=env,
        check=False,
    )
    if result.returncode != 0:
        raise GitopsError(f"cannot reach {remote}: {_last_line(result.stderr, env)}")
    found = {}
    for line in result.stdout.splitlines():
        sha, _, name = line.partition("\t")
        found[name] = sha
    return found


def push_commits(
    git_dir: Path,
    remote: str,
    updates: Mapping[str, str],
    *,
    env: Mapping[str, str] | None = None,
    atomic: bool = False,
    outside: str | None = None,
) -> PushResult:
    """Push ``updates`` (full ref name -> commit id) with one refspec whatever their number.

    git matches every refspec against every ref, so one refspec per ref costs O(refs^2)
    (~100 s at 10,000 refs) and a command line that grows with them (~700 KB). Instead the
    refs are written, as one packed-refs file, into a :func:`scratch_repository` that
    borrows ``git_dir``'s objects, and pushed from there with ``refs/*:refs/*``: nothing is
    written in ``git_dir``. Never raises for a refusal, like :func:`push`.

    ``outside``: a commit that none of the pushed commits descends from (e.g. the main
    commit they were made from). The scratch repository is made shallow at it, which
    changes nothing about what is pushed, but makes git's pack-objects leave out every
    object reachable from the *server's* refs, not only from the pushed commits' parents:
    deploy trees share most of their objects with main, so a first publish sends 30,000
    objects instead of 70,000 at 10,000 hosts.
    """
    if not updates:
        return PushResult()
    url = remote_url(git_dir, remote, env=env)
    with scratch_repository(git_dir, updates, shallow=outside) as scratch:
        args: list[str | Path] = ["--git-dir", scratch, "push", "--porcelain", "--no-verify"]
        if atomic:
            args.append("--atomic")
        # The URL, not the remote's name: pushing to a named remote would also write a
        # remote-tracking ref per pushed ref in the scratch repository.
        result = _git([*args, url, "refs/*:refs/*"], env=env, check=False)
    return _parse_push(result, remote, env)


ZERO_OID = "0" * 40


def update_local_refs(
    git_dir: Path, updates: Mapping[str, tuple[str | None, str]], *, message: str
) -> None:
    """Move refs of ``git_dir`` in one transaction (``git update-ref --stdin``), each from
    its expected old value (None: must not exist yet) to the new one, or none of them.
    After a push of thousands of refs: libgit2's ref transaction costs ~7x more per ref."""
    if not updates:
        return
    lines = "".join(
        f"update {ref} {new} {old or ZERO_OID}\n" for ref, (old, new) in updates.items()
    )
    result = _git(
        ["--git-dir", git_dir, "update-ref", "-m", message, "--stdin"],
        env=dict(HERMETIC_ENV),
        check=False,
        input=lines,
    )
    if result.returncode != 0:
        raise GitopsError(f"cannot move refs in {git_dir}: {_last_line(result.stderr)}")


def remote_url(git_dir: Path, remote: str, *, env: Mapping[str, str] | None = None) -> str:
    """The push URL of the remote named ``remote`` in ``git_dir``, or ``remote`` itself."""
    for key in (f"remote.{remote}.pushurl", f"remote.{remote}.url"):
        found = _git(["--git-dir", git_dir, "config", "--get", key], env=env, check=False)
        if found.returncode == 0 and found.stdout.strip():
            return found.stdout.strip()
    return remote


def _common_dir(git_dir: Path) -> Path:
    """Where a repository's objects and configuration live (a linked work tree's git
    directory points there with a ``commondir`` file)."""
    resolved = git_dir.resolve()
    pointer = resolved / "commondir"
    if pointer.is_file():
        return (resolved / pointer.read_text(encoding="utf-8").strip()).resolve()
    return resolved


@contextmanager
def scratch_repository(
    borrow_from: Path, refs: Mapping[str, str] | None = None, *, shallow: str | None = None
) -> Iterator[Path]:
    """A throwaway bare repository that reads ``borrow_from``'s objects (alternates) and
    configuration (include: url.*.insteadOf, http.*, credentials), holding ``refs`` (full
    name -> commit id) in one packed-refs file, shallow at ``shallow``; removed on exit."""
    refs = refs or {}
    for ref in refs:
        if not ref.startswith("refs/") or any(c.isspace() for c in ref):
            raise ValueError(f"not a full ref name: {ref!r}")
    origin = _common_dir(borrow_from)
    with tempfile.TemporaryDirectory(prefix="gitops-scratch-") as tmp:
        path = Path(tmp) / "scratch.git"
        (path / "objects" / "info").mkdir(parents=True)
        (path / "refs").mkdir()
        (path / "HEAD").write_text("ref: refs/heads/main\n", encoding="utf-8")
        # bare = true after the include overrides the work tree setting it may carry.
        (path / "config").write_text(
            f"[include]\n\tpath = {origin / 'config'}\n[core]\n\tbare = true\n",
            encoding="utf-8",
        )
        (path / "objects" / "info" / "alternates").write_text(f"{origin / 'objects'}\n", "utf-8")
        lines = "".join(f"{refs[ref]} {ref}\n" for ref in sorted(refs, key=str.encode))
        (path / "packed-refs").write_text(
            "# pack-refs with: peeled fully-peeled sorted \n" + lines, encoding="utf-8"
        )
        if shallow is not None:
            (path / "shallow").write_text(f"{shallow}\n", encoding="utf-8")
        yield path


def push(
    git_dir: Path,
    remote: str,
    refspecs: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    atomic: bool = False,
) -> PushResult:
    """Push; never raises for a refusal: the result says what the server refused and why."""
    args: list[str | Path] = ["--git-dir", git_dir, "push", "--porcelain", "--no-verify"]
    if atomic:
        args.append("--atomic")
    result = _git([*args, remote, *refspecs], env=env, check=False)
    return _parse_push(result, remote, env)


# What ssh and git say when the cause is not git's own: shown instead of git's generic
# "Could not read from remote repository", which hides why.
_CAUSES = (
    (
        "kex_exchange_identification",
        "the git server closed the connection before the ssh handshake (busy: sshd MaxStartups)",
    ),
    (
        "REMOTE HOST IDENTIFICATION HAS CHANGED",
        "the server's ssh host key is not the one in known_hosts (refused)",
    ),
    (
        "Host key verification failed",
        "the server's ssh host key is not in known_hosts (refused); add it with ssh-keyscan",
    ),
    (
        "Permission denied (publickey",
        "the server refused our ssh key (Permission denied); authorize the key on the git server",
    ),
    ("Authentication failed", "the server refused the http credentials; check the token"),
    (
        "The requested URL returned error: 401",
        "the server refused the http credentials (401); check the token",
    ),
    (
        "The requested URL returned error: 403",
        "the server forbids this (403); check the account's access to the ref",
    ),
    ("Connection refused", "connection refused: is the git server running and the address right?"),
    ("Could not resolve host", "the git server's name does not resolve"),
)


def _last_line(text: str, env: Mapping[str, str] | None = None) -> str:
    if "could not read Username" in text or "returned error: 401" in text:
        sent_token = any(
            "authorization:" in v.lower()
            for k, v in (env or {}).items()
            if k.startswith("GIT_CONFIG_VALUE_")
        )
        return (
            "the server refused the token in http_token_file (HTTP 401); check or renew it"
            if sent_token
            else "the server asks for credentials; set http_token_file"
        )
    lines = [line.strip() for line in text.strip().splitlines() if line.strip()]
    # A gitops server says why it refused in a line of its own: that line, not git's.
    refusals = [line for line in lines if line.startswith(("gitops:", "remote: gitops:"))]
    if refusals:
        return refusals[0]
    for marker, cause in _CAUSES:
        if marker in text:
            return cause
    # git's closing words after ssh failed say nothing; ssh's own line before them does.
    specific = [line for line in lines if not line.startswith(_GIT_GENERIC)]
    useful = [line for line in specific if line.startswith(("fatal:", "error:", "remote:"))]
    return (useful or specific or lines or ["no output"])[-1]


_GIT_GENERIC = (
    "fatal: Could not read from remote repository",
    "Please make sure you have the correct access rights",
    "and the repository exists.",
)
