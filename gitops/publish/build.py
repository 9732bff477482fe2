"""``gitops build``: build each host's system once, centrally, sign it, copy it to a cache.

For every host whose deploy tree changed (or every host, ``--all``), the tree exactly as
``gitops publish`` renders it is written to a scratch directory and its toplevel built
(``nix build path:<dir>#nixosConfigurations.<host>.config.system.build.toplevel``), a
bounded number at a time. A ``path:`` flake is its content: the same tree always gives the
same system, whichever commit it is published in. The built systems are signed with the
fleet's Nix signing key (``nix store sign --recursive``) and copied with everything they
need to a binary cache (``nix copy --to file:///srv/cache``, or any store URL Nix knows).

The result is a *systems file* (JSON) naming, per host, the deploy tree and the system
built from it. ``gitops publish --systems FILE`` pins each system in the host's signed
deploy commit (``System-Path``) only when the tree it publishes is that very tree.
"""

from __future__ import annotations

import json
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import TRAILER_SYSTEM_PATH, parse_json
from gitops.publish import plan as planning
from gitops.system import atomic, nix
from gitops.trust import commits, trees

SYSTEMS_SCHEMA: Final = 1
MAX_SYSTEMS_BYTES: Final = 64 << 20  # a larger systems file is refused unread
_OID: Final = re.compile(r"^[0-9a-f]{40}(?:[0-9a-f]{24})?$")
DEFAULT_JOBS: Final = 2


@dataclass(frozen=True)
class Request:
    repo: Path
    source: str  # the main commit to build from
    hosts: tuple[str, ...]  # only these hosts; all when empty
    every_host: bool  # build even hosts whose deploy tree did not change
    jobs: int = DEFAULT_JOBS  # builds at once
    signing_key: Path | None = None  # Nix secret key file (nix key generate-secret)
    cache: str | None = None  # where to copy the closures: file:///dir, s3://...
    systems: Path | None = None  # write the systems file here
    timeout: float | None = None  # per host


@dataclass(frozen=True)
class Built:
    host: str
    tree: str  # the deploy tree's object id
    system: str  # the toplevel's store path
    seconds: float


@dataclass(frozen=True)
class Failed:
    host: str
    tree: str
    error: str
    log_tail: str


@dataclass(frozen=True)
class Outcome:
    source: str
    built: tuple[Built, ...]
    failed: tuple[Failed, ...]
    skipped: tuple[str, ...]  # hosts whose tree did not change
    signed: bool
    cache: str | None
    durations: dict[str, float]

    def systems(self) -> dict[str, Any]:
        """The systems file: what ``gitops publish --systems`` reads."""
        return {
            "schema": SYSTEMS_SCHEMA,
            "source": self.source,
            "cache": self.cache,
            "hosts": {b.host: {"tree": b.tree, "system": b.system} for b in self.built},
        }


@dataclass(frozen=True)
class _Job:
    host: str
    tree: pygit2.Oid
    directory: Path


def build(request: Request, *, progress: Callable[[str], None] = lambda _: None) -> Outcome:
    if request.jobs < 1:
        raise GitopsError(f"--jobs {request.jobs}: must be 1 or more")
    if request.signing_key is not None and not request.signing_key.is_file():
        raise GitopsError(
            f"{request.signing_key}: no such signing key file; create one with "
            "'nix key generate-secret --key-name NAME > FILE'"
        )
    repository = commits.open_repository(request.repo)
    plan = planning.make_plan(repository, request.source, only=request.hosts)
    targets = [h for h in plan.hosts if request.every_host or h.changed_paths]
    skipped = tuple(h.host for h in plan.hosts if h not in targets)
    durations: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="gitops-build-") as scratch:
        jobs = []
        for host_plan in targets:
            directory = Path(scratch) / host_plan.host
            trees.export(
                repository, host_plan.new_tree, directory, what=f"{host_plan.host}'s deploy tree"
            )
            jobs.append(_Job(host_plan.host, host_plan.new_tree, directory))
        progress(f"building {len(jobs)} of {len(plan.hosts)} hosts, {request.jobs} at a time")
        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=request.jobs) as pool:
            results = list(pool.map(lambda job: _build_one(job, request.timeout), jobs))
        durations["build"] = round(time.monotonic() - started, 3)
    built = tuple(r for r in results if isinstance(r, Built))
    failed = tuple(r for r in results if isinstance(r, Failed))
    paths = [b.system for b in built]
    if request.signing_key is not None and paths:
        started = time.monotonic()
        nix.sign_closure(paths, request.signing_key)
        durations["sign"] = round(time.monotonic() - started, 3)
        progress(f"signed {len(paths)} systems and their closures")
    if request.cache is not None and paths:
        started = time.monotonic()
        nix.copy_to(request.cache, paths)
        durations["copy"] = round(time.monotonic() - started, 3)
        progress(f"copied {len(paths)} systems to {request.cache}")
    outcome = Outcome(
        str(plan.source.id),
        built,
        failed,
        skipped,
        request.signing_key is not None,
        request.cache,
        durations,
    )
    if request.systems is not None:
        atomic.write_text(request.systems, json.dumps(outcome.systems(), indent=2) + "\n")
    return outcome


def _build_one(job: _Job, timeout: float | None) -> Built | Failed:
    started = time.monotonic()
    try:
        system = nix.build_flake(
            f"path:{job.directory}", nix.toplevel_attr(job.host), timeout=timeout
        )
    except nix.BuildError as err:
        return Failed(job.host, str(job.tree), str(err), err.log_tail)
    except GitopsError as err:
        return Failed(job.host, str(job.tree), str(err), "")
    return Built(job.host, str(job.tree), str(system), round(time.monotonic() - started, 3))


# -- the systems file, read back by publish ------------------------------------------------


@dataclass(frozen=True)
class BuiltSystem:
    tree: str
    system: str


def read_systems(path: Path) -> dict[str, BuiltSystem]:
    """host -> the tree and the system built from it; GitopsError says what is wrong."""
    try:
        data = parse_json(path.read_bytes(), limit=MAX_SYSTEMS_BYTES)
    except OSError as err:
        raise GitopsError(f"{path}: cannot read the systems file ({err.strerror})") from err
    except ValueError as err:
        raise GitopsError(f"{path}: not a systems file written by 'gitops build' ({err})") from err
    if not isinstance(data, dict) or data.get("schema") != SYSTEMS_SCHEMA:
        raise GitopsError(
            f"{path}: not a systems file of schema {SYSTEMS_SCHEMA}; write it with "
            "'gitops build --systems FILE'"
        )
    hosts = data.get("hosts")
    if not isinstance(hosts, dict):
        raise GitopsError(f"{path}: hosts: must be an object of host -> {{tree, system}}")
    found = {}
    for host, entry in hosts.items():
        tree = entry.get("tree") if isinstance(entry, dict) else None
        system = entry.get("system") if isinstance(entry, dict) else None
        if not isinstance(tree, str) or not _OID.match(tree):
            raise GitopsError(f"{path}: hosts.{host}.tree: {tree!r} is not a tree id")
        if not isinstance(system, str) or not nix.is_store_path(system):
            raise GitopsError(f"{path}: hosts.{host}.system: {system!r} is not a store path")
        found[str(host)] = BuiltSystem(tree, system)
    return found


def pins(
    repo: pygit2.Repository, plan: planning.Plan, built: Mapping[str, BuiltSystem] | None
) -> tuple[dict[str, str], list[str]]:
    """(host -> the System-Path its new commit pins, hosts that must not be published).

    A host gets the system built from exactly its new tree. A host whose tree did not
    change (a heartbeat) keeps the system its head pins. With a systems file, a host whose
    new tree it does not name is refused rather than published unpinned.
    """
    pinned: dict[str, str] = {}
    missing: list[str] = []
    for host_plan in plan.changed:
        entry = (built or {}).get(host_plan.host)
        kept = _kept_pin(repo, host_plan)
        if entry is not None and entry.tree == str(host_plan.new_tree):
            pinned[host_plan.host] = entry.system
        elif kept is not None:
            pinned[host_plan.host] = kept
        elif built is not None:
            missing.append(host_plan.host)
    return pinned, missing


def _kept_pin(repo: pygit2.Repository, host_plan: planning.HostPlan) -> str | None:
    """The head's System-Path, when the new commit has the head's tree."""
    if host_plan.old_head is None:
        return None
    head = repo.get(host_plan.old_head)
    if not isinstance(head, pygit2.Commit) or head.tree_id != host_plan.new_tree:
        return None
    system = commits.trailers(head.message).get(TRAILER_SYSTEM_PATH)
    return system if system is not None and nix.is_store_path(system) else None
