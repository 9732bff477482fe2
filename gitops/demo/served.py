"""The demo fleet behind the gitops server (docs/server.md), as an admin would run it.

The fleet repository the admins push to stands in for the forge where pull requests
merge; the gitops server mirrors main from it (``main: mirror``), and everything else
goes through the server: the publisher pushes ``deploy/*`` to ``fleet.git`` with its
key, each agent fetches and reports through ``hosts/<host>.git`` with its host's key,
and the site is built from the server's ``fleet.git``.

There is no sshd in the demo (it would need root or a free port and a host key): a
stand-in ``ssh`` on the demo's PATH does what sshd does with the server's generated
``authorized_keys``. It finds the line for the key the client offers, and runs that
line's forced command (``gitops server serve --as ROLE:NAME``) with the client's request
in ``SSH_ORIGINAL_COMMAND`` and an environment as bare as sshd's. A key not in the file
is refused. What the server then allows or refuses is the real server's doing:
tests/test_server.py runs the same checks behind a real sshd.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shlex
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

from typing_extensions import override

from gitops.agent.config import AgentConfig
from gitops.agent.cycle import CycleResult
from gitops.demo.scenario import DemoFleet, git
from gitops.errors import GitopsError
from gitops.protocol import MAIN_REF, deploy_ref
from gitops.server import sync
from gitops.server.config import MainPolicy, ServerConfig
from gitops.server.layout import Layout
from gitops.system import atomic, process, transport

SERVER_NAME = "git@gitops-server"  # the server's name in URLs; the stand-in ignores it

# A stand-in for ``ssh`` + sshd with the generated authorized_keys (see the module's
# docstring). git calls it as ``ssh [OPTIONS] HOST COMMAND``, and first as ``ssh -G ...``
# to learn that it speaks OpenSSH's options.
STANDIN_SSH = """\
#!/bin/sh
# gitops demo: a stand-in for ssh and sshd on one machine (gitops/demo/served.py).
# It runs the forced command of the key's line in {authorized_keys}, as sshd would.
key=
while [ $# -gt 0 ]; do
  case "$1" in
    -G) exit 0 ;;
    -i) key=$2; shift 2 ;;
    -[bcDEeFIiJLlmOopQRSWw]) shift 2 ;;
    -*) shift ;;
    *) break ;;
  esac
done
line=
if [ -n "$key" ] && [ -f "$key.pub" ]; then
  blob=$(cut -d' ' -f2 "$key.pub")
  line=$(grep -F " $blob " {authorized_keys} | head -n 1)
fi
if [ -z "$line" ]; then
  echo "$1: Permission denied (publickey)." >&2
  exit 255
fi
command=${{line#command=\\"}}
command=${{command%%\\",restrict *}}
exec env -i PATH="$PATH" HOME="$HOME" ${{GIT_PROTOCOL:+GIT_PROTOCOL=$GIT_PROTOCOL}} \\
  SSH_ORIGINAL_COMMAND="$2" /bin/sh -c "$command"
"""


def server_command() -> tuple[str, ...]:
    """How the stand-in sshd and git's hooks run gitops: this Python, with the
    PYTHONPATH this demo runs with (sshd passes on none of our environment)."""
    path = os.environ.get("PYTHONPATH")
    prefix = ("env", f"PYTHONPATH={path}") if path else ()
    return (*prefix, sys.executable, "-m", "gitops")


@dataclass(frozen=True)
class Refusal:
    """An attack tried through the server, and the line the server answered with."""

    attempt: str
    line: str


class ServedFleet(DemoFleet):
    """A :class:`DemoFleet` whose publisher, agents and site go through the gitops
    server; ``self.server`` (the plain bare repository) is the forge main comes from."""

    @property
    def layout(self) -> Layout:
        return Layout(self.root / "gitops-server")

    @property
    def bin_dir(self) -> Path:
        return self.root / "bin"

    @property
    def forge(self) -> Path:
        return self.server

    def url(self, repo: str) -> str:
        return f"ssh://{SERVER_NAME}/{repo}"

    # -- set-up ----------------------------------------------------------------------

    @override
    def create(self) -> None:
        super().create()
        self.bin_dir.mkdir()
        standin = STANDIN_SSH.format(authorized_keys=shlex.quote(str(self.layout.authorized_keys)))
        atomic.write_text(self.bin_dir / "ssh", standin, mode=0o755)
        config = ServerConfig(
            command=server_command(), main=MainPolicy.MIRROR, upstream=str(self.forge)
        )
        sync.init(self.layout, str(self.forge), config, progress=lambda _: None)

    @override
    def merge_change(self, files: dict[str, str], message: str) -> str:
        """Merged on the forge; the server mirrors main (what its sync timer does)."""
        sha = super().merge_change(files, message)
        sync.sync(self.layout)
        return sha

    @contextlib.contextmanager
    def _ssh(self) -> Iterator[None]:
        """The stand-in ``ssh`` first on PATH while git talks to the server."""
        before = os.environ.get("PATH", "")
        os.environ["PATH"] = f"{self.bin_dir}{os.pathsep}{before}"
        try:
            yield
        finally:
            os.environ["PATH"] = before

    def env(self, key: Path) -> dict[str, str]:
        return transport.Credentials(ssh_key=key).env()

    # -- the loop --------------------------------------------------------------------

    @override
    def push_deploy(self, git_dir: Path, refspecs: list[str]) -> None:
        with self._ssh():
            result = transport.push(
                git_dir,
                self.url("fleet.git"),
                refspecs,
                env=self.env(self.publisher_key_path),
                atomic=True,
            )
        if not result.ok:
            raise GitopsError(f"the gitops server refused the publisher's push: {result.message}")

    @override
    def agent_config(self, host: str) -> AgentConfig:
        return dataclasses.replace(
            super().agent_config(host),
            remote=self.url(f"hosts/{host}.git"),
            ssh_key=self.keys_dir / host,
        )

    @override
    def run_agent(self, host: str) -> CycleResult:
        with self._ssh():
            return super().run_agent(host)

    @property
    @override
    def record(self) -> Path:
        return self.layout.fleet

    @override
    def _more_repositories(self, host: str) -> list[Path]:
        return [self.layout.host_repo(host), *super()._more_repositories(host)]

    # -- attacks through the server ------------------------------------------------------

    def _refused(self, attempt: str, args: list[str], env: Mapping[str, str]) -> Refusal:
        with self._ssh():
            done = process.run(["git", *args], check=False, cwd=self.repo_dir, env=env)
        if done.returncode == 0:
            raise GitopsError(f"the gitops server allowed what it must refuse: {attempt}")
        lines = [line.strip() for line in done.stderr.splitlines() if line.strip()]
        said = [line for line in lines if "gitops:" in line or "remote error" in line]
        return Refusal(attempt, (said or lines or ["(no output)"])[0])

    def _forged_commit(self, parent: str, message: str, git_dir: Path) -> str:
        return git(
            "-c", "user.name=Mallory", "-c", "user.email=mallory@example.org",
            "--git-dir", git_dir, "commit-tree", f"{parent}^{{tree}}", "-p", parent,
            "-m", message, cwd=self.root,
        )  # fmt: skip

    def host_pushes_main(self, host: str) -> Refusal:
        """A host's key pushes a change to main (a stolen laptop's, say)."""
        sha = self._forged_commit(
            MAIN_REF, "Add my key everywhere", self.repo_dir / ".git"
        )  # an object in the admins' clone only; main does not move there
        return self._refused(
            f"{host}'s key pushes a commit to main",
            ["push", self.url("fleet.git"), f"{sha}:{MAIN_REF}"],
            self.env(self.keys_dir / host),
        )

    def host_reads_other(self, host: str, victim: str) -> Refusal:
        return self._refused(
            f"{host}'s key reads {victim}'s repository",
            ["ls-remote", self.url(f"hosts/{victim}.git")],
            self.env(self.keys_dir / host),
        )

    def host_fetches_by_id(self, host: str, victim: str) -> Refusal:
        """The object id of another host's deploy commit, asked of the host's own
        repository, from an empty one (git would not ask for an object it has)."""
        wanted = git("rev-parse", deploy_ref(victim), cwd=self.repo_dir)
        empty = self.root / "attacker.git"
        if not empty.exists():
            git("init", "-q", "--bare", empty, cwd=self.root)
        return self._refused(
            f"{host}'s key asks its own repository for {victim}'s deploy commit by its id",
            ["--git-dir", str(empty), "-c", "protocol.version=2", "fetch",
             "--no-write-fetch-head", self.url(f"hosts/{host}.git"), wanted],
            self.env(self.keys_dir / host),
        )  # fmt: skip

    def publisher_pushes_unsigned(self, victim: str) -> Refusal:
        """The CI key (or anyone holding it) pushes an unsigned commit to deploy/<victim>."""
        sha = self._forged_commit(
            deploy_ref(victim),
            f"deploy {victim}: totally legit\n\nGitops-Host: {victim}",
            self.repo_dir / ".git",
        )
        return self._refused(
            f"the publisher's key pushes an unsigned commit to deploy/{victim}",
            ["push", self.url("fleet.git"), f"{sha}:{deploy_ref(victim)}"],
            self.env(self.publisher_key_path),
        )

    def publisher_rolls_back(self, victim: str) -> Refusal:
        first = git("rev-list", "--max-parents=0", deploy_ref(victim), cwd=self.repo_dir)
        return self._refused(
            f"the publisher's key forces deploy/{victim} back to its first, validly signed commit",
            ["push", "--force", self.url("fleet.git"), f"{first}:{deploy_ref(victim)}"],
            self.env(self.publisher_key_path),
        )

    # -- attacks past the server (a shell on it): the agents are the last line ---------

    @override
    def push_unsigned(self, host: str) -> str:
        """Someone with a shell on the server writes an unsigned commit on deploy/<host>
        straight into the host's repository (no hook runs)."""
        git_dir = self.layout.host_repo(host)
        sha = self._forged_commit(
            deploy_ref(host), f"deploy {host}: totally legit\n\nGitops-Host: {host}", git_dir
        )
        git("--git-dir", git_dir, "update-ref", deploy_ref(host), sha, cwd=self.root)
        return sha

    @override
    def push_rollback(self, host: str) -> str:
        """... or moves deploy/<host> back to its first, older, validly signed commit."""
        git_dir = self.layout.host_repo(host)
        first = git(
            "--git-dir", git_dir, "rev-list", "--max-parents=0", deploy_ref(host), cwd=self.root
        )
        git("--git-dir", git_dir, "update-ref", deploy_ref(host), first, cwd=self.root)
        return first
