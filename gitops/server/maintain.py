"""``gitops server maintain``: pack what pushes and fan-in leave loose, in every repository.

A report push of a few objects is exploded into loose objects (``receive.unpackLimit``)
and the fan-in into fleet.git writes loose objects through libgit2, which never runs
git's automatic gc: without maintenance fleet.git gains three loose objects per report of
every host, forever (a 4 KiB block each on most file systems). ``maintain``, run on a
timer, does in each repository whose loose objects reached ``min_loose``:

- ``git repack -d -l --geometric=2``: the loose objects and the smallest packs roll up
  into one new pack, so the packs form a geometric progression (a handful, whatever the
  age) and each run rewrites in proportion to what is new, not to the history. Packs
  marked ``.keep`` (the archive pack, :mod:`gitops.server.archive`) are never rewritten;
- ``git commit-graph write --reachable --split``: an incremental commit-graph, so git's
  walks of long report branches (repacks, fetches, ``git log``) and ancestry checks read
  it instead of parsing every commit;
- ``git pack-refs --all`` where refs pile up as files (fleet.git: two refs per host,
  archive marks).

Repositories are maintained in parallel, at most ``jobs`` at a time; one that fails is
reported and the others go on. Every repository's config (written by ``sync``) holds the
settings this relies on (docs/server.md#maintenance).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import resource
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

from gitops.errors import GitopsError
from gitops.server.layout import Layout
from gitops.system import process

MIN_LOOSE: Final = 100  # loose objects (about 33 reports) before a repository is packed
LOOSE_REFS: Final = 64  # ref files before refs are packed
_FANOUT = re.compile(r"^[0-9a-f]{2}$")
# The repository's own config says everything: no user's or system's settings play a part.
GIT_ENV: Final = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null", "LC_ALL": "C"}


@dataclass(frozen=True)
class Objects:
    """How a repository keeps its objects."""

    loose: int
    packs: int
    kept: int  # packs marked .keep (the archive)
    disk: int  # bytes of blocks under objects/ (what du says)


def _blocks(path: Path) -> int:
    try:
        return path.lstat().st_blocks * 512
    except FileNotFoundError:
        return 0


def objects(git_dir: Path) -> Objects:
    """Counted from the directory listing: cheap enough for every repository, every run."""
    loose = disk = 0
    root = git_dir / "objects"
    with contextlib.suppress(FileNotFoundError), os.scandir(root) as entries:
        for entry in entries:
            if entry.is_dir(follow_symlinks=False) and _FANOUT.match(entry.name):
                with os.scandir(entry.path) as files:
                    for item in files:
                        loose += 1
                        disk += item.stat(follow_symlinks=False).st_blocks * 512
    packs = kept = 0
    with contextlib.suppress(FileNotFoundError), os.scandir(root / "pack") as entries:
        for entry in entries:
            disk += entry.stat(follow_symlinks=False).st_blocks * 512
            packs += entry.name.endswith(".pack")
            kept += entry.name.endswith(".keep")
    return Objects(loose, packs, kept, disk)


def loose_refs(git_dir: Path, limit: int) -> int:
    """Ref files under refs/, counted up to ``limit``."""
    found = 0
    for _, _, files in os.walk(git_dir / "refs"):
        found += len(files)
        if found >= limit:
            break
    return found


def git(git_dir: Path, *args: str, input: str | None = None) -> str:
    return process.run(
        ["git", "--git-dir", str(git_dir), *args], check=True, env=GIT_ENV, input=input
    ).stdout


@dataclass(frozen=True)
class RepoMaintained:
    path: Path
    before: Objects
    after: Objects
    packed: bool
    refs_packed: bool
    problem: str | None = None


def maintain_repo(git_dir: Path, *, min_loose: int = MIN_LOOSE) -> RepoMaintained:
    before = objects(git_dir)
    repack = before.loose >= min_loose or before.packs - before.kept > 64
    pack_refs = loose_refs(git_dir, LOOSE_REFS) >= LOOSE_REFS
    try:
        if repack:
            git(git_dir, "repack", "-d", "-l", "-q", "--geometric=2")
            git(git_dir, "commit-graph", "write", "--reachable", "--split", "--no-progress")
        if pack_refs:
            git(git_dir, "pack-refs", "--all", "--prune")
    except GitopsError as err:
        return RepoMaintained(git_dir, before, objects(git_dir), repack, pack_refs, str(err))
    return RepoMaintained(git_dir, before, objects(git_dir), repack, pack_refs)


@dataclass
class MaintainResult:
    repos: list[RepoMaintained] = field(default_factory=list)
    cpu_seconds: float = 0.0  # git's, in the processes maintain started
    seconds: float = 0.0

    def total(self, pick: Callable[[RepoMaintained], int]) -> int:
        return sum(pick(r) for r in self.repos)

    @property
    def problems(self) -> list[str]:
        return [f"{r.path.name}: {r.problem}" for r in self.repos if r.problem]

    def lines(self) -> list[str]:
        packed = [r for r in self.repos if r.packed and not r.problem]
        refs = [r for r in self.repos if r.refs_packed and not r.problem]
        mb = 1e6
        lines = [
            f"{len(self.repos)} repositories: {len(packed)} packed, {len(refs)} with refs "
            f"packed, {len(self.repos) - len(packed) - len(refs)} left as they were",
            f"loose objects {self.total(lambda r: r.before.loose):,} -> "
            f"{self.total(lambda r: r.after.loose):,}; packs "
            f"{self.total(lambda r: r.before.packs):,} -> {self.total(lambda r: r.after.packs):,}"
            f" ({self.total(lambda r: r.after.kept):,} kept as archive); objects on disk "
            f"{self.total(lambda r: r.before.disk) / mb:.1f} MB -> "
            f"{self.total(lambda r: r.after.disk) / mb:.1f} MB",
            f"took {self.seconds:.1f} s, {self.cpu_seconds:.1f} CPU-s in git",
        ]
        return lines + [f"warning: {problem}" for problem in self.problems]


def children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@contextlib.contextmanager
def locked(layout: Layout) -> Iterator[None]:
    """One maintain or archive at a time (a second waits for the first)."""
    with layout.maintain_lock.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def default_jobs() -> int:
    """Half the CPUs: maintenance must leave room for pushes."""
    return max(1, (os.cpu_count() or 2) // 2)


def maintain(
    layout: Layout,
    *,
    jobs: int | None = None,
    min_loose: int = MIN_LOOSE,
    progress: Callable[[str], None] | None = None,
) -> MaintainResult:
    layout.check_initialized()
    if jobs is not None and jobs < 1:
        raise GitopsError(f"--jobs {jobs}: give at least 1")
    say = progress or (lambda _: None)
    result = MaintainResult()
    started, cpu = time.perf_counter(), children_cpu()
    with locked(layout):
        repos = layout.repositories()
        with ThreadPoolExecutor(max_workers=jobs or default_jobs()) as pool:
            for count, done in enumerate(
                pool.map(lambda path: maintain_repo(path, min_loose=min_loose), repos), start=1
            ):
                result.repos.append(done)
                if count % 1000 == 0:
                    say(f"  {count} of {len(repos)} repositories")
    result.seconds = time.perf_counter() - started
    result.cpu_seconds = children_cpu() - cpu
    return result
