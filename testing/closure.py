"""Real Nix closures of any size, cheaply, for SBOM tests and benchmarks.

Each package is a small file added to the store under its name (``nix-store --add``, one
call for all); the "system" is a real derivation whose output names every one of them,
so Nix records them as its references and ``nix-store --query --requisites`` returns
them all, as it does for a NixOS toplevel.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from pathlib import Path

SYSTEM_EXPR = r"""
{ refsFile, name }:
let
  paths = builtins.fromJSON (builtins.readFile refsFile);
in
derivation {
  inherit name;
  system = builtins.currentSystem;
  builder = "/bin/sh";
  # Too long for one argument: handed to the builder as a file.
  refs = builtins.concatStringsSep "\n" (map builtins.storePath paths);
  passAsFile = [ "refs" ];
  args = [ "-c" "/bin/cp $refsPath $out" ];
}
"""


def add_files(directory: Path, names: Sequence[str]) -> list[str]:
    """A store path per name (``/nix/store/<hash>-<name>``), in the order given."""
    directory.mkdir(parents=True, exist_ok=True)
    files = []
    for name in names:
        file = directory / name
        file.write_text(f"{name}\n", encoding="utf-8")
        files.append(str(file))
    paths: list[str] = []
    for start in range(0, len(files), 500):  # keep each command line short
        result = subprocess.run(
            ["nix-store", "--add", *files[start : start + 500]],
            check=True,
            capture_output=True,
            text=True,
        )
        paths.extend(line.strip() for line in result.stdout.splitlines() if line.strip())
    return paths


def make_system(directory: Path, names: Sequence[str], system_name: str) -> tuple[str, list[str]]:
    """(the system's store path, the package store paths) for a closure of ``names``."""
    paths = add_files(directory / "packages", names)
    refs = directory / "refs.json"
    refs.write_text(json.dumps(paths), encoding="utf-8")
    expr = directory / "system.nix"
    expr.write_text(SYSTEM_EXPR, encoding="utf-8")
    result = subprocess.run(
        [
            "nix-build",
            "--no-out-link",
            expr,
            "--argstr",
            "refsFile",
            str(refs),
            "--argstr",
            "name",
            system_name,
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip(), paths
