"""Package names and versions the way Nix reads them.

``parse_drv_name`` is ``builtins.parseDrvName`` (the name ends at the first ``-`` not
followed by a letter); ``compare_versions`` is ``builtins.compareVersions``;
``package_name`` first strips an output name (``-bin``, ``-lib``, ``-dev``) the way
``nix store diff-closures`` does, but only when what is left still has a version
(``openssl-3.0.13-bin`` is openssl 3.0.13, ``system-path`` stays ``system-path``).
tests/test_inventory.py checks these against the real ``nix-instantiate``.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass
from typing import Final

STORE_DIR: Final = "/nix/store"
_HASH_LENGTH: Final = 32
_OUTPUT: Final = re.compile(r"^(?P<name>.*)-(?P<output>[a-z]+|lib32|lib64)$")
_COMPONENT: Final = re.compile(r"[0-9]+|[^0-9.\-]+")
_INT_MAX: Final = 2**31 - 1  # Nix parses a numeric component as a C int


@dataclass(frozen=True)
class StorePathName:
    name: str  # the package name (pname)
    version: str  # "" when the path name has none
    output: str  # "bin", "lib", ... when one was stripped, else ""


def parse_drv_name(text: str) -> tuple[str, str]:
    """``builtins.parseDrvName``: ``("openssl", "3.0.13")`` from ``openssl-3.0.13``."""
    for index, char in enumerate(text):
        if char == "-" and index + 1 < len(text) and text[index + 1] not in string.ascii_letters:
            return text[:index], text[index + 1 :]
    return text, ""


def store_path_name(path: str) -> str:
    """``/nix/store/<hash>-<name>`` → ``<name>``; ValueError when not a store path."""
    prefix = f"{STORE_DIR}/"
    base = path.removeprefix(prefix)
    if base == path or "/" in base or len(base) <= _HASH_LENGTH + 1 or base[_HASH_LENGTH] != "-":
        raise ValueError(f"{path!r} is not a Nix store path")
    return base[_HASH_LENGTH + 1 :]


def package_name(path: str) -> StorePathName:
    """The package a store path holds, as ``nix store diff-closures`` groups it."""
    full = store_path_name(path)
    match = _OUTPUT.match(full)
    if match is not None:
        name, version = parse_drv_name(match["name"])
        if version:
            return StorePathName(name, version, match["output"])
    name, version = parse_drv_name(full)
    return StorePathName(name, version, "")


def _components(version: str) -> list[str]:
    """Nix's version components: runs of digits, or of other characters, split at . and -."""
    return _COMPONENT.findall(version)


def _number(component: str) -> int | None:
    if component.isascii() and component.isdigit() and int(component) <= _INT_MAX:
        return int(component)
    return None


def _less(c1: str, c2: str) -> bool:
    """Nix's ``componentsLT``."""
    n1, n2 = _number(c1), _number(c2)
    if n1 is not None and n2 is not None:
        return n1 < n2
    if c1 == "" and n2 is not None:
        return True
    if c1 == "pre" and c2 != "pre":
        return True
    if c2 == "pre":
        return False
    # Nix assumes 2.3a < 2.3.1: a number beats a word.
    if n2 is not None:
        return True
    if n1 is not None:
        return False
    return c1 < c2


def compare_versions(v1: str, v2: str) -> int:
    """``builtins.compareVersions``: -1, 0 or 1."""
    a, b = _components(v1), _components(v2)
    for index in range(max(len(a), len(b))):
        c1 = a[index] if index < len(a) else ""
        c2 = b[index] if index < len(b) else ""
        if _less(c1, c2):
            return -1
        if _less(c2, c1):
            return 1
    return 0
