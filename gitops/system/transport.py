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
from collections.abc import Mapping, Sequence
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
) -> subprocess.CompletedProcess[str]:
    return process.run(["git", *args], check=check, env=env, timeout=timeout)


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
) -> None:
    """Fetch only ``refspecs`` over protocol v2, no tags."""
    args: list[str | Path] = [
        "-c",
        "protocol.version=2",
        "--git-dir",
        git_dir,
        "fetch",
        "--quiet",
        "--no-tags",
        "--no-write-fetch-head",
        "--no-auto-gc",
    ]
    if depth is not None:
        args.append(f"--depth={depth}")
    result = _git([*args, remote, *refspecs], env=env, check=False)
    if result.returncode != 0:
        if "couldn't find remote ref" in result.stderr:
            raise RefNotFoundError(f"{remote} has no {', '.join(refspecs)}")
        raise GitopsError(f"fetch from {remote} failed: {_last_line(result.stderr, env)}")


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
