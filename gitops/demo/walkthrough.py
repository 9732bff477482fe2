"""``gitops demo``: the whole loop on one machine, through the gitops server.

Keys for a publisher and every host, a fleet repository made from this repository's
``hosts/``, and the gitops server in front of it (gitops/demo/served.py); then: build the
changed hosts centrally into a signed ``file://`` cache and publish with the systems pinned
(every agent runs in substitute mode), run every agent, change one profile and publish again (only its hosts rebuild), break a
build and a health check, attack (the server refuses each attempt; what is written past
it, the agents refuse), enrol a new machine and deliver it a secret, let a canary wave
halt a bad change (gitops/demo/waves.py), and build the site from the server.

The walkthrough is a library too: the end-to-end test (tests/test_demo.py) plays it and
checks every step.
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pygit2

from gitops import output
from gitops.agent.cycle import CycleResult
from gitops.demo import standin, waves
from gitops.demo.scenario import CACHE_KEY_NAME, InventoryHost, default_inventory, read_inventory
from gitops.demo.served import Refusal, ServedFleet
from gitops.demo.waves import WavesOutcome
from gitops.errors import GitopsError
from gitops.protocol import deploy_ref
from gitops.publish import plan as publish
from gitops.sitegen.serve import serve_site


def _pick_profile(inventory: list[InventoryHost]) -> str:
    """The profile used by the fewest hosts (but at least two when possible)."""
    counts: dict[str, int] = {}
    for host in inventory:
        for profile in host.profiles:
            counts[profile] = counts.get(profile, 0) + 1
    if not counts:
        raise GitopsError("the inventory's hosts use no profiles")
    several = {p: n for p, n in counts.items() if n >= 2 and n < len(inventory)}
    pool = several or counts
    return min(sorted(pool), key=lambda p: pool[p])


def _summary(results: dict[str, CycleResult]) -> str:
    return "\n".join(f"    {host:<16} {r.result:<13} {r.reason}" for host, r in results.items())


def _substituted(results: dict[str, CycleResult]) -> tuple[str, ...]:
    """The hosts whose cycle fetched the pinned system and built nothing (report durations)."""
    return tuple(
        host
        for host, r in results.items()
        if r.report is not None
        and "substitute" in r.report.durations
        and "build" not in r.report.durations
    )


def _built_centrally(demo: ServedFleet) -> str:
    """What the last ``gitops build`` did, in the walkthrough's words."""
    built = demo.last_build
    if built is None:
        return "   gitops build: nothing to build"
    count = len(built.built)
    lines = [
        f"   gitops build: {count} changed host{'' if count == 1 else 's'} built on the build "
        f"host, their closures signed\n   ({CACHE_KEY_NAME}) and copied to the cache {demo.cache_url}"
    ]
    if built.failed:
        names = ", ".join(f.host for f in built.failed)
        lines.append(
            f"   {names}: does not build; 'gitops publish --systems' holds it back, so its\n"
            "   deploy branch does not move and the host never sees the change"
        )
    lines.append("   gitops publish --systems: each deploy commit pins its system (System-Path)")
    return "\n".join(lines)


def _fetched(results: dict[str, CycleResult], *, explain: bool) -> str:
    hosts = _substituted(results)
    if not hosts:
        return "   no host fetched a system this time"
    said = (
        f"   substitute mode: {len(hosts)} hosts realised the store path their signed deploy "
        "commit pins"
    )
    if not explain:
        return said + "; none evaluated or built anything"
    return said + (
        ",\n   from the cache only and only if signed by the key they pin (nix-store --realise,"
        "\n   require-sigs); none evaluated or built anything. On this one machine the build"
        "\n   host and the hosts share one Nix store, so the path was already there and nothing"
        "\n   was downloaded; tests/test_agent_substitute.py deletes it first to show the real fetch"
    )


def _refusals(refusals: tuple[Refusal, ...]) -> str:
    return "\n".join(f"   - {r.attempt}\n       {r.line}" for r in refusals)


NEW_HOST = "lab-ws-1"
SECRET = "wifi-lab"


@dataclass(frozen=True)
class Enrolment:
    """A new machine enrols itself and gets a secret (step 7)."""

    host: str
    proposal: str  # the commit on enroll/<host>
    verdict: tuple[str, ...]  # the admin's review: the problems found (none)
    merge: str  # the admin's signed merge commit
    secret_file: str  # secrets/<name>.age in the fleet repository
    published: tuple[str, ...]  # the hosts whose deploy branch moved
    deploy_files: tuple[str, ...]  # what deploy/<host> carries under secrets/
    result: CycleResult
    delivered: bool  # the decrypted file holds exactly what the admin wrote
    mode: int  # its permission bits
    found: tuple[str, ...]  # where the plaintext was found in git or the Nix store (nowhere)
    objects: int  # git objects searched
    store_paths: int  # store paths searched
    secrets_dir: Path  # the tmpfs directory the demo used, removed after the step


@dataclass(frozen=True)
class DemoOutcome:
    """What each step of the walkthrough did (the end-to-end test checks all of it)."""

    cache_key: str  # the public key of the fleet's binary cache, pinned on every host
    first_publish: tuple[str, ...]
    first_run: dict[str, CycleResult]
    substituted: tuple[str, ...]  # hosts that fetched their pinned system (steps 3 and 4)
    changed_profile: str
    profile_users: tuple[str, ...]
    second_publish: tuple[str, ...]
    second_run: dict[str, CycleResult]
    broken: str
    unhealthy: str
    held_back: tuple[str, ...]  # hosts gitops build could not build: not published
    failures: dict[str, CycleResult]
    attacker: str  # the host whose key tries what a host must not
    unsigned_victim: str
    rollback_victim: str
    refusals: tuple[Refusal, ...]  # what the server answered each attempt through it
    attacks: dict[str, CycleResult]  # what the agents did with what was written past it
    enrolment: Enrolment
    site: Path
    waves: WavesOutcome | None = None  # the canary wave that halted a bad change


def _pick_enrol_profile(inventory: list[InventoryHost]) -> str:
    counts: dict[str, int] = {}
    for host in inventory:
        for profile in host.profiles:
            counts[profile] = counts.get(profile, 0) + 1
    return "workstation" if "workstation" in counts else max(sorted(counts), key=counts.__getitem__)


def _deploy_secrets(demo: ServedFleet, host: str) -> tuple[str, ...]:
    repo = demo.repository()
    tree = repo.revparse_single(deploy_ref(host)).peel(pygit2.Tree)
    if "secrets" not in tree:
        return ()
    return tuple(sorted(f"secrets/{e.name}" for e in tree["secrets"].peel(pygit2.Tree)))


def _enrol(demo: ServedFleet, say: Callable[[str], None], profile: str) -> Enrolment:
    name = NEW_HOST
    say(f"7. A new machine, {name}, enrols itself; the admin accepts it and gives it a secret")
    proposed = demo.propose_host(name, profile)
    say(
        f"   on {name}: 'gitops enroll --remote FORGE --name {name} --profile {profile}'\n"
        f"   made its host key ({proposed.key.fingerprint}), read its facts\n"
        f"   and pushed enroll/{name}: hosts/{name}/ on top of main, signed with that key.\n"
        "   It goes to the forge: the gitops server refuses enroll/*, since a machine not yet\n"
        "   in main has no key there"
    )
    review = demo.review_enrolment(name)
    verdict = "ready to accept" if review.ok else "refused: " + "; ".join(review.problems)
    say(f"   gitops enroll list: {name} {str(review.commit)[:8]}: {verdict}")
    merge = demo.accept_enrolment(name)
    plaintext = f"psk={os.urandom(16).hex()}\n".encode()
    secret_file = demo.declare_secret(SECRET, name, plaintext)
    say(
        f"   gitops enroll accept {name}: merge {merge[:8]}, signed by the admin; and a secret\n"
        f"   for it: {secret_file}, encrypted to {name}'s host key and the admin's"
    )
    demo.merge_change({}, f"Merge pull request #4 from alice/{name}\n\n{name}: enrol, {SECRET}")
    say(f"   gitops server sync: hosts/{name}.git, and {name}'s key let in for it alone")
    published = demo.publish()
    say(_built_centrally(demo))
    deploy_files = _deploy_secrets(demo, name)
    moved = ", ".join(f"deploy/{h}" for h in sorted(published.commits))
    say(
        f"   publish: {moved} moved; deploy/{name} carries {', '.join(deploy_files)}:\n"
        "   the ciphertext and where it goes, nothing a reader of git can decrypt"
    )
    home = demo.use_memory_for_secrets()
    try:
        result = demo.run_agent(name)
        say(_summary({name: result}))
        secrets_dir = demo.agent_config(name).secrets_dir
        target = secrets_dir / SECRET
        delivered = target.is_file() and target.read_bytes() == plaintext
        mode = target.stat().st_mode & 0o777 if target.is_file() else 0
        say(
            f"   the secret arrived: {target}\n   (mode {mode:04o}, on a tmpfs) holds what the admin wrote"
            if delivered
            else f"   the secret did not arrive in {target}"
        )
        found, objects, paths = demo.plaintext_found(plaintext, name)
        say(
            f"   its plaintext is in none of the demo's git repositories ({objects} objects) nor in\n"
            f"   {name}'s system in the Nix store ({paths} store paths)"
            if not found
            else "   its plaintext was found in: " + ", ".join(found)
        )
    finally:
        demo.forget_secrets()
    say(f"   (the demo's secrets directory {home} is removed again)\n")
    return Enrolment(
        host=name,
        proposal=str(proposed.commit),
        verdict=review.problems,
        merge=merge,
        secret_file=secret_file,
        published=tuple(sorted(published.commits)),
        deploy_files=deploy_files,
        result=result,
        delivered=delivered,
        mode=mode,
        found=tuple(found),
        objects=objects,
        store_paths=paths,
        secrets_dir=home,
    )


def play(demo: ServedFleet, say: Callable[[str], None] = output.say) -> DemoOutcome:
    """The walkthrough, step by step, telling ``say`` what happens."""
    inventory = demo.inventory
    if len(inventory) < 4:
        raise GitopsError("the demo needs at least 4 hosts in the inventory")
    say(
        f"1. Keys for a publisher and {len(inventory)} hosts; a fleet repository from hosts/, "
        "on a stand-in forge; the gitops server in front of it"
    )
    demo.create()
    say(
        f"   fleet: {demo.repo_dir}\n   forge: {demo.forge}\n   gitops server: {demo.layout.root}"
        " (one repository per host, hooks, authorized_keys with forced commands)\n"
        f"   No sshd in the demo: a stand-in ssh ({demo.bin_dir / 'ssh'}) runs the forced\n"
        "   command of the key's line in the server's authorized_keys, as sshd would\n"
        "   (docs/server.md sets up the real one).\n"
    )
    cache_key = demo.use_central_builds()
    say(
        f"   Central builds: a signing key for the fleet's binary cache (nix key generate-secret),\n"
        f"   the cache {demo.cache_url}; every host runs its agent in substitute mode\n"
        f"   with that cache and the public key {cache_key.split(':')[0]}:... pinned\n"
    )

    say(
        "2. Publish: each host's system built once, centrally; one signed commit on deploy/<host>\n"
        "   per host, pinning that system, pushed with the publisher's key"
    )
    first = demo.publish()
    say(_built_centrally(demo))
    say(
        f"   {len(first.commits)} deploy branches checked by the server and handed to each "
        "host's repository\n"
    )

    say(
        "3. Every agent runs once with its host's key: fetch its branch from hosts/<host>.git, "
        "verify, fetch the pinned system, switch, report"
    )
    first_run = demo.run_agents()
    say(_summary(first_run))
    say(_fetched(first_run, explain=True) + "\n")

    profile = _pick_profile(inventory)
    users = tuple(h.name for h in inventory if profile in h.profiles)
    say(
        f"4. A pull request changes profile '{profile}' (used by {', '.join(users)}): a package "
        "and a new kernel; merged on the forge, mirrored by 'gitops server sync'"
    )
    demo.merge_change(
        {
            f"profiles/{profile}.nix": standin.profile_file(
                profile, ["ripgrep"], {"kernel": '"6.12.9"'}
            )
        },
        f"Merge pull request #2 from alice/{profile}-ripgrep\n\n{profile}: add ripgrep, kernel 6.12",
    )
    plan = publish.make_plan(demo.repository(), "main")
    say(
        f"   plan: {len(plan.changed)} of {len(plan.hosts)} hosts change: {', '.join(h.host for h in plan.changed)}"
    )
    second = demo.publish()
    say(_built_centrally(demo))
    say(f"   published {len(second.commits)} commits; the other hosts' branches did not move")
    second_run = demo.run_agents()
    say(_summary(second_run))
    say(_fetched(second_run, explain=False) + "\n")

    # The rollback victim must have moved on (two deploy commits): one of the profile's users.
    by_name = {h.name: h for h in inventory}
    victim_rollback = users[-1]
    others = [h.name for h in inventory if h.name not in users] + [
        u for u in users if u != victim_rollback
    ]
    broken, unhealthy, victim_unsigned = by_name[others[0]], by_name[others[1]], others[2]
    say(
        f"5. A change that does not build for {broken.name}, and one that builds but is unhealthy on {unhealthy.name}"
    )
    demo.merge_change(
        {
            f"hosts/{broken.name}/configuration.nix": standin.host_configuration(
                broken.profiles, {"buildFails": "true"}
            ),
            f"hosts/{unhealthy.name}/configuration.nix": standin.host_configuration(
                unhealthy.profiles, {"unhealthy": "true"}
            ),
        },
        f"Merge pull request #3 from bob/tuning\n\n{broken.name}, {unhealthy.name}: tuning",
    )
    demo.publish()
    say(_built_centrally(demo))
    held_back = tuple(f.host for f in demo.last_build.failed) if demo.last_build else ()
    failures = demo.run_agents([broken.name, unhealthy.name])
    say(_summary(failures) + "\n")

    attacker = broken.name
    say("6. Attacks through the gitops server: each is refused there, and the attacker reads why")
    refusals = (
        demo.host_pushes_main(attacker),
        demo.host_reads_other(attacker, victim_unsigned),
        demo.host_fetches_by_id(attacker, victim_unsigned),
        demo.publisher_pushes_unsigned(victim_unsigned),
        demo.publisher_rolls_back(victim_rollback),
    )
    say(_refusals(refusals))
    say(
        f"   Past the server: someone with a shell on it writes an unsigned commit on "
        f"deploy/{victim_unsigned}\n   and moves deploy/{victim_rollback} back to an older, "
        "validly signed commit; the agents refuse both"
    )
    demo.push_unsigned(victim_unsigned)
    demo.push_rollback(victim_rollback)
    attacks = demo.run_agents([victim_unsigned, victim_rollback])
    say(_summary(attacks) + "\n")

    enrolled = _enrol(demo, say, _pick_enrol_profile(inventory))
    canary = next(
        h.name
        for h in inventory
        if h.name not in (broken.name, unhealthy.name, victim_unsigned, victim_rollback)
    )
    say(
        f"8. Waves: fleet.yaml makes {canary} the canary, then a change to the shared module "
        "breaks every host's health check;\n   gitops publish gives it to the canary wave only"
    )
    staged = waves.canary_halts(demo, canary, say)

    site = demo.root / "site"
    say(
        "9. The site, built from the gitops server's fleet.git alone (every report's signature checked)"
    )
    demo.build_site(site)
    say(
        f"   check any report with git: git --git-dir {demo.record} log --show-signature reports/{inventory[0].name}"
    )
    return DemoOutcome(
        cache_key=cache_key,
        first_publish=tuple(sorted(first.commits)),
        first_run=first_run,
        substituted=tuple(sorted(set(_substituted(first_run)) | set(_substituted(second_run)))),
        changed_profile=profile,
        profile_users=users,
        second_publish=tuple(sorted(second.commits)),
        second_run=second_run,
        broken=broken.name,
        unhealthy=unhealthy.name,
        held_back=held_back,
        failures=failures,
        attacker=attacker,
        unsigned_victim=victim_unsigned,
        rollback_victim=victim_rollback,
        refusals=refusals,
        attacks=attacks,
        enrolment=enrolled,
        site=site,
        waves=staged,
    )


def run(directory: Path | None, *, fleet: Path | None, serve: bool, port: int) -> int:
    root = directory or Path(tempfile.mkdtemp(prefix="gitops-demo-"))
    if directory is not None and directory.exists() and any(directory.iterdir()):
        raise GitopsError(f"{directory}: not empty; choose a new directory for the demo")
    if shutil.which("nix") is None:
        raise GitopsError("nix is not installed; run the README's demo command, which installs it")
    source = fleet or default_inventory()
    inventory = read_inventory(source)
    say = output.say
    say("nixos-gitops demo: a whole fleet on this machine, behind the gitops server")
    say("  Real git, real SSH signatures, real Nix builds and profiles. The systems are stand-ins:")
    say("  nixpkgs is not available offline, so each host's system is a small real derivation")
    say("  shaped like a NixOS toplevel (bin/switch-to-configuration, kernel, nixos-version).")
    say(f"  Working directory: {root}\n")
    root.mkdir(parents=True, exist_ok=True)
    # The summary lines say what each agent did; its own warnings would repeat them.
    agent_log = logging.getLogger("gitops.agent")
    if not agent_log.isEnabledFor(logging.INFO):
        agent_log.setLevel(logging.ERROR)
    outcome = play(ServedFleet(root, inventory, policies=source / "policies"), say)
    if serve:
        serve_site(outcome.site, port)
    return 0
