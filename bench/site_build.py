"""Benchmark ``gitops site build`` on a generated fleet, against another revision's code
(default ``main``) in the same run; prints figures, asserts nothing.

    .venv/bin/python bench/site_build.py --hosts 1000 --reports 720 [--cache /var/tmp/gitops-bench]
    .venv/bin/python bench/site_build.py --hosts 10000 --reports 30
    .venv/bin/python bench/site_build.py --hosts 10000 --reports 30 --with-without-sbom

The fleet repository (main with ``hosts/<host>/host.yaml`` and one Ed25519 key per host,
signed ``deploy/<host>`` chains, ``reports/<host>`` with ``--reports`` signed reports each
over 30 days: 720 is an hourly heartbeat, the default ``agent.report_interval``) is
written straight into pack files (bench/packwriter.py: no loose objects, no repack), one
per generating process, with a commit-graph as ``git gc`` writes it, and kept under
``--cache``: a later run with the same size reuses it. ``--sbom-sets N`` adds SBOMs (the
agent's: with the first report and after each switch) drawn from N package sets of
``--sbom-paths`` store paths each, the store paths' hashes different on every host.

For each code (``--base`` extracted with ``git archive``, then this checkout) it measures
a full build (no site cache), a build with nothing new, one after one new report, and a
rebuild after an upgrade (the site cache's rows and pages gone, its verdict store kept:
the base code has none, so it checks every signature again). ``--with-without-sbom``
builds the fleet with and without SBOMs (this checkout only). ``--profile`` also runs
each full build in one process under cProfile.

Each build runs the real CLI (``python -m gitops site build``) in a child process; peak
memory is the largest sum of PSS over the build's whole process tree (workers included),
sampled every 20 ms. Figures go to docs/benchmarks.md by hand.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import multiprocessing
import os
import resource
import shutil
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
from cryptography.hazmat.primitives.asymmetric import ed25519

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the neighbouring packwriter

from packwriter import PackWriter

from gitops.protocol import (
    SBOM_FILE,
    STATUS_FILE,
    TRAILER_HOST,
    TRAILER_SOURCE,
    Report,
    Result,
    SystemInfo,
    deploy_ref,
    reports_ref,
)
from gitops.report_commits import (
    AGENT_EMAIL_DOMAIN,
    create_report_commit,
    report_message,
)
from gitops.system import process
from gitops.trust import commits, sshsig
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.keys import public_line

ROOT = Path(__file__).resolve().parent.parent
PROFILES = ("workstation", "developer", "server", "kiosk")
# (days ago, profile touched or None for all, NixOS release the deploy brings)
PUBLISHES = (
    (30.0, None, "24.11.20241201.aaaaaaa"),
    (24.0, "workstation", "24.11.20250110.bbbbbbb"),
    (16.0, None, "25.05.20250601.ccccccc"),
    (7.0, "server", "25.05.20250701.ddddddd"),
    (0.7, "developer", "25.05.20250801.eeeeeee"),
)
PUBLISHER = "ci@example.org"
GENERATION_SEED = "gitops-bench"


def _key_for(name: str) -> ed25519.Ed25519PrivateKey:
    seed = hashlib.sha256(f"{GENERATION_SEED}:{name}".encode()).digest()
    return ed25519.Ed25519PrivateKey.from_private_bytes(seed)


def host_name(index: int) -> str:
    return f"host-{index:05d}"


def profile_of(index: int) -> str:
    return PROFILES[index % len(PROFILES)]


@dataclass(frozen=True)
class Scenario:
    kind: str  # healthy pending failed rolled-back rejected stale never unverified offline
    drift: bool
    reboot: bool


def scenario_of(index: int) -> Scenario:
    bucket = (index * 7919) % 1000
    kind = "healthy"
    for limit, name in (
        (50, "pending"),
        (80, "failed"),
        (95, "rolled-back"),
        (105, "rejected"),
        (135, "stale"),
        (145, "never"),
        (150, "unverified"),
        (160, "offline"),
    ):
        if bucket < limit:
            kind = name
            break
    return Scenario(kind, drift=bucket % 53 == 7, reboot=bucket % 19 == 3)


def _fleet_yaml(publisher_key: ed25519.Ed25519PrivateKey) -> str:
    return (
        "name: bench\n"
        "publishers:\n"
        f"  - principal: {PUBLISHER}\n"
        f"    key: {public_line(publisher_key).strip()}\n"
        "agent:\n  report_interval: 1h\n"
        "thresholds:\n  stale_after: 1d\n"
        "site:\n"
        "  title: Bench fleet\n"
        "  commit_url: https://git.example.org/org/fleet/commit/{sha}\n"
        "  pull_request_url: https://git.example.org/org/fleet/pulls/{number}\n"
    )


def _blob(repo: pygit2.Repository, text: str) -> pygit2.Oid:
    return repo.create_blob(text.encode())


def _tree(repo: pygit2.Repository, entries: Mapping[str, Any]) -> pygit2.Oid:
    builder = repo.TreeBuilder()
    for name, value in sorted(entries.items()):
        if isinstance(value, dict):
            builder.insert(name, _tree(repo, value), pygit2.enums.FileMode.TREE)
        else:
            builder.insert(name, value, pygit2.enums.FileMode.BLOB)
    return builder.write()


def _main_history(
    repo: pygit2.Repository, hosts: int, now: datetime, publisher: ed25519.Ed25519PrivateKey
) -> list[pygit2.Oid]:
    """One main commit per publish (the first a plain import, the rest merged pull requests)."""
    host_dirs: dict[str, object] = {}
    for index in range(hosts):
        name = host_name(index)
        key = public_line(_key_for(name)).strip()
        host_yaml = (
            f"key: {key}\nprofiles: [{profile_of(index)}]\n"
            f"tags: [{'laptop' if index % 3 else 'rack'}, site-{index % 5}]\n"
            f"owner: team-{index % 12}@example.org\n"
        )
        if index % 97 == 0:
            host_yaml += (
                "exemptions:\n  - policy: disk-encryption\n    reason: lab machine, no secrets\n"
                "    expires: 2099-01-01\n"
            )
        host_dirs[name] = {
            "host.yaml": _blob(repo, host_yaml),
            "configuration.nix": _blob(repo, f"{{ ... }}: {{ networking.hostName = {name!r}; }}\n"),
        }
    policies = {
        p.name: _blob(repo, p.read_text()) for p in sorted((ROOT / "policies").glob("*.yaml"))
    }
    parents: list[pygit2.Oid] = []
    result = []
    for number, (days, profile, release) in enumerate(PUBLISHES):
        profiles = {
            f"{p}.nix": _blob(repo, f"# {p}\n{{ ... }}: {{ system.stateVersion = {release!r}; }}\n")
            for p in PROFILES
        }
        tree = _tree(
            repo,
            {
                "fleet.yaml": _blob(repo, _fleet_yaml(publisher)),
                "flake.nix": _blob(repo, f"# nixpkgs {release}\n{{ outputs = _: {{ }}; }}\n"),
                "hosts": host_dirs,
                "profiles": profiles,
                "policies": policies,
            },
        )
        when = now - timedelta(days=days)
        author = commits.signature_of("Alice Admin", "alice@example.org", when)
        if number == 0:
            message = "Import the fleet\n"
        else:
            message = (
                f"Merge pull request #{10 + number} from alice/update-{profile or 'all'}\n\n"
                f"Update {profile or 'every profile'} to {release}\n"
            )
        oid = repo.create_commit(None, author, author, message, tree, parents)
        parents = [oid]
        result.append(oid)
    repo.references.create("refs/heads/main", parents[0], force=True)
    return result


def _touches(index: int, profile: str | None) -> bool:
    return profile is None or profile_of(index) == profile


def _sbom_template(set_index: int, paths: int) -> str:
    """The CycloneDX text of package set ``set_index`` (``paths`` store paths), with
    placeholders for what differs per host: its name, its system and the hash part of
    every store path (:func:`_sbom_for`)."""
    from gitops.inventory.sbom import build_sbom, packages_of  # the library loads slowly

    closure = [
        f"/nix/store/{_PLACEHOLDER}{i:05d}-pkg{i % 997}-{set_index}.{i % 7}.{i % 13}"
        for i in range(paths)
    ]
    system = f"/nix/store/{_PLACEHOLDER}99999-nixos-system-{_HOST}"
    return build_sbom(
        host=_HOST,
        system=system,
        nixos_version=_RELEASE,
        packages=packages_of(closure, system),
        time=datetime(2026, 1, 1, tzinfo=UTC),
    )


_PLACEHOLDER = "p" * 27  # + 5 digits: a 32-character store hash
_HOST = "@@host@@"
_RELEASE = "@@release@@"


def _sbom_for(template: str, name: str, release: str) -> bytes:
    """A host's SBOM: the set's packages at store paths of its own (each host builds its
    system itself, so most hashes differ), its name and its release."""
    prefix = hashlib.sha1(f"{name}{release}".encode()).hexdigest()[:27]
    text = template.replace(_PLACEHOLDER, prefix).replace(_HOST, name)
    return text.replace(_RELEASE, release).encode()


def _generate_hosts(args: tuple[str, list[int], int, list[str], float, int, int]) -> dict[str, str]:
    """Worker: deploy chain and reports for some hosts, into a pack of its own; returns
    ref name -> head."""
    path, indexes, reports, main_commits, now_ts, sbom_sets, sbom_paths = args
    # sshsig.sign derives the public key on every call (a third of its time): once a key here
    sshsig.public_key_of = functools.lru_cache(maxsize=4)(sshsig.public_key_of)  # type: ignore[assignment]
    pack = PackWriter(Path(path) / "objects")
    now = datetime.fromtimestamp(now_ts, UTC)
    publisher = _key_for("publisher")
    templates = [_sbom_template(s, sbom_paths) for s in range(sbom_sets)]
    heads: dict[str, str] = {}
    for index in indexes:
        name = host_name(index)
        scenario = scenario_of(index)
        # -- deploy chain: (time, oid, release) for each publish touching this host
        chain: list[tuple[datetime, str, str, str]] = []
        parent: str | None = None
        for number, (days, profile, release) in enumerate(PUBLISHES):
            if not _touches(index, profile):
                continue
            when = now - timedelta(days=days, seconds=index % 600)
            config = pack.blob(f"# {name} {release}\n".encode())
            host_tree = pack.tree({"configuration.nix": ("100644", config)})
            hosts_tree = pack.tree({name: ("40000", host_tree)})
            tree = pack.tree({"hosts": ("40000", hosts_tree)})
            message = commits.format_message(
                f"deploy {name}: publish {number}",
                f"Changed: hosts/{name}/configuration.nix",
                {TRAILER_SOURCE: main_commits[number], TRAILER_HOST: name},
            )
            parent = pack.signed_commit(
                tree=tree,
                parents=[parent] if parent is not None else [],
                name="ci",
                email=PUBLISHER,
                when=int(when.timestamp()),
                message=message,
                key=publisher,
            )
            chain.append((when, parent, release, main_commits[number]))
        assert parent is not None
        heads[deploy_ref(name)] = parent
        if scenario.kind == "never":
            continue
        # -- reports, oldest first, evenly over 30 days, the last about an hour ago
        key = _key_for(f"intruder-{name}") if scenario.kind == "unverified" else _key_for(name)
        end = now - timedelta(hours=1 + index % 5)
        if scenario.kind == "stale":
            end = now - timedelta(days=3)
        step = timedelta(days=30) / reports
        previous: str | None = None
        generation = 0
        applied: tuple[datetime, str, str, str] | None = None
        for number in range(reports):
            when = end - step * (reports - 1 - number)
            visible = [c for c in chain if c[0] <= when]
            head = visible[-1] if visible else None
            last = number == reports - 1
            result = Result.UNCHANGED
            if head is not None and (applied is None or applied[1] != head[1]):
                hold_back = scenario.kind == "pending" and head is chain[-1]
                if not hold_back:
                    applied = head
                    generation += 1
                    result = Result.APPLIED
            if last and scenario.kind in ("failed", "rolled-back", "rejected", "offline"):
                result = {
                    "failed": Result.BUILD_FAILED,
                    "rolled-back": Result.ROLLED_BACK,
                    "rejected": Result.REJECTED,
                    "offline": Result.FETCH_FAILED,
                }[scenario.kind]
            release = applied[2] if applied else "unknown"
            store = f"/nix/store/{hashlib.sha1(f'{name}{release}'.encode()).hexdigest()[:32]}"
            store += f"-nixos-system-{name}-{release}"
            current = (
                store
                if not (scenario.drift and last)
                else store.replace("/nix/store/", "/nix/store/0")
            )
            report = Report(
                host=name,
                time=when,
                agent_version="0.1.0",
                result=result,
                reason=f"{result} at generation {generation}",
                report_id=uuid.UUID(int=(index << 32) + number).hex,
                deploy_seen=head[1] if head else None,
                deploy_applied=applied[1] if applied else None,
                source_commit=applied[3] if applied else None,
                system=SystemInfo(
                    store_path=store,
                    generation=generation,
                    current_system=current,
                    booted_system=store,
                    nixos_version=release,
                    configuration_revision=None,
                    current_kernel="/nix/store/k-linux-6.6.30/bzImage",
                    booted_kernel="/nix/store/k-linux-6.6.30/bzImage",
                    reboot_required=scenario.reboot and last,
                ),
                facts=_facts(index, name),
                durations={"fetch": 0.4, "build": 31.2, "activate": 4.1, "total": 36.0},
                log_tail=(
                    "error: builder for '/nix/store/x-foo.drv' failed with exit code 1\n"
                    if result in (Result.BUILD_FAILED, Result.ROLLED_BACK)
                    else ""
                ),
            )
            files = {STATUS_FILE: ("100644", pack.blob(report.to_json().encode()))}
            if templates and (result is Result.APPLIED or number == 0):
                # the agent sends an SBOM with the first report and after each switch
                sbom = _sbom_for(templates[index % len(templates)], name, release)
                files[SBOM_FILE] = ("100644", pack.blob(sbom))
            previous = pack.signed_commit(
                tree=pack.tree(files),
                parents=[previous] if previous is not None else [],
                name=f"gitops-agent {name}",
                email=f"{name}@{AGENT_EMAIL_DOMAIN}",
                when=int(when.timestamp()),
                message=report_message(report),
                key=key,
            )
        assert previous is not None
        heads[reports_ref(name)] = previous
    pack.close()
    return heads


def _facts(index: int, name: str) -> dict[str, object]:
    gib = 1 << 30
    server = profile_of(index) == "server"
    return {
        "firewall": "inactive" if index % 31 == 5 else "active",
        "ssh_password_login": "enabled" if index % 23 == 4 else "disabled",
        "ssh_root_login": "prohibit-password",
        "disk_encryption": "none" if server and index % 2 else "luks",
        "luks_devices": ["cryptroot"],
        "gc_timer": "absent" if index % 41 == 9 else "enabled",
        "auto_upgrade_timer": "enabled" if index % 59 == 11 else "absent",
        "failed_units": ["backup.service"] if index % 29 == 6 else [],
        "uptime_seconds": 86400 * (index % 20),
        "disk_free_bytes": {"/": (index % 50) * gib, "/nix": (index % 70) * gib},
        "disk_total_bytes": {"/": 100 * gib, "/nix": 100 * gib},
        "machine_id": hashlib.md5(name.encode()).hexdigest(),
        "nixos_version": "unknown",
    }


def generate(
    path: Path, hosts: int, reports: int, *, sbom_sets: int = 0, sbom_paths: int = 0
) -> float:
    """Create the fleet repository at ``path``; returns seconds taken."""
    started = time.monotonic()
    tmp = path.with_name(path.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    repo = pygit2.init_repository(str(tmp), bare=True)
    now = datetime.now(UTC).replace(microsecond=0)
    publisher = _key_for("publisher")
    main_commits = [str(o) for o in _main_history(repo, hosts, now, publisher)]
    workers = os.cpu_count() or 2
    groups = min(hosts, workers)  # one pack per process, as a packed server has few
    chunks = [list(range(i, hosts, groups)) for i in range(groups)]
    jobs = [
        (str(tmp), chunk, reports, main_commits, now.timestamp(), sbom_sets, sbom_paths)
        for chunk in chunks
    ]
    heads: dict[str, str] = {}
    with multiprocessing.get_context("fork").Pool(workers) as pool:
        for done, part in enumerate(pool.imap_unordered(_generate_hosts, jobs), start=1):
            heads.update(part)
            print(f"  generated {done}/{len(jobs)} host groups", file=sys.stderr, flush=True)
    lines = [f"{target} {name}\n" for name, target in sorted(heads.items())]
    (tmp / "packed-refs").write_text(
        "# pack-refs with: peeled fully-peeled sorted \n" + "".join(lines)
    )
    (tmp / "HEAD").write_text("ref: refs/heads/main\n")
    _check_signatures(tmp, publisher)
    # What `git gc` (run by receive-pack as the server takes pushes) also writes.
    print("  writing the commit-graph (git commit-graph write --reachable)", file=sys.stderr)
    process.run(["git", "-C", str(tmp), "commit-graph", "write", "--reachable"], check=True)
    (tmp / "bench-generated.json").write_text(
        json.dumps(
            {
                "hosts": hosts,
                "reports": reports,
                "sbom_sets": sbom_sets,
                "sbom_paths": sbom_paths,
                "now": now.isoformat(),
            }
        )
    )
    tmp.rename(path)
    return time.monotonic() - started


def _check_signatures(path: Path, publisher: ed25519.Ed25519PrivateKey) -> None:
    """The pack writer's commits verify as the site verifies them (one host's heads)."""
    repo = pygit2.Repository(str(path))
    name = host_name(0)
    host = AllowedSigners.of([(f"{name}", sshsig.public_key_of(_key_for(name)))])
    ci = AllowedSigners.of([(PUBLISHER, sshsig.public_key_of(publisher))])
    for ref, trust in ((deploy_ref(name), ci), (reports_ref(name), host)):
        target = repo.references[ref].target
        commits.verify_commit(repo, str(target), trust)


def add_one_report(path: Path) -> str:
    """Append one new signed report to the first healthy host's branch (the incremental case)."""
    repo = pygit2.Repository(str(path))
    index = next(i for i in range(10**6) if scenario_of(i).kind == "healthy")
    name = host_name(index)
    ref = repo.references[reports_ref(name)]
    head = repo.get(ref.target)
    assert isinstance(head, pygit2.Commit)
    blob = head.tree["status.json"]
    assert isinstance(blob, pygit2.Blob)
    old = Report.from_json(bytes(blob.data))
    report = Report(
        host=name,
        time=datetime.now(UTC).replace(microsecond=0),
        agent_version=old.agent_version,
        result=Result.UNCHANGED,
        reason="heartbeat",
        report_id=uuid.uuid4().hex,
        deploy_seen=old.deploy_seen,
        deploy_applied=old.deploy_applied,
        system=old.system,
        facts=old.facts,
    )
    oid = create_report_commit(repo, report, parent=head.id, key=_key_for(name))
    ref.set_target(oid)
    return name


class TreeMemory:
    """Sample the memory of this process's descendants until stopped: the sum of their
    PSS (proportional set size: pages shared after fork counted once, not per process)."""

    def __init__(self) -> None:
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> TreeMemory:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join()

    @staticmethod
    def _pss(pid: int) -> int:
        try:
            with open(f"/proc/{pid}/smaps_rollup") as handle:
                for line in handle:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except OSError:
            pass
        return 0

    def _run(self) -> None:
        me = os.getpid()
        while not self._stop.wait(0.02):
            parents: dict[int, int] = {}
            for entry in os.scandir("/proc"):
                if not entry.name.isdigit():
                    continue
                try:
                    with open(f"/proc/{entry.name}/stat") as handle:
                        fields = handle.read().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(fields[1])
            total = 0
            for pid in parents:
                ancestor = parents.get(pid)
                while ancestor and ancestor != me:
                    ancestor = parents.get(ancestor)
                if ancestor == me:
                    total += self._pss(pid)
            self.peak = max(self.peak, total)


def timed_build(
    repo: Path,
    out: Path,
    code: Path,
    *,
    profile: Path | None = None,
    options: Sequence[str] = (),
) -> tuple[float, float, int, str]:
    """Wall seconds, CPU seconds (user + system, workers included), peak memory of the
    process tree, and the build's phases line; ``code`` is where the gitops package is."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.monotonic()
    command = [sys.executable, "-m", "gitops", "-v", "site", "build"]
    command += ["--repo", str(repo), "--out", str(out), *options]
    if profile is not None:  # in one process, so that cProfile sees the workers' work too
        command = [sys.executable, "-c", _PROFILED, str(repo), str(out), str(profile)]
    environment = {**os.environ, "PYTHONPATH": str(code)}
    with TreeMemory() as memory:  # cwd: "python -m" puts it first on the module path
        result = process.run(command, check=True, env=environment, cwd=code)
    wall = time.monotonic() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    lines = result.stderr.splitlines()
    phases = next((line for line in lines if "phases" in line), "")
    checked = next((line for line in lines if "signatures checked" in line), "")
    waiting = checked.split("; older reports of ", 1)[1].split()[0] if "; older" in checked else "0"
    checked = checked.split("(", 1)[-1].split(")")[0]  # "N read from git, M signatures checked"
    return (
        wall,
        cpu,
        memory.peak,
        f"{checked}, {waiting} hosts' history waiting; {phases.removeprefix('site: ')}",
    )


def pending(line: str) -> int:
    """The hosts whose older reports a next build reads, from timed_build's line."""
    return int(line.split(" hosts' history waiting")[0].rsplit(", ", 1)[-1])


def reads_history_on(code: Path) -> bool:
    """Whether the code at ``code`` reads long histories over several builds."""
    return "--history-hosts" in (code / "gitops" / "cli.py").read_text()


_PROFILED = """
import cProfile, sys
from pathlib import Path
from gitops.sitegen.build import build
repo, out, profile = sys.argv[1:4]
stats = cProfile.run("build(Path(repo), Path(out), workers=1)", profile)
print("site: phases (profiled, one process)", file=sys.stderr)
"""


def extract(revision: str, into: Path) -> str:
    """``revision``'s gitops package and site templates (git archive) in ``into``;
    returns its short id."""
    short = process.run(["git", "-C", str(ROOT), "rev-parse", "--short", revision], check=True)
    tar = into / "code.tar"
    process.run(
        ["git", "-C", str(ROOT), "archive", "-o", str(tar), revision, "gitops", "site"],
        check=True,
    )
    process.run(["tar", "-x", "-C", str(into), "-f", str(tar)], check=True)
    return short.stdout.strip()


def check_code(code: Path) -> None:
    """The build below runs the gitops package at ``code`` (not this checkout's)."""
    found = process.run(
        [sys.executable, "-c", "import gitops.sitegen.build as b; print(b.__file__)"],
        check=True,
        env={**os.environ, "PYTHONPATH": str(code)},
        cwd=code,
    ).stdout.strip()
    if not Path(found).is_relative_to(code):
        raise SystemExit(f"the build would run {found}, not the code in {code}")


def ensure_repo(cache: Path, hosts: int, reports: int, sbom_sets: int, sbom_paths: int) -> Path:
    name = f"fleet-{hosts}x{reports}" + (f"-sbom{sbom_sets}x{sbom_paths}" if sbom_sets else "")
    repo = cache / f"{name}.git"
    if not (repo / "bench-generated.json").exists():
        print(f"generating {repo} ...", file=sys.stderr, flush=True)
        seconds = generate(repo, hosts, reports, sbom_sets=sbom_sets, sbom_paths=sbom_paths)
        print(f"generated {name} in {seconds:.0f} s")
    return repo


def builds(
    label: str,
    repo: Path,
    code: Path,
    work: Path,
    *,
    rebuild: bool,
    profile: Path | None,
    options: Sequence[str] = (),
) -> None:
    """Full build, the builds that read on the history it left, nothing new, one new
    report (and a rebuild with the cache's verdicts kept, and its history builds), with the
    code at ``code``; prints a line each."""
    out = work / "out"
    mib = 1 << 20
    steps: list[tuple[str, str | None]] = [
        ("full build", None),
        ("history", None),
        ("nothing new", None),
        ("one new report", "add"),
    ]
    if rebuild:
        steps += [("rebuild, verdicts kept", "rebuild"), ("history", None)]
    if not reads_history_on(code):
        steps = [step for step in steps if step[0] != "history"]
        options = ()
    for step, action in steps:
        if step == "history":
            history_builds(label, repo, code, out, options)
            continue
        if action == "add":
            add_one_report(repo)
        if action == "rebuild":  # an upgrade: every row and page invalid, verdicts kept
            for stale in (work / ".out.cache").glob("cache.sqlite*"):
                stale.unlink()
        wall, cpu, peak, phases = timed_build(
            repo, out, code, profile=profile if step == "full build" else None, options=options
        )
        print(
            f"{label:8} {step + ':':24} {wall:7.2f} s wall {cpu:8.2f} s CPU  peak"
            f" {peak / mib:6.0f} MiB  {phases}",
            flush=True,
        )
    pages = sum(1 for _ in out.rglob("*.html"))
    size = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    print(f"{label:8} site: {pages} pages, {size / mib:.0f} MiB", flush=True)


def history_builds(label: str, repo: Path, code: Path, out: Path, options: Sequence[str]) -> None:
    """Build again until no host's history waits (as the site service's timer would);
    prints how many builds that took and their times."""
    times: list[tuple[float, float]] = []
    line = ""
    for _ in range(200):
        wall, cpu, _peak, line = timed_build(repo, out, code, options=options)
        times.append((wall, cpu))
        if pending(line) == 0:
            break
    walls, cpus = [t[0] for t in times], [t[1] for t in times]
    print(
        f"{label:8} {'history builds:':24} {len(times)} builds until every host's month is"
        f" read: {min(walls):.2f}-{max(walls):.2f} s wall each ({sum(walls):.1f} s in all),"
        f" {sum(cpus):.1f} s CPU in all; last: {line}",
        flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--cache",
        type=Path,
        default=Path("/var/tmp/gitops-bench"),
        help="where generated repositories are kept between runs (default /var/tmp/gitops-bench)",
    )
    parser.add_argument("--hosts", type=int, default=1000)
    parser.add_argument("--reports", type=int, default=720, help="per host over 30 days")
    parser.add_argument(
        "--sbom-sets", type=int, default=0, help="distinct package sets (0: no SBOMs)"
    )
    parser.add_argument("--sbom-paths", type=int, default=1500, help="store paths per SBOM")
    parser.add_argument(
        "--with-without-sbom",
        action="store_true",
        help="build the fleet without SBOMs and with them (--sbom-sets, default 4), this tree only",
    )
    parser.add_argument("--base", default="main", help="the code to compare with (git revision)")
    parser.add_argument("--no-base", action="store_true", help="measure this tree only")
    parser.add_argument("--profile", type=Path, help="cProfile each full build (one process)")
    parser.add_argument("--generate-only", action="store_true")
    parser.add_argument(
        "--work",
        type=Path,
        help="where the sites are built (default: --cache); creating files in this "
        "machine's /tmp costs 10-20x what it costs in /var/lib",
    )
    parser.add_argument(
        "--history-hosts", type=int, help="passed to site build (code that has the option)"
    )
    args = parser.parse_args(argv)
    options = [] if args.history_hosts is None else ["--history-hosts", str(args.history_hosts)]
    work_root = args.work or args.cache
    work_root.mkdir(parents=True, exist_ok=True)
    args.cache.mkdir(parents=True, exist_ok=True)
    if args.with_without_sbom:
        sets = args.sbom_sets or 4
        plain = ensure_repo(args.cache, args.hosts, args.reports, 0, 0)
        with_sbom = ensure_repo(args.cache, args.hosts, args.reports, sets, args.sbom_paths)
        if args.generate_only:
            return 0
        print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores)")
        for label, repo in (("no SBOM", plain), ("SBOMs", with_sbom)):
            work = work_root / f"site-{repo.name}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            builds(label, repo, ROOT, work, rebuild=False, profile=None, options=options)
        return 0
    repo = ensure_repo(args.cache, args.hosts, args.reports, args.sbom_sets, args.sbom_paths)
    if args.generate_only:
        return 0
    print(f"load average before: {os.getloadavg()[0]:.2f} (2 cores; other work slows wall times)")
    with tempfile.TemporaryDirectory(prefix="site-bench-") as scratch:
        codes = [("this", ROOT)]
        if not args.no_base:
            base = Path(scratch) / "base"
            base.mkdir()
            short = extract(args.base, base)
            codes.insert(0, (f"base {short}"[:8], base))
        for label, code in codes:
            check_code(code)
            work = work_root / f"site-{repo.name}-{label.split()[0]}"
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir()
            profile = None
            if args.profile is not None:
                profile = args.profile.with_name(f"{args.profile.stem}-{label.split()[0]}.prof")
            builds(label, repo, code, work, rebuild=True, profile=profile, options=options)
    return 0


if __name__ == "__main__":
    sys.exit(main())
