"""``gitops enroll``: a new machine proposes itself to the fleet (docs/enroll-host.md);
``gitops enroll list|accept``: an admin reviews and merges proposals."""

from __future__ import annotations

import platform
import shutil
import tempfile
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
import yaml

from gitops import output
from gitops.agent.facts import collect_facts
from gitops.errors import GitopsError, ProblemsError
from gitops.fleet import enrolment
from gitops.fleet.model import HOST_FILE, HOSTS_DIR
from gitops.protocol import ENROLL_PREFIX, MAIN_REF, UNKNOWN, enroll_ref, is_host_name
from gitops.system import process, transport
from gitops.trust import commits, keys
from gitops.trust.sshsig import PrivateKeyTypes, PublicKey

DEFAULT_KEY = Path("/etc/ssh/ssh_host_ed25519_key")
HARDWARE_FILE = "hardware-configuration.nix"


def _system() -> str:
    machine = platform.machine()
    return {"amd64": "x86_64", "arm64": "aarch64"}.get(machine, machine) + "-linux"


def _key(path: Path, name: str) -> tuple[PrivateKeyTypes, PublicKey]:
    """The machine's host key; made (ed25519) when there is none yet."""
    if not path.exists():
        keys.new_keypair(path, f"root@{name}")
        output.say(f"made a host key {path}")
    private = keys.load_signing_key(path)
    return private, PublicKey.from_crypto(private.public_key())


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


def enroll(
    remote: str,
    name: str,
    key_path: Path,
    *,
    profiles: list[str],
    owner: str = "",
    root: Path = Path("/"),
) -> int:
    """Make or reuse the host key, describe the machine, and push a signed proposal."""
    if not is_host_name(name):
        raise GitopsError(f"{name!r} is not a host name (lower-case letters, digits and -)")
    private, public = _key(key_path, name)
    facts = collect_facts(root)
    with tempfile.TemporaryDirectory(prefix="gitops-enroll-") as tmp:
        git_dir = Path(tmp) / "fleet.git"
        pygit2.init_repository(str(git_dir), bare=True)
        transport.fetch(git_dir, remote, [f"+{MAIN_REF}:{MAIN_REF}"], depth=1)
        repo = pygit2.Repository(str(git_dir))
        main = commits.resolve_commit(repo, MAIN_REF)
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
        pushed = transport.push(git_dir, remote, [f"{enroll_ref(name)}:{enroll_ref(name)}"])
        if not pushed.ok:
            raise GitopsError(f"{remote} refused enroll/{name}: {pushed.message}")
    output.say(
        f"proposed {name} on enroll/{name} (key {public.fingerprint}); an admin reviews it "
        f"(gitops enroll list) and merges it (gitops enroll accept {name}); then this machine "
        "gets deploy/" + name
    )
    return 0


def _proposals(repo: pygit2.Repository) -> list[enrolment.Proposal]:
    return enrolment.pending(repo)


def list_proposals(repo_path: Path, *, as_json: bool) -> int:
    repo = commits.open_repository(repo_path)
    proposals = _proposals(repo)
    if as_json:
        output.emit_json(
            {
                "pending": [
                    {
                        "host": p.host,
                        "commit": str(p.commit),
                        "key": p.key.fingerprint if p.key else None,
                        "problems": list(p.problems),
                    }
                    for p in proposals
                ]
            }
        )
        return 0
    if not proposals:
        output.say("no pending enrolments (enroll/<host> branches)")
    for p in proposals:
        verdict = "ready to accept" if p.ok else "refused: " + "; ".join(p.problems)
        output.say(f"{p.host} {str(p.commit)[:8]}: {verdict}")
    return 0


def accept(repo_path: Path, name: str, admin_key: Path) -> int:
    """Merge ``enroll/<name>`` into main as a signed merge commit (its parents: main and
    the proposal, signed by the admin), after checking it again."""
    repo = commits.open_repository(repo_path)
    ref = enroll_ref(name)
    target = commits.ref_target(repo, ref) or commits.ref_target(
        repo, f"refs/remotes/origin/{ref.removeprefix('refs/heads/')}"
    )
    if target is None:
        raise GitopsError(
            f"no branch enroll/{name} here; fetch it first (git fetch origin 'refs/heads/{ENROLL_PREFIX.removeprefix('refs/heads/')}*:refs/heads/{ENROLL_PREFIX.removeprefix('refs/heads/')}*')"
        )
    main = commits.resolve_commit(repo, MAIN_REF)
    proposal = enrolment.check_proposal(repo, name, target, main)
    if not proposal.ok:
        raise ProblemsError(f"enroll/{name} is refused", list(proposal.problems))
    proposed = repo.get(target)
    assert isinstance(proposed, pygit2.Commit)
    host_tree = proposed.tree[f"{HOSTS_DIR}/{name}"]
    hosts = (
        repo.TreeBuilder(main.tree[HOSTS_DIR].peel(pygit2.Tree))
        if HOSTS_DIR in main.tree
        else repo.TreeBuilder()
    )
    hosts.insert(name, host_tree.id, pygit2.enums.FileMode.TREE)
    root = repo.TreeBuilder(main.tree)
    root.insert(HOSTS_DIR, hosts.write(), pygit2.enums.FileMode.TREE)
    signer = keys.load_signer(admin_key)
    oid = commits.create_signed_commit(
        repo,
        tree=root.write(),
        parents=[main.id, target],
        message=commits.format_message(
            f"Merge enroll/{name}: add host {name}",
            f"Key {proposal.key.fingerprint if proposal.key else '?'}, proposed by the machine itself.",
        ),
        author=_admin_signature(repo),
        key=signer,
    )
    _move_main(repo, repo_path, main.id, oid)
    output.say(f"main is now {str(oid)[:8]}, with hosts/{name}; push main, then publish")
    return 0


def _admin_signature(repo: pygit2.Repository) -> pygit2.Signature:
    try:
        return repo.default_signature
    except (KeyError, pygit2.GitError):
        return commits.signature_of("gitops admin", "admin@gitops.invalid")


def _move_main(repo: pygit2.Repository, repo_path: Path, old: pygit2.Oid, new: pygit2.Oid) -> None:
    """Fast-forward main; through git when main is checked out, so the work tree follows."""
    if not repo.is_bare and not repo.head_is_detached and repo.head.name == MAIN_REF:
        process.run(["git", "-C", repo_path, "merge", "-q", "--ff-only", str(new)], check=True)
        return
    commits.update_refs(repo, {MAIN_REF: (old, new)}, message="gitops enroll accept")
