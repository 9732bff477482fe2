"""``gitops check``."""

from __future__ import annotations

from pathlib import Path

from gitops import output
from gitops.errors import GitopsError, ProblemsError
from gitops.fleet.check import check_repository


def check(
    repo: Path, *, as_json: bool, parse_nix: bool | None, evaluate: bool = False, jobs: int = 2
) -> int:
    if jobs < 1:
        raise GitopsError(f"--jobs {jobs}: must be 1 or more")
    result = check_repository(repo, parse_nix=parse_nix, evaluate_hosts=evaluate, jobs=jobs)
    if as_json:
        output.emit_json(
            {
                "ok": not result.problems,
                "hosts": sorted(result.fleet.hosts),
                "profiles": sorted(result.fleet.profiles),
                "nix_files": result.nix_files,
                "nix_parsed": result.parsed_with_nix,
                "problems": [problem.to_json() for problem in result.problems],
                "evaluated": {e.host: e.drv_path for e in result.evaluated},
            }
        )
        return 1 if result.problems else 0
    if result.problems:
        count = len(result.problems)
        raise ProblemsError(
            f"{repo}: {count} problem{'s' if count != 1 else ''}",
            [str(problem) for problem in result.problems],
        )
    nix_note = (
        f"{result.nix_files} .nix files parse"
        if result.parsed_with_nix
        else f"{result.nix_files} .nix files not parsed (nix-instantiate not found)"
    )
    if evaluate:
        nix_note += f"; {len(result.evaluated)} hosts evaluate"
    output.say(
        f"ok: {len(result.fleet.hosts)} hosts, {len(result.fleet.profiles)} profiles, "
        f"{len(result.fleet.settings.publishers)} publisher keys; {nix_note}"
    )
    return 0
