"""The new machine's side of enrolment (docs/enroll-host.md): make or reuse its host key,
describe it, push a proposal signed with that key on ``enroll/<name>``, and wait for its
deploy branch. ``gitops enroll`` and the demo both run this; the admin's side (list,
accept) is gitops/fleet/enrolment.py.
"""

from __future__ import annotations

import enum
import logging
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
import yaml

from gitops.agent.facts import collect_facts
from gitops.errors import GitopsError, ProblemsError
from gitops.fleet import enrolment
from gitops.fleet.model import HOST_FILE, HOSTS_DIR, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import MAIN_REF, UNKNOWN, deploy_ref, enroll_ref, is_host_name
from gitops.system import process, transport
from gitops.trust import commits, keys
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PrivateKeyTypes, PublicKey

log = logging.getLogger(__name__)

HARDWARE_FILE = "hardware-configuration.nix"


class Stage(enum.Enum):
    PROPOSED = "proposed"  # pushed now
    PENDING = "pending"  # this machine's proposal was on the remote already
    ENROLLED = "enrolled"  # main has the host, with this machine's key


@dataclass(frozen=True)
class Proposed:
    name: str
    commit: pygit2.Oid  # the proposal (main's commit when ENROLLED)
    key: PublicKey
    made_key: Path | None  # the host key made for it, when there was none
    stage: Stage = Stage.PROPOSED


def _system() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) + "-linux"


def _key(path: Path, name: str) -> tuple[PrivateKeyTypes, PublicKey, bool]:
    """The machine's host key; made (ed25519) when there is none yet (then True)."""
    made = not path.exists()
    if made:
        keys.new_keypair(path, f"root@{name}")
    private = keys.load_signing_key(path)
    return private, PublicKey.from_crypto(private.public_key()), made


def _known(value: object) -> str:
    return "" if value in (None, UNKNOWN) else str(value)


def host_yaml(
    name: str, key: PublicKey, facts: dict[str, Any], profiles: list[str], owner: str
) -> str:
    model = " ".join(
        v for v in (_known(facts.get("hardware_vendor")), _known(facts.get("hardware_model"))) if v
    )
    data: dict[str, Any] = {
        "key": f"{key.openssh()} root@{name}",
        "profiles": profiles,
        "tags": [],
        "owner": owner,
        "description": model or "enrolled with gitops enroll",
        "system": _system(),
    }
    stamp = datetime.now(UTC).strftime("%Y-%m-%d")
    return (
        f"# Proposed by `gitops enroll` on {stamp}, from the machine itself; review before merging.\n"
        + yaml.safe_dump(data, sort_keys=False)
    )


def hardware_nix(root: Path, facts: dict[str, Any]) -> str:
    """``nixos-generate-config --show-hardware-config`` on a NixOS machine; else a stub
    that names the platform and what the facts say, for an admin to complete."""
    if root == Path("/") and shutil.which("nixos-generate-config"):
        result = process.run(["nixos-generate-config", "--show-hardware-config"], check=True)
        return result.stdout
    lines = [
        "# Hardware of this host as `gitops enroll` saw it (no nixos-generate-config here).",
        f"# CPU: {_known(facts.get('cpu_model')) or 'unknown'}; memory: "
        f"{_known(facts.get('memory_total_bytes')) or 'unknown'} bytes.",
        "{ lib, ... }:",
        "{",
        f'  nixpkgs.hostPlatform = lib.mkDefault "{_system()}";',
        "}",
    ]
    return "\n".join(lines) + "\n"


def configuration_nix(name: str, profiles: list[str]) -> str:
    imports = " ".join([f"./{HARDWARE_FILE}", *(f"../../profiles/{p}.nix" for p in profiles)])
    return f"# {name}: enrolled with gitops enroll; add this host's own settings here.\n{{\n  imports = [ {imports} ];\n}}\n"


def _with_host(
    repo: pygit2.Repository, base: pygit2.Tree, name: str, files: dict[str, str]
) -> pygit2.Oid:
    host_dir = repo.TreeBuilder()
    for file, text in sorted(files.items()):
        host_dir.insert(file, repo.create_blob(text.encode()), pygit2.enums.FileMode.BLOB)
    hosts_tree = base[HOSTS_DIR].peel(pygit2.Tree) if HOSTS_DIR in base else None
    hosts = repo.TreeBuilder(hosts_tree) if hosts_tree is not None else repo.TreeBuilder()
    hosts.insert(name, host_dir.write(), pygit2.enums.FileMode.TREE)
    root = repo.TreeBuilder(base)
    root.insert(HOSTS_DIR, hosts.write(), pygit2.enums.FileMode.TREE)
    return root.write()


def propose(
    remote: str,
    name: str,
    key_path: Path,
    *,
    profiles: list[str],
    owner: str = "",
    root: Path = Path("/"),
    env: Mapping[str, str] | None = None,
) -> Proposed:
    """Make or reuse the host key, describe the machine, and push a signed proposal on
    ``enroll/<name>`` to ``remote``; refused before pushing when the fleet would refuse it."""
    if not is_host_name(name):
        raise GitopsError(f"{name!r} is not a host name (lower-case letters, digits and -)")
    private, public, made = _key(key_path, name)
    facts = collect_facts(root)
    with tempfile.TemporaryDirectory(prefix="gitops-enroll-") as tmp:
        git_dir = Path(tmp) / "fleet.git"
        pygit2.init_repository(str(git_dir), bare=True)
        transport.fetch(git_dir, remote, [f"+{MAIN_REF}:{MAIN_REF}"], env=env, depth=1)
        repo = pygit2.Repository(str(git_dir))
        main = commits.resolve_commit(repo, MAIN_REF)
        again = _already(repo, remote, name, public, main, env)
        if again is not None:
            return Proposed(name, again[0], public, key_path if made else None, again[1])
        files = {
            HOST_FILE: host_yaml(name, public, facts, profiles, owner),
            HARDWARE_FILE: hardware_nix(root, facts),
            "configuration.nix": configuration_nix(name, profiles),
        }
        tree = _with_host(repo, main.tree, name, files)
        who = commits.signature_of(f"gitops enroll {name}", f"root@{name}")
        oid = commits.create_signed_commit(
            repo,
            tree=tree,
            parents=[main.id],
            message=commits.format_message(
                f"enroll {name}", f"Proposed by {name} itself: its key {public.fingerprint}."
            ),
            author=who,
            key=private,
        )
        proposal = enrolment.check_proposal(repo, name, oid, main)
        if not proposal.ok:
            raise ProblemsError(f"enroll/{name} would be refused", list(proposal.problems))
        repo.references.create(enroll_ref(name), oid, force=True)
        pushed = transport.push(
            git_dir, remote, [f"{enroll_ref(name)}:{enroll_ref(name)}"], env=env
        )
        if not pushed.ok:
            raise GitopsError(f"{remote} refused enroll/{name}: {pushed.message}")
    return Proposed(name, oid, public, key_path if made else None)


def _already(
    repo: pygit2.Repository,
    remote: str,
    name: str,
    key: PublicKey,
    main: pygit2.Commit,
    env: Mapping[str, str] | None,
) -> tuple[pygit2.Oid, Stage] | None:
    """Whether this machine (its key) is in main already, or its signed proposal is on
    the remote: then running ``gitops enroll`` again only waits."""
    known = load_fleet(TreeSource(repo, main.tree), Problems()).hosts.get(name)
    if known is not None and known.key is not None and known.key.blob == key.blob:
        return main.id, Stage.ENROLLED
    try:
        transport.fetch(Path(repo.path), remote, [f"+{enroll_ref(name)}:{enroll_ref(name)}"],
                        env=env, depth=1)  # fmt: skip
    except transport.RefNotFoundError:
        return None
    oid = commits.ref_target(repo, enroll_ref(name))
    if oid is None:
        return None
    commit = repo.get(oid)
    proposed = None
    if isinstance(commit, pygit2.Commit):
        proposed = load_fleet(TreeSource(repo, commit.tree), Problems()).hosts.get(name)
    if proposed is None or proposed.key is None or proposed.key.blob != key.blob:
        return None  # someone else's: pushing ours is refused, with the remote's reason
    try:
        commits.verify_commit(repo, oid, AllowedSigners.of([(name, key)]))
    except GitopsError:
        return None
    return oid, Stage.PENDING


@dataclass(frozen=True)
class WaitBackoff:
    """Pauses between two looks at the deploy branch: ``first`` seconds, doubled after
    each look up to ``cap``. Publishing follows a merge or a schedule, so a machine that
    waits an hour asks the remote about 70 times, not thousands."""

    first: float = 5.0
    cap: float = 60.0

    def delay(self, looks: int) -> float:
        """The pause after the ``looks``-th look (1, 2, ...)."""
        return min(self.cap, self.first * (1 << min(looks - 1, 32)))


def wait_for_deploy(
    remote: str,
    name: str,
    timeout: float,
    *,
    env: Mapping[str, str] | None = None,
    backoff: WaitBackoff | None = None,
    sleep: Callable[[float], None] = time.sleep,
    clock: Callable[[], float] = time.monotonic,
) -> str | None:
    """The commit of ``deploy/<name>`` on ``remote`` once it exists; None after
    ``timeout`` seconds. An unreachable remote (the gitops server refuses the host's key
    until the merge reaches it) counts as "not yet"."""
    backoff = backoff or WaitBackoff()
    deadline = clock() + timeout
    looks = 0
    last_error = ""
    while True:
        looks += 1
        try:
            head = transport.remote_head(remote, deploy_ref(name), env=env)
        except GitopsError as err:
            head, last_error = None, str(err)
            log.info("deploy/%s: not reachable yet (%s)", name, err)
        if head is not None:
            return head
        left = deadline - clock()
        if left <= 0:
            if last_error:
                log.warning("deploy/%s: the last look failed: %s", name, last_error)
            return None
        sleep(min(backoff.delay(looks), left))
