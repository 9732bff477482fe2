"""``gitops check --eval``: evaluate every host's system before anything is merged.

Each host is evaluated from exactly what it would receive (its deploy tree: the shared
paths, its own directory, its profiles, copied from the work tree into a scratch
directory) as a ``path:`` flake: ``nix eval --raw <dir>#nixosConfigurations.<host>.
config.system.build.toplevel.drvPath``. That instantiates the system's derivation (every
option checked, every module read) and builds nothing. Hosts run a few at a time; each
failure becomes one problem, at the file and line Nix names (``hosts/web-1/
configuration.nix:4: nixosConfigurations.web-1: does not evaluate: <Nix's error>; fix``)
or at the host's directory when it names none (a ``throw``, as an unknown option is).
"""

from __future__ import annotations

import re
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from gitops.errors import GitopsError
from gitops.fleet.model import HOSTS_DIR, Fleet, deploy_paths
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.system import nix

DEFAULT_JOBS = 2
# /nix/store/<hash>-source/<file>: the scratch copy of the tree, as Nix names it.
_SOURCE = re.compile(r"/nix/store/[0-9a-z]{32}-source/")


@dataclass(frozen=True)
class Evaluated:
    host: str
    drv_path: str | None  # None: it failed
    error: str = ""


def evaluate_hosts(
    root: Path, fleet: Fleet, *, jobs: int = DEFAULT_JOBS, timeout: float | None = None
) -> list[Evaluated]:
    """Every host's toplevel derivation, or Nix's error, in host order."""
    source = DirSource(root)
    with tempfile.TemporaryDirectory(prefix="gitops-eval-") as scratch:
        trees = {}
        for name in sorted(fleet.hosts):
            directory = Path(scratch) / name
            _copy_tree(root, deploy_paths(fleet, fleet.hosts[name], source), directory)
            trees[name] = directory
        with ThreadPoolExecutor(max_workers=max(1, jobs)) as pool:
            return list(pool.map(lambda host: _evaluate(host, trees[host], timeout), trees))


def _copy_tree(root: Path, paths: list[str], directory: Path) -> None:
    directory.mkdir(parents=True)
    for path in paths:
        origin, target = root / path, directory / path
        target.parent.mkdir(parents=True, exist_ok=True)
        if origin.is_dir():
            shutil.copytree(origin, target, symlinks=True)
        elif origin.exists() or origin.is_symlink():
            shutil.copy2(origin, target, follow_symlinks=False)


def _evaluate(host: str, directory: Path, timeout: float | None) -> Evaluated:
    try:
        drv = nix.eval_drv_path(f"path:{directory}", nix.toplevel_attr(host), timeout=timeout)
    except GitopsError as err:
        return Evaluated(host, None, _SOURCE.sub("", str(err)))
    return Evaluated(host, drv)


# Nix's location, as nix.eval_error appends it: "(at hosts/web-1/configuration.nix:4:18)".
_WHERE = re.compile(r" \(at (?P<file>[^():\s]+):(?P<line>\d+)(?::\d+)?\)$")


def add_problems(results: list[Evaluated], problems: Problems) -> None:
    """One problem per host that failed, at the file and line Nix names when it names one
    in the tree (else at the host's directory)."""
    for result in results:
        if result.drv_path is not None:
            continue
        where = _WHERE.search(result.error)
        problems.add(
            where.group("file") if where else f"{HOSTS_DIR}/{result.host}",
            "does not evaluate: " + (result.error[: where.start()] if where else result.error),
            "fix the configuration (nix eval shows the whole trace with --show-trace)",
            field=f"nixosConfigurations.{result.host}",
            line=int(where.group("line")) if where else None,
        )
