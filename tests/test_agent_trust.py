"""What the agent refuses, tried as an attacker and as an unlucky operator would (issue 8).

Each test builds a real fleet (a bare git server, a publisher key, stand-in Nix systems),
lets the agent apply something, then breaks one rule and runs ``gitops agent once`` through
the real CLI where it can: the chain, not only the head, is verified; a re-encoded twin of
a signed commit is refused; a lost state directory does not re-trust a rolled-back branch;
a frozen or deleted branch is reported as such; only a publisher-signed recovery commit
naming the applied commit brings a host across a rewritten history; deploy trees are
checked and written without following links; an unsigned push is neither downloaded nor
kept; a backdated commit cannot revive an expired certificate; a broken state or trust
file gets one clear line (and a report, when the agent can still sign one).
"""

from __future__ import annotations

import base64
import json
import os
import shutil
import struct
import subprocess
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from gitops.agent.cycle import Cycle, CycleResult
from gitops.agent.state import StateStore
from gitops.agent.verify import Floor, FloorKind, Policy, check_deploy_head
from gitops.demo import standin
from gitops.demo.scenario import PUBLISHER, DemoFleet, git
from gitops.errors import GitopsError
from gitops.protocol import (
    TRAILER_EXPIRES,
    TRAILER_HOST,
    TRAILER_RECOVERS,
    TRAILER_SOURCE_GENERATION,
    Result,
    deploy_ref,
    format_time,
)
from gitops.publish import plan as publishing
from gitops.system import nix, transport
from gitops.trust import commits, sshsig, trees
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError
from testing import servers
from testing.helpers import (
    agent_config_file,
    current_system,
    gitops,
    public_line,
    published_demo,
    remote_reports,
)

HOSTS = {"alpha": ["workstation"], "beta": ["server"]}


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    fleet = published_demo(tmp_path / "demo", HOSTS)
    assert git("config", "uploadpack.allowFilter", cwd=fleet.server) == "true"
    return fleet


# -- helpers ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Once:
    code: int
    result: str | None
    reason: str
    stderr: str


def once(demo: DemoFleet, host: str, **settings: Any) -> Once:
    done = gitops("agent", "--config", agent_config_file(demo, host, **settings), "once", "--json")
    if not done.stdout.strip():
        return Once(done.returncode, None, "", done.stderr)
    data = json.loads(done.stdout)
    return Once(done.returncode, data["result"], data["reason"], done.stderr)


def run(demo: DemoFleet, host: str, **options: Any) -> CycleResult:
    return Cycle(demo.agent_config(host), sleep=lambda _: None, **options).run()


def head(demo: DemoFleet, host: str) -> str:
    return git("rev-parse", deploy_ref(host), cwd=demo.server)


def push(demo: DemoFleet, host: str, sha: str) -> None:
    git("push", "-q", "--force", str(demo.server), f"{sha}:{deploy_ref(host)}", cwd=demo.repo_dir)


def change(demo: DemoFleet, host: str, **settings: str) -> str:
    """Merge a change to ``host``'s configuration and publish it; the new deploy head."""
    demo.merge_change(
        {f"hosts/{host}/configuration.nix": standin.host_configuration(HOSTS[host], settings)},
        f"{host}: change",
    )
    demo.publish()
    return head(demo, host)


def deploy_commit(
    demo: DemoFleet,
    host: str,
    parents: list[str],
    *,
    tree: pygit2.Oid | None = None,
    trailers: Mapping[str, str] | None = None,
    signed: bool = True,
    when: datetime | None = None,
    inherit_generation: bool = True,
) -> str:
    """A deploy commit written by hand (signed by the publisher unless ``signed`` is off),
    addressed to ``host`` unless ``trailers`` say otherwise."""
    repo = demo.repository()
    parent_ids = [pygit2.Oid(hex=p) for p in parents]
    first = repo.get(parent_ids[0]) if parent_ids else None
    assert first is None or isinstance(first, pygit2.Commit)
    if tree is None:
        assert first is not None
        tree = first.tree_id
    # Like publish, carry the source generation on (a commit without it after one with it
    # is refused, which is not what most of these tests are about).
    inherited: dict[str, str] = {}
    if first is not None and inherit_generation:
        inherited = commits.trailers(first.message)
    generation: dict[str, str] = {}
    if TRAILER_SOURCE_GENERATION in inherited:
        generation[TRAILER_SOURCE_GENERATION] = inherited[TRAILER_SOURCE_GENERATION]
    message = commits.format_message(
        f"deploy {host}: by hand", "", {TRAILER_HOST: host, **generation, **(trailers or {})}
    )
    author = commits.signature_of("publisher", PUBLISHER, when)
    if not signed:
        return str(repo.create_commit(None, author, author, message, tree, parent_ids))
    assert demo.publisher_key is not None
    oid = commits.create_signed_commit(
        repo, tree=tree, parents=parent_ids, message=message, author=author, key=demo.publisher_key
    )
    return str(oid)


def _tree_of(demo: DemoFleet, sha: str) -> pygit2.Oid:
    return pygit2.Oid(hex=git("rev-parse", f"{sha}^{{tree}}", cwd=demo.server))


def state_dir(demo: DemoFleet, host: str) -> Path:
    return demo.agent_config(host).state_dir


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def count_builds(monkeypatch: pytest.MonkeyPatch) -> list[object]:
    calls: list[object] = []
    real = nix.build_flake

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(nix, "build_flake", wrapper)
    return calls


def assert_refused(outcome: Once, *needles: str) -> None:
    assert (outcome.code, outcome.result) == (1, "rejected"), outcome
    for needle in needles:
        assert needle in outcome.reason, outcome.reason


# -- 1. the chain, not the head --------------------------------------------------------------


def test_unsigned_commit_in_the_middle_is_refused_naming_it(demo: DemoFleet) -> None:
    assert once(demo, "alpha").result == "applied"
    applied = head(demo, "alpha")
    running = current_system(demo, "alpha")
    first_bad = deploy_commit(demo, "alpha", [applied], signed=False)
    second_bad = deploy_commit(demo, "alpha", [first_bad], signed=False)
    top = deploy_commit(demo, "alpha", [second_bad])
    push(demo, "alpha", top)
    assert_refused(once(demo, "alpha"), f"commit {first_bad[:8]} on the way to it", "not signed")
    assert current_system(demo, "alpha") == running


@pytest.mark.parametrize(
    ("trailers", "reason"),
    [
        ({TRAILER_HOST: "beta"}, "addressed to beta, not alpha"),
        ({TRAILER_HOST: ""}, "addressed to no host, not alpha"),
    ],
)
def test_commit_for_another_host_in_the_middle_is_refused(
    demo: DemoFleet, trailers: dict[str, str], reason: str
) -> None:
    assert once(demo, "alpha").result == "applied"
    middle = deploy_commit(demo, "alpha", [head(demo, "alpha")], trailers=trailers)
    push(demo, "alpha", deploy_commit(demo, "alpha", [middle]))
    assert_refused(once(demo, "alpha"), middle[:8], reason)


def test_source_generation_never_goes_down(demo: DemoFleet) -> None:
    """A deploy rendered from an older main (an old clone, a slow CI job) is refused even
    though a publisher signed it; once commits carry the trailer, it cannot be dropped."""
    assert once(demo, "alpha").result == "applied"
    newer = deploy_commit(
        demo, "alpha", [head(demo, "alpha")], trailers={TRAILER_SOURCE_GENERATION: "7"}
    )
    push(demo, "alpha", newer)
    assert once(demo, "alpha").code == 0
    older = deploy_commit(demo, "alpha", [newer], trailers={TRAILER_SOURCE_GENERATION: "5"})
    push(demo, "alpha", older)
    assert_refused(once(demo, "alpha"), "rendered from an older main", "5 < 7")
    missing = deploy_commit(demo, "alpha", [newer], inherit_generation=False)
    push(demo, "alpha", missing)
    assert_refused(once(demo, "alpha"), "no Source-Generation trailer")
    same = deploy_commit(demo, "alpha", [newer], trailers={TRAILER_SOURCE_GENERATION: "7"})
    push(demo, "alpha", same)
    assert once(demo, "alpha").code == 0
    state = StateStore(state_dir(demo, "alpha")).load("alpha")
    assert state is not None and state.applied == same


def test_merge_in_the_chain_is_refused(demo: DemoFleet) -> None:
    assert once(demo, "alpha").result == "applied"
    applied = head(demo, "alpha")
    side = deploy_commit(demo, "alpha", [applied])
    merge = deploy_commit(demo, "alpha", [applied, side])
    push(demo, "alpha", merge)
    assert_refused(once(demo, "alpha"), "a merge (2 parents)")


# -- 2. one encoding per signed commit -------------------------------------------------------


def _re_encode(raw: bytes, how: str) -> bytes:
    end = raw.index(b"\n\n")
    lines = raw[:end].split(b"\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(b"gpgsig "))
    stop = start + 1
    while stop < len(lines) and lines[stop].startswith(b" "):
        stop += 1
    block = lines[start:stop]
    armored = b"\n".join([block[0][len(b"gpgsig ") :], *(line[1:] for line in block[1:])])
    if how == "armor wrapped at 64 columns":
        b64 = base64.b64encode(sshsig.dearmor(armored)).decode()
        body = [b64[i : i + 64] for i in range(0, len(b64), 64)]
        wrapped = [sshsig.ARMOR_BEGIN, *body, sshsig.ARMOR_END]
        block = [b"gpgsig " + wrapped[0].encode(), *(b" " + w.encode() for w in wrapped[1:])]
        lines[start:stop] = block
    elif how == "an extra gpgsig-sha256 header":
        lines[stop:stop] = [b"gpgsig-sha256" + block[0][len(b"gpgsig") :], *block[1:]]
    elif how == "gpgsig before committer":
        del lines[start:stop]
        lines[start - 1 : start - 1] = block
    return b"\n".join(lines) + raw[end:]


@pytest.mark.parametrize(
    "how",
    ["armor wrapped at 64 columns", "an extra gpgsig-sha256 header", "gpgsig before committer"],
)
def test_re_encoded_twin_is_refused_and_the_next_publish_applies(demo: DemoFleet, how: str) -> None:
    assert once(demo, "alpha").result == "applied"
    real = change(demo, "alpha", kernel='"6.12.1"')
    raw = subprocess.run(
        ["git", "--git-dir", str(demo.server), "cat-file", "commit", real],
        check=True,
        capture_output=True,
    ).stdout
    twin_raw = _re_encode(raw, how)
    assert twin_raw != raw
    twin = subprocess.run(
        ["git", "--git-dir", str(demo.server), "hash-object", "-t", "commit", "-w", "--literally", "--stdin"],
        input=twin_raw,
        check=True,
        capture_output=True,
    ).stdout.decode().strip()  # fmt: skip
    assert twin != real
    signers = demo.keys_dir / "publishers.allowed_signers"
    verified = subprocess.run(
        ["git", "--git-dir", str(demo.server), "-c", f"gpg.ssh.allowedSignersFile={signers}",
         "verify-commit", twin],
        capture_output=True,
        check=False,
    )  # fmt: skip
    assert verified.returncode == 0, "git itself accepts the twin"
    git("update-ref", deploy_ref("alpha"), twin, cwd=demo.server)
    assert_refused(once(demo, "alpha"), "not in canonical form")
    # The server is put right; the real commit and the next real publish apply.
    git("update-ref", deploy_ref("alpha"), real, cwd=demo.server)
    assert once(demo, "alpha").result == "applied"
    nxt = change(demo, "alpha", kernel='"6.12.2"')
    outcome = once(demo, "alpha")
    assert outcome.result == "applied", outcome
    assert StateStore(state_dir(demo, "alpha")).load("alpha").applied == nxt  # type: ignore[union-attr]


P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551


def _ssh_string(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def _ssh_mpint(value: int) -> bytes:
    raw = value.to_bytes((value.bit_length() + 7) // 8, "big")
    return _ssh_string(b"\0" + raw if raw[0] & 0x80 else raw)


def _malleated_twin(repo: pygit2.Repository, oid: pygit2.Oid) -> pygit2.Oid:
    """The same ECDSA-signed commit with (r, n - s) for (r, s): another valid signature,
    canonically encoded, so another commit id."""
    split = commits.split_signature(commits.read_raw(repo, oid))
    assert split.signature is not None
    parsed = sshsig.parse(split.signature)
    blob = sshsig.dearmor(split.signature)
    r_len = struct.unpack(">I", parsed.sig[:4])[0]
    r = int.from_bytes(parsed.sig[4 : 4 + r_len], "big")
    s = int.from_bytes(parsed.sig[8 + r_len :], "big")
    old = _ssh_string(_ssh_string(parsed.sig_type.encode()) + _ssh_string(parsed.sig))
    new = _ssh_string(
        _ssh_string(parsed.sig_type.encode())
        + _ssh_string(_ssh_mpint(r) + _ssh_mpint(P256_ORDER - s))
    )
    assert blob.endswith(old)
    twin_blob = blob[: -len(old)] + new
    return repo.create_commit_with_signature(
        split.payload.decode(), sshsig.armor(twin_blob).rstrip("\n")
    )


def test_a_twin_of_the_floor_counts_as_the_floor(tmp_path: Path) -> None:
    """Identity is the signed payload: should a twin ever be recorded as applied (ECDSA
    signatures are malleable, so a canonical twin can exist), the real history that
    descends from the original still verifies against it."""
    private = ec.generate_private_key(ec.SECP256R1())
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    tree = repo.TreeBuilder().write()
    author = commits.signature_of("publisher", PUBLISHER)

    def signed(parents: list[pygit2.Oid], message: str) -> pygit2.Oid:
        return commits.create_signed_commit(
            repo, tree=tree, parents=parents, message=message, author=author, key=private
        )

    base = signed([], "deploy alpha: a\n\nGitops-Host: alpha\n")
    twin = _malleated_twin(repo, base)
    assert twin != base
    trust = AllowedSigners.parse(f'{PUBLISHER} namespaces="git" {public_line(private)}\n')
    commits.verify_commit(repo, twin, trust)
    commits.check_canonical(commits.read_raw(repo, twin))
    later = signed([base], "deploy alpha: b\n\nGitops-Host: alpha\n")
    policy = Policy("alpha", trust, datetime.now(UTC))
    accepted = check_deploy_head(
        repo, later, floor=Floor(FloorKind.APPLIED, str(twin)), policy=policy
    )
    assert accepted.commit == str(later) and accepted.chain == 1


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda raw: raw.replace(b"\ncommitter ", b"\nencoding UTF-8\ncommitter ", 1), "'encoding'"),
        (lambda raw: raw.replace(b"-----END SSH SIGNATURE-----", b"-----END SSH SIGNATURE----- ", 1), "gpgsig header"),
        (lambda raw: raw.replace(b"\n -----END", b"\n \n -----END", 1), "gpgsig header"),
    ],
)  # fmt: skip
def test_check_canonical_says_what_is_not_canonical(
    tmp_path: Path, mutate: Any, reason: str
) -> None:
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    oid = commits.create_signed_commit(
        repo,
        tree=repo.TreeBuilder().write(),
        parents=[],
        message="m\n",
        author=commits.signature_of("a", "a@example.org"),
        key=ed25519.Ed25519PrivateKey.generate(),
    )
    raw = commits.read_raw(repo, oid)
    commits.check_canonical(raw)
    with pytest.raises(SignatureError, match=reason):
        commits.check_canonical(mutate(raw))


# -- 3. the floor is never lost silently -----------------------------------------------------


def test_wiped_state_dir_recovers_the_floor_from_the_running_system(demo: DemoFleet) -> None:
    assert once(demo, "alpha").result == "applied"
    newer = change(demo, "alpha", kernel='"6.12.3"')
    assert once(demo, "alpha").result == "applied"
    running = current_system(demo, "alpha")
    shutil.rmtree(state_dir(demo, "alpha"))
    demo.push_rollback("alpha")  # an older, validly signed commit
    outcome = once(demo, "alpha")
    assert_refused(outcome, "running system's configurationRevision", newer[:8], "min_commit")
    assert "trusted on first use" not in outcome.reason
    assert current_system(demo, "alpha") == running
    # The branch is put right: the head is what runs, and the agent carries on from it.
    push(demo, "alpha", newer)
    assert once(demo, "alpha").result == "applied"
    state = StateStore(state_dir(demo, "alpha")).load("alpha")
    assert state is not None and state.applied == newer


def _install_from(demo: DemoFleet, host: str, revision: str) -> None:
    """The machine runs a system installed by hand (nixos-install) from ``revision``."""
    machine = demo.agent_config(host).root
    system = machine / "installed-system"
    (system / "sw" / "bin").mkdir(parents=True)
    (machine / "run" / "current-system").symlink_to("/installed-system")  # as in a chroot
    version = {"nixosVersion": "25.05.standin", "configurationRevision": revision}
    (system / "sw" / "bin" / "nixos-version").write_text(
        f'#!/bin/sh\ncase "$1" in\n  --json)\n    cat << EOF\n{json.dumps(version)}\nEOF\n'
        "    ;;\nesac\n",
        encoding="utf-8",
    )


def test_machine_installed_from_main_accepts_the_deploy_rendered_from_it(
    demo: DemoFleet,
) -> None:
    _install_from(demo, "beta", git("rev-parse", "main", cwd=demo.server))
    outcome = once(demo, "beta", trust_on_first_use=False)
    assert outcome.result == "applied", outcome


def test_unknown_revision_is_refused_until_an_admin_pins_min_commit(demo: DemoFleet) -> None:
    _install_from(demo, "beta", "f" * 40)
    assert_refused(once(demo, "beta"), "configurationRevision ffffffff", "pin min_commit")
    outcome = once(demo, "beta", min_commit=head(demo, "beta"))
    assert outcome.result == "applied", outcome


def test_nothing_known_and_first_use_not_allowed_says_how_to_pin(demo: DemoFleet) -> None:
    assert_refused(once(demo, "beta", trust_on_first_use=False), "pin min_commit")


# -- 4. freshness ----------------------------------------------------------------------------


def _expiring_fleet(demo: DemoFleet, host: str) -> None:
    """Deploy commits expire after a day from now on; ``host`` gets one."""
    fleet_yaml = demo.repo_dir / "fleet.yaml"
    data = yaml.safe_load(fleet_yaml.read_text())
    data["deploy"] = {"expires_after": "1d"}
    demo.merge_change({"fleet.yaml": yaml.safe_dump(data)}, "deploy commits expire")
    change(demo, host, kernel='"6.12.8"')


def test_frozen_branch_is_a_stale_publisher_every_cycle(demo: DemoFleet) -> None:
    _expiring_fleet(demo, "alpha")
    assert run(demo, "alpha").result == Result.APPLIED
    later = datetime.now(UTC) + timedelta(days=2)
    frozen = run(demo, "alpha", clock=lambda: later)
    assert frozen.result == Result.STALE_PUBLISHER, frozen.reason
    assert "expired" in frozen.reason and "run the publish job" in frozen.reason
    assert remote_reports(demo, "alpha")[-1].result == Result.STALE_PUBLISHER


def test_max_age_of_the_applied_head_through_the_cli(demo: DemoFleet) -> None:
    settings = {"kernel": '"6.12.6"'}
    demo.merge_change(
        {"hosts/alpha/configuration.nix": standin.host_configuration(HOSTS["alpha"], settings)},
        "alpha: change",
    )
    repo = demo.repository()
    assert demo.publisher_key is not None
    an_hour_ago = datetime.now(UTC) - timedelta(hours=1)
    plan = publishing.make_plan(repo, "main", only=["alpha"])
    published = publishing.write_commits(repo, plan, demo.publisher_key, now=an_hour_ago)
    push(demo, "alpha", str(published.commits["alpha"]))
    assert once(demo, "alpha", max_age="2h").result == "applied"
    stale = once(demo, "alpha", max_age="30m")
    assert (stale.code, stale.result) == (1, "stale-publisher"), stale
    assert "older than max_age" in stale.reason


def test_deleted_deploy_branch_is_reported_not_unchanged(demo: DemoFleet) -> None:
    assert once(demo, "alpha").result == "applied"
    git("update-ref", "-d", deploy_ref("alpha"), cwd=demo.server)
    outcome = once(demo, "alpha")
    assert (outcome.code, outcome.result) == (1, "deploy-missing"), outcome
    assert remote_reports(demo, "alpha")[-1].result == Result.DEPLOY_MISSING
    # A host that never applied anything: nothing published yet is not an error.
    git("update-ref", "-d", deploy_ref("beta"), cwd=demo.server)
    assert once(demo, "beta").result == "unchanged"


def test_heartbeat_commit_renews_without_a_build(demo: DemoFleet) -> None:
    """Same tree, new Expires, signed: the floor moves, nothing is built or switched."""
    _expiring_fleet(demo, "alpha")
    assert once(demo, "alpha").result == "applied"
    applied = head(demo, "alpha")
    running = current_system(demo, "alpha")
    profile = demo.agent_config("alpha").system_profile
    generations = [g.number for g in nix.generations(profile)]
    in_two_days = datetime.now(UTC) + timedelta(days=2)
    renewal = deploy_commit(
        demo, "alpha", [applied], trailers={TRAILER_EXPIRES: format_time(in_two_days)}
    )
    push(demo, "alpha", renewal)
    renewed = once(demo, "alpha")
    assert (renewed.code, renewed.result) == (0, "unchanged"), renewed
    assert "renews" in renewed.reason and "nothing to build" in renewed.reason
    assert [g.number for g in nix.generations(profile)] == generations, "no new generation"
    assert current_system(demo, "alpha") == running
    state = StateStore(state_dir(demo, "alpha")).load("alpha")
    assert state is not None and state.applied == renewal
    assert remote_reports(demo, "alpha")[-1].deploy_applied == renewal
    # The old commit's expiry no longer counts: the renewed head is fresh.
    after_old_expiry = datetime.now(UTC) + timedelta(hours=30)
    assert run(demo, "alpha", clock=lambda: after_old_expiry).result == Result.UNCHANGED


# -- 5. recovery after a legitimate rewrite --------------------------------------------------


def _rewritten(demo: DemoFleet) -> tuple[str, str]:
    """alpha applied a newer commit; the server was restored from an older backup.
    Returns (the applied commit, the server's restored head)."""
    assert once(demo, "alpha").result == "applied"
    old = head(demo, "alpha")
    applied = change(demo, "alpha", kernel='"6.12.4"')
    assert once(demo, "alpha").result == "applied"
    push(demo, "alpha", old)
    return applied, old


def test_recovery_commit_naming_the_applied_commit_is_accepted(demo: DemoFleet) -> None:
    applied, restored = _rewritten(demo)
    assert_refused(once(demo, "alpha"), "does not descend from the applied commit")
    repo = demo.repository()
    applied_commit = repo.get(applied)
    assert isinstance(applied_commit, pygit2.Commit)
    recovery = deploy_commit(
        demo, "alpha", [restored], tree=applied_commit.tree_id, trailers={TRAILER_RECOVERS: applied}
    )
    push(demo, "alpha", recovery)
    outcome = once(demo, "alpha")
    assert outcome.result in ("applied", "unchanged"), outcome
    state = StateStore(state_dir(demo, "alpha")).load("alpha")
    assert state is not None and state.applied == recovery
    # Later publishes on the recovered history apply as usual.
    after = deploy_commit(demo, "alpha", [recovery], tree=_tree_of(demo, restored))
    push(demo, "alpha", after)
    assert once(demo, "alpha").result == "applied"


@pytest.mark.parametrize("kind", ["names another commit", "unsigned"])
def test_recovery_commit_that_is_not_for_the_applied_commit_is_refused(
    demo: DemoFleet, kind: str
) -> None:
    applied, restored = _rewritten(demo)
    names = restored if kind == "names another commit" else applied
    recovery = deploy_commit(
        demo, "alpha", [restored], trailers={TRAILER_RECOVERS: names}, signed=kind != "unsigned"
    )
    push(demo, "alpha", recovery)
    assert_refused(once(demo, "alpha"))


# -- 6. deploy trees never written through links ---------------------------------------------


def _raw_tree(
    repo: pygit2.Repository, entries: list[tuple[bytes, bytes, pygit2.Oid]]
) -> pygit2.Oid:
    data = b"".join(mode + b" " + name + b"\0" + oid.raw for mode, name, oid in entries)
    return repo.odb.write(pygit2.enums.ObjectType.TREE, data)


def _bad_tree(repo: pygit2.Repository, kind: str, outside: Path) -> pygit2.Oid:
    blob = repo.create_blob(b"attacker bytes\n")
    inner = _raw_tree(repo, [(b"100644", b"payload", blob)])
    link = repo.create_blob(str(outside).encode())
    cases: dict[str, list[tuple[bytes, bytes, pygit2.Oid]]] = {
        "symlink then a directory of the same name": [
            (b"120000", b"evil", repo.create_blob(b"x")),
            (b"40000", b"evil", inner),
        ],
        "absolute symlink": [(b"120000", b"evil", link)],
        "symlink out of the tree": [(b"120000", b"evil", repo.create_blob(b"../../etc"))],
        "..": [(b"40000", b"..", inner)],
        ".": [(b"40000", b".", inner)],
        ".GIT": [(b"40000", b".GIT", inner)],
        ".git.": [(b"40000", b".git.", inner)],
        "a/b": [(b"100644", b"a/b", blob)],
        "empty name": [(b"100644", b"", blob)],
        "gitlink": [(b"160000", b"sub", blob)],
        "zero-padded mode": [(b"040000", b"dir", inner)],
        "group-writable mode": [(b"100664", b"file", blob)],
        "unsorted": [(b"100644", b"b", blob), (b"100644", b"a", blob)],
        "tree entry that is a blob": [(b"40000", b"dir", blob)],
    }
    return _raw_tree(repo, cases[kind])


TREE_CASES = [
    ("symlink then a directory of the same name", "appears twice"),
    ("absolute symlink", "is absolute"),
    ("symlink out of the tree", "points out of the deploy tree"),
    ("..", "entry named '..'"),
    (".", "entry named '.'"),
    (".GIT", "a git directory"),
    (".git.", "a git directory"),
    ("a/b", "entry named 'a/b'"),
    ("empty name", "empty name"),
    ("gitlink", "gitlink"),
    ("zero-padded mode", "mode 040000"),
    ("group-writable mode", "mode 100664"),
    ("unsorted", "not sorted"),
    ("tree entry that is a blob", "is not a tree"),
]


@pytest.mark.parametrize(("kind", "message"), TREE_CASES)
def test_check_tree_refuses(tmp_path: Path, kind: str, message: str) -> None:
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    tree = _bad_tree(repo, kind, tmp_path / "outside")
    wrapped = _raw_tree(repo, [(b"40000", b"hosts", tree)])
    with pytest.raises(trees.TreeError, match=message) as caught:
        trees.check_tree(repo, wrapped, what="the tree")
    assert str(caught.value).startswith("the tree: ")


def test_check_tree_accepts_links_that_stay_inside(tmp_path: Path) -> None:
    repo = pygit2.init_repository(str(tmp_path / "r.git"), bare=True)
    blob = repo.create_blob(b"x\n")
    inner = _raw_tree(
        repo,
        [
            (b"120000", b"common", repo.create_blob(b"../modules/common.nix")),
            (b"100755", b"run", blob),
            (b"120000", b"up", repo.create_blob(b"..")),
        ],
    )
    modules = _raw_tree(repo, [(b"100644", b"common.nix", blob)])
    root = _raw_tree(repo, [(b"40000", b"hosts", inner), (b"40000", b"modules", modules)])
    trees.check_tree(repo, root)


@pytest.mark.parametrize(
    "kind", ["symlink then a directory of the same name", "absolute symlink", ".."]
)
def test_signed_head_with_an_unsafe_tree_is_refused_and_nothing_is_written_outside(
    demo: DemoFleet, tmp_path: Path, kind: str
) -> None:
    assert once(demo, "alpha").result == "applied"
    outside = tmp_path / "outside"
    repo = demo.repository()
    applied = repo.get(head(demo, "alpha"))
    assert isinstance(applied, pygit2.Commit)
    bad = _bad_tree(repo, kind, outside)
    # The host's real tree plus one more directory, "zzz" (last in git's order).
    data = bytes(repo.odb.read(applied.tree_id)[1]) + b"40000 zzz\0" + bad.raw
    tree = repo.odb.write(pygit2.enums.ObjectType.TREE, data)
    signed = deploy_commit(demo, "alpha", [str(applied.id)], tree=tree)
    push(demo, "alpha", signed)
    outcome = once(demo, "alpha")
    assert_refused(outcome, "its tree")
    assert not outside.exists() and not (outside / "payload").exists()
    assert not (state_dir(demo, "alpha") / "trees" / signed).exists()
    mirror = pygit2.Repository(str(state_dir(demo, "alpha") / "repo.git"))
    assert signed not in mirror, "a refused download is not kept"


def test_publish_refuses_to_sign_an_unsafe_tree(demo: DemoFleet) -> None:
    (demo.repo_dir / "hosts" / "alpha" / "secret").symlink_to("/etc/shadow")
    demo.commit("alpha: a link out of the tree")
    repo = demo.repository()
    plan = publishing.make_plan(repo, "main")
    assert demo.publisher_key is not None
    before = commits.ref_target(repo, deploy_ref("alpha"))
    with pytest.raises(trees.TreeError, match=r"secret .* is absolute"):
        publishing.write_commits(repo, plan, demo.publisher_key)
    assert commits.ref_target(repo, deploy_ref("alpha")) == before, "nothing signed"


# -- 7. verify before download ---------------------------------------------------------------


def _push_unsigned_blob(demo: DemoFleet, host: str, size: int) -> str:
    repo = demo.repository()
    parent = repo.get(head(demo, host))
    assert isinstance(parent, pygit2.Commit)
    builder = repo.TreeBuilder(parent.tree)
    builder.insert("big.bin", repo.create_blob(os.urandom(size)), pygit2.enums.FileMode.BLOB)
    sha = deploy_commit(demo, host, [str(parent.id)], tree=builder.write(), signed=False)
    push(demo, host, sha)
    return sha


@pytest.fixture
def http_remote(demo: DemoFleet) -> Iterator[tuple[str, servers.CountingProxy]]:
    if servers.find_http_backend() is None:
        pytest.skip("git-http-backend is not installed (CI installs git)")
    with (
        servers.git_http_server(demo.root, token=None) as http,
        servers.CountingProxy(http.port) as proxy,
    ):
        yield f"http://{servers.LOOPBACK}:{proxy.port}/{demo.server.name}", proxy


def test_unsigned_push_is_neither_downloaded_nor_kept(
    demo: DemoFleet, http_remote: tuple[str, servers.CountingProxy]
) -> None:
    url, proxy = http_remote
    assert once(demo, "alpha", remote=url).result == "applied"
    before = dir_size(state_dir(demo, "alpha"))
    blob = 4 * 1024 * 1024
    for _ in range(2):
        _push_unsigned_blob(demo, "alpha", blob)
        proxy.reset()
        assert_refused(once(demo, "alpha", remote=url), "not signed")
        assert proxy.from_server < 64 * 1024, f"{proxy.from_server} bytes for a refused head"
    grown = dir_size(state_dir(demo, "alpha")) - before
    assert grown < 256 * 1024, f"the state dir grew by {grown} bytes"
    assert not (state_dir(demo, "alpha") / "quarantine.git").exists()


def test_server_without_filters_downloads_but_keeps_nothing(demo: DemoFleet) -> None:
    git("config", "uploadpack.allowFilter", "false", cwd=demo.server)
    assert once(demo, "alpha").result == "applied"
    before = dir_size(state_dir(demo, "alpha"))
    unsigned = _push_unsigned_blob(demo, "alpha", 2 * 1024 * 1024)
    refused = once(demo, "alpha")
    assert_refused(refused, "not signed")
    assert "uploadpack.allowFilter" in refused.stderr, "the agent says why it downloaded"
    assert dir_size(state_dir(demo, "alpha")) - before < 256 * 1024
    assert unsigned not in pygit2.Repository(str(state_dir(demo, "alpha") / "repo.git"))
    # A signed publish still arrives in full and applies.
    git("update-ref", deploy_ref("alpha"), str(demo.repository().references[deploy_ref("alpha")].target), cwd=demo.server)  # fmt: skip
    change(demo, "alpha", kernel='"6.12.7"')
    assert once(demo, "alpha").result == "applied"


def test_fetch_commits_only_reports_whether_the_server_filtered(
    demo: DemoFleet, tmp_path: Path
) -> None:
    for allowed, filtered in (("true", True), ("false", False)):
        git("config", "uploadpack.allowFilter", allowed, cwd=demo.server)
        target = tmp_path / f"q-{allowed}.git"
        pygit2.init_repository(str(target), bare=True)
        spec = [f"+{deploy_ref('alpha')}:refs/gitops/incoming"]
        assert transport.fetch_commits_only(target, str(demo.server), spec) is filtered


# -- 8. certificates are checked now, not only at the signer's date --------------------------


def test_backdated_commit_cannot_use_an_expired_certificate(
    demo: DemoFleet, tmp_path: Path
) -> None:
    ca, key = tmp_path / "ca", tmp_path / "publisher"
    for path in (ca, key):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", path], check=True)
    subprocess.run(
        ["ssh-keygen", "-q", "-s", ca, "-I", "publisher", "-n", PUBLISHER, "-V",
         "20190101:20191231", f"{key}.pub"],
        check=True,
    )  # fmt: skip
    trust = tmp_path / "cert.allowed_signers"
    ca_line = (tmp_path / "ca.pub").read_text().strip()
    trust.write_text(f'{PUBLISHER} cert-authority,namespaces="git" {ca_line}\n')
    tree = git("rev-parse", f"{deploy_ref('beta')}^{{tree}}", cwd=demo.server)
    dated = {
        "GIT_AUTHOR_DATE": "2019-06-01T12:00:00Z",
        "GIT_COMMITTER_DATE": "2019-06-01T12:00:00Z",
        "GIT_AUTHOR_NAME": "publisher",
        "GIT_AUTHOR_EMAIL": PUBLISHER,
        "GIT_COMMITTER_NAME": "publisher",
        "GIT_COMMITTER_EMAIL": PUBLISHER,
    }
    sha = subprocess.run(
        ["git", "--git-dir", str(demo.server), "-c", "gpg.format=ssh", "-c",
         f"user.signingKey={key}-cert.pub", "commit-tree", "-S", tree, "-m",
         f"deploy beta: backdated\n\n{TRAILER_HOST}: beta"],
        env={**os.environ, **dated},
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()  # fmt: skip
    git("update-ref", deploy_ref("beta"), sha, cwd=demo.server)
    outcome = once(demo, "beta", trusted_publishers=str(trust))
    assert_refused(outcome, "certificate")
    assert "expired" in outcome.reason or "not valid now" in outcome.reason, outcome.reason


# -- 9. broken state and trust files: one clear line, and a report when possible --------------


STATE_CASES = [
    ("applied", 5, "agent state field 'applied' is 5, expected a commit id"),
    ("applied", "zz", "agent state field 'applied' is 'zz', expected a commit id"),
    ("applied", ["x"], "agent state field 'applied' is ['x'], expected a commit id"),
    ("last_report_time", "yesterday", "'last_report_time' is 'yesterday', expected a UTC time"),
    ("bad_commits", "abc", "'bad_commits' is 'abc', expected a list"),
    ("builds", [{"commit": 5, "ok": True}], "'builds[0].commit' is 5"),
    (
        "builds",
        [{"commit": "a" * 40, "ok": "yes"}],
        "'builds[0].ok' is 'yes', expected true or false",
    ),
    ("builds", [{"commit": "a" * 40, "ok": False, "time": "soon"}], "'builds[0].time' is 'soon'"),
    ("version", "1", "'version' is '1', expected 1"),
    ("surprise", 1, "'surprise' is 1, expected no such field"),
]


@pytest.mark.parametrize(("name", "value", "message"), STATE_CASES)
def test_state_with_wrong_types_is_one_clear_line(
    demo: DemoFleet, name: str, value: object, message: str
) -> None:
    assert once(demo, "beta").result == "applied"
    path = state_dir(demo, "beta") / "state.json"
    data = json.loads(path.read_text())
    data[name] = value
    path.write_text(json.dumps(data))
    outcome = once(demo, "beta")
    assert outcome.code == 1 and outcome.result is None
    assert outcome.stderr.count("\n") == 1 and "Traceback" not in outcome.stderr, outcome.stderr
    assert outcome.stderr.startswith(f"gitops: error: {path}: ")
    assert message in outcome.stderr
    assert "restore state.json" in outcome.stderr


def test_state_times_are_parsed_at_load(demo: DemoFleet) -> None:
    assert run(demo, "beta").result == Result.APPLIED
    state = StateStore(state_dir(demo, "beta")).load("beta")
    assert state is not None and isinstance(state.last_report_time, datetime)
    text = (state_dir(demo, "beta") / "state.json").read_text()
    assert format_time(state.last_report_time) in text
    legacy = json.loads(text)
    legacy["last_report_time"] = "2026-01-02T03:04:05.678901+00:00"  # what agents wrote before
    (state_dir(demo, "beta") / "state.json").write_text(json.dumps(legacy))
    demo.agent_config("beta").status_file.unlink()  # so that status reads the state itself
    status = gitops("agent", "--config", agent_config_file(demo, "beta"), "status", "--json")
    assert json.loads(status.stdout)["last_report_time"] == "2026-01-02T03:04:05Z"
    loaded = StateStore(state_dir(demo, "beta")).load("beta")
    assert loaded is not None and loaded.last_report_time == datetime(
        2026, 1, 2, 3, 4, 5, 678901, tzinfo=UTC
    )


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"publisher@example.org ssh-ed25519 \xff\xfe\n", "trusted publishers unusable"),
        (b"publisher@example.org ssh-ed25519 not-base64!\n", "trusted publishers unusable"),
        (b"# nobody\n", "lists no publisher key"),
    ],
)
def test_broken_trust_file_is_reported_as_misconfigured(
    demo: DemoFleet, tmp_path: Path, content: bytes, message: str
) -> None:
    trust = tmp_path / "broken.allowed_signers"
    trust.write_bytes(content)
    outcome = once(demo, "beta", trusted_publishers=str(trust))
    assert (outcome.code, outcome.result) == (1, "misconfigured"), outcome
    assert message in outcome.reason and str(trust) in outcome.reason
    assert remote_reports(demo, "beta")[-1].result == Result.MISCONFIGURED
    assert not (state_dir(demo, "beta") / "quarantine.git").exists(), "nothing was fetched"


def test_min_commit_that_is_not_a_commit_id_is_misconfigured(demo: DemoFleet) -> None:
    outcome = once(demo, "beta", min_commit="main")
    assert (outcome.code, outcome.result) == (1, "misconfigured"), outcome
    assert "min_commit 'main' is not a full commit id" in outcome.reason


def test_state_is_refused_with_a_clear_error_through_the_api(demo: DemoFleet) -> None:
    path = state_dir(demo, "beta") / "state.json"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xff{}")
    with pytest.raises(GitopsError, match="not UTF-8"):
        StateStore(path.parent).load("beta")
    path.write_text("[]")
    with pytest.raises(GitopsError, match="not a JSON object"):
        StateStore(path.parent).load("beta")
    path.write_text("[" * 100_000)
    with pytest.raises(GitopsError, match="corrupt"):
        StateStore(path.parent).load("beta")
