"""``gitops check``: validate a fleet repository and list every problem at once.

Schema and names (fleet.py), that each host's ``.nix`` files import exactly the profiles
its ``host.yaml`` lists (otherwise the deploy tree would lack a file, or the inventory
would lie), policies, and that every ``.nix`` file parses (``nix-instantiate --parse``,
when nix is installed). With ``--eval``, every host's system is evaluated too
(fleet/evaluate.py).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path

from gitops.errors import GitopsError
from gitops.fleet import commands, evaluate, policies
from gitops.fleet.model import (
    DEFAULT_SHARED,
    FLAKE_FILE,
    FLEET_FILE,
    HOST_FILE,
    HOSTS_DIR,
    PROFILES_DIR,
    Fleet,
    load_fleet,
)
from gitops.fleet.schema import Problem, Problems
from gitops.fleet.source import DirSource
from gitops.system import nix

_PROFILE_REF = re.compile(
    r"(?:^|[\s(\[/])(?:\.\./)+profiles/([A-Za-z0-9._+-]+?)(?:\.nix)?(?=[\s)\];/]|$)"
)
_NIX_COMMENT = re.compile(r"#[^\n]*|/\*.*?\*/", re.DOTALL)


@dataclass(frozen=True)
class CheckResult:
    fleet: Fleet
    problems: tuple[Problem, ...]
    nix_files: int
    parsed_with_nix: bool
    evaluated: tuple[evaluate.Evaluated, ...] = ()  # with --eval: each host's toplevel


def nix_files(root: Path) -> list[Path]:
    return sorted(
        p
        for p in root.rglob("*.nix")
        if ".git" not in p.parts and ".venv" not in p.parts and "node_modules" not in p.parts
    )


def parse_nix_files(files: list[Path], root: Path, problems: Problems) -> None:
    for path, error in nix.parse_files(files):
        problems.add(str(path.relative_to(root)), f"does not parse: {error}", "fix the Nix syntax")


def imported_profiles(root: Path, host: str) -> set[str]:
    """Profiles referenced by path (``../../profiles/<name>.nix``) from a host's .nix files."""
    found: set[str] = set()
    for path in sorted((root / HOSTS_DIR / host).rglob("*.nix")):
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        for match in _PROFILE_REF.finditer(_NIX_COMMENT.sub(" ", text)):
            found.add(match.group(1))
    return found


def check_profile_imports(root: Path, fleet: Fleet, problems: Problems) -> None:
    for name, host in sorted(fleet.hosts.items()):
        if not any((root / HOSTS_DIR / name).rglob("*.nix")):
            continue
        imported = imported_profiles(root, name)
        listed = set(host.profiles)
        where = f"{HOSTS_DIR}/{name}"
        for profile in sorted(imported - listed):
            problems.add(
                f"{where}/{HOST_FILE}",
                f"{profile!r} is imported by the host's .nix files but not listed, so the "
                "deploy tree would not contain it",
                f"add {profile} to profiles in host.yaml",
                field="profiles",
            )
        for profile in sorted(listed - imported):
            problems.add(
                f"{where}/{HOST_FILE}",
                f"{profile!r} is listed but no .nix file of the host imports "
                f"../../{PROFILES_DIR}/{profile}.nix",
                "import it in configuration.nix or remove it from host.yaml",
                field="profiles",
            )


def check_exemptions(fleet: Fleet, known: set[str], problems: Problems) -> None:
    """An exemption for a policy that does not exist is a typo that exempts nothing."""
    for name, host in sorted(fleet.hosts.items()):
        for exemption in host.exemptions:
            if exemption.policy not in known:
                problems.add(
                    f"{HOSTS_DIR}/{name}/{HOST_FILE}",
                    f"no policy named {exemption.policy!r} in {policies.POLICIES_DIR}/",
                    "check the name, or remove the exemption",
                    field="exemptions",
                )


def check_shared(fleet: Fleet, source: DirSource, problems: Problems) -> None:
    """Every deploy tree carries the shared paths: each listed one must exist (plan skips a
    missing one, and the hosts' builds would fail), and agents build the tree's flake.nix."""
    shared = fleet.settings.shared
    listed = shared if shared != DEFAULT_SHARED else ()  # the default skips what is missing
    for index, path in enumerate(listed):
        if source.read(path) is None and not source.is_dir(path) and path != FLAKE_FILE:
            problems.add(
                FLEET_FILE,
                f"{path!r} is not in the repository",
                "add it, or remove it from the list",
                field=f"deploy.shared[{index}]",
            )
    if FLAKE_FILE not in shared:
        problems.add(
            FLEET_FILE,
            f"does not list {FLAKE_FILE}, so no deploy tree could be built",
            f"add {FLAKE_FILE} to the list",
            field="deploy.shared",
        )
    elif source.read(FLAKE_FILE) is None:
        problems.add(
            FLAKE_FILE,
            "missing, so no deploy tree could be built",
            "create it: agents build its nixosConfigurations.<host>",
        )


def ensure_fleet_repository(root: Path) -> None:
    """Refuse at once what is not a fleet checkout (before reading or walking anything)."""
    if not root.exists():
        raise GitopsError(f"no such directory: {root}; pass the fleet repository with --repo")
    if not root.is_dir():
        raise GitopsError(f"not a directory: {root}; pass the fleet repository with --repo")
    if not (root / FLEET_FILE).is_file():
        raise GitopsError(
            f"{root}: not a fleet repository (no {FLEET_FILE}); pass the fleet repository "
            "with --repo, or create fleet.yaml (see docs/reference/fleet.md)"
        )


def check_repository(
    root: Path, *, parse_nix: bool | None = None, evaluate_hosts: bool = False, jobs: int = 2
) -> CheckResult:
    ensure_fleet_repository(root)
    problems = Problems()
    source = DirSource(root)
    fleet = load_fleet(source, problems)
    check_shared(fleet, source, problems)
    commands.check_commands(fleet, source, problems)
    check_profile_imports(root, fleet, problems)
    before = len(problems.items)
    found = policies.load_policies(source, problems)
    if len(problems.items) == before:  # else an exemption may name a policy that failed
        check_exemptions(fleet, {p.name for p in found}, problems)
    files = nix_files(root)
    use_nix = shutil.which("nix-instantiate") is not None if parse_nix is None else parse_nix
    if use_nix:
        parse_nix_files(files, root, problems)
    evaluated: list[evaluate.Evaluated] = []
    if evaluate_hosts and not problems:  # a fleet that does not load cannot be evaluated
        evaluated = evaluate.evaluate_hosts(root, fleet, jobs=jobs)
        evaluate.add_problems(evaluated, problems)
    return CheckResult(fleet, tuple(problems.items), len(files), use_nix, tuple(evaluated))
