"""What ``nix store diff-closures OLD NEW`` prints, as typed entries.

Nix groups the store paths of both closures by package name (the store path's name up to
the first ``-`` followed by a digit) and prints one line per package whose versions or
size changed::

    nginx: 1.24.0 → 1.26.1, +12.3 KiB
    redis: ∅ → 7.2.4
    lib-a: 2.0 → ∅
    glibc: 2.39, 2.40 → 2.41
    profile-server: ε → ∅
    linux-firmware: -9.1 KiB

``∅`` is "no version" (the package is not in that closure), ``ε`` the empty version (a
path with no version in its name), several versions are separated by ``, ``. Nix prints
the size change only when it is at least 8 KiB, coloured (the colour codes are dropped
here).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from enum import StrEnum

ARROW = "→"
ABSENT = "∅"
EMPTY_VERSION = "ε"

_ANSI = re.compile(r"\x1b\[[0-9;]*m")
_SIZE = re.compile(r"^(?P<sign>[+-])(?P<number>\d+(?:\.\d+)?) (?P<unit>[KMGT]iB|bytes)$")
_UNITS = {"bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


class Kind(StrEnum):
    ADDED = "added"
    REMOVED = "removed"
    VERSION = "version changed"
    SIZE = "size changed"  # the same versions, a different size


@dataclass(frozen=True)
class PackageChange:
    """One line of ``nix store diff-closures``."""

    package: str
    old: tuple[str, ...]  # versions before: () when absent, "" for a path with no version
    new: tuple[str, ...]  # versions after, the same way
    size_delta: int | None  # bytes, to Nix's 0.1 KiB; None when Nix did not print it (< 8 KiB)

    @property
    def kind(self) -> Kind:
        if not self.old and self.new:
            return Kind.ADDED
        if self.old and not self.new:
            return Kind.REMOVED
        if self.old or self.new:
            return Kind.VERSION
        return Kind.SIZE

    def versions(self) -> str:
        """``1.24.0 → 1.26.1``, ``∅ → 7.2.4``; empty for a change of size only."""
        if self.kind is Kind.SIZE:
            return ""
        return f"{_show(self.old)} {ARROW} {_show(self.new)}"

    def describe(self) -> str:
        """The line as Nix prints it, without colours: ``nginx: 1.24.0 → 1.26.1, +12.3 KiB``."""
        parts = [p for p in (self.versions(), format_size(self.size_delta)) if p]
        return f"{self.package}: {', '.join(parts)}"


@dataclass(frozen=True)
class ClosureDiff:
    changes: tuple[PackageChange, ...]

    def of_kind(self, kind: Kind) -> list[PackageChange]:
        return [c for c in self.changes if c.kind is kind]

    @property
    def size_delta(self) -> int:
        """The sum of the size changes Nix printed (changes under 8 KiB are not printed)."""
        return sum(c.size_delta or 0 for c in self.changes)

    def summary(self) -> str:
        """``2 added, 1 removed, 3 version changes, +1.2 MiB``; ``no package changes``."""
        counts = [
            (len(self.of_kind(Kind.ADDED)), "added"),
            (len(self.of_kind(Kind.REMOVED)), "removed"),
            (len(self.of_kind(Kind.VERSION)), "version change"),
            (len(self.of_kind(Kind.SIZE)), "size change"),
        ]
        parts = [
            f"{count} {word}" + ("s" if count != 1 and word.endswith("change") else "")
            for count, word in counts
            if count
        ]
        if any(c.size_delta is not None for c in self.changes):
            parts.append(format_size(self.size_delta) or "±0 KiB")
        return ", ".join(parts) if parts else "no package changes"


def _show(versions: Sequence[str]) -> str:
    if not versions:
        return ABSENT
    return ", ".join(v or EMPTY_VERSION for v in versions)


def format_size(delta: int | None) -> str:
    """Bytes as Nix prints a size change (``+12.3 KiB``), in MiB or GiB when large."""
    if delta is None or delta == 0:
        return ""
    sign = "+" if delta > 0 else "-"
    size = abs(delta)
    for unit in ("GiB", "MiB"):
        if size >= _UNITS[unit]:
            return f"{sign}{size / _UNITS[unit]:.1f} {unit}"
    return f"{sign}{size / 1024:.1f} KiB"


def _versions(text: str) -> tuple[str, ...]:
    text = text.strip()
    if text == ABSENT:
        return ()
    return tuple("" if v == EMPTY_VERSION else v for v in (p.strip() for p in text.split(",")))


def _size(text: str) -> int | None:
    match = _SIZE.match(text.strip())
    if match is None:
        return None
    value = float(match.group("number")) * _UNITS[match.group("unit")]
    return round(value) * (1 if match.group("sign") == "+" else -1)


def parse_line(line: str) -> PackageChange | None:
    """One line of Nix's output; None for anything else (an empty line, a warning)."""
    line = _ANSI.sub("", line).strip()
    package, sep, rest = line.partition(": ")
    if not sep or not package or " " in package:
        return None
    old_text, arrow, new_text = rest.partition(f" {ARROW} ")
    if not arrow:  # a change of size only
        size = _size(rest)
        return None if size is None else PackageChange(package, (), (), size)
    # The new versions may be followed by ", +12.3 KiB": the size is the last item.
    new_part, _, last = new_text.rpartition(", ")
    size = _size(last) if new_part else None
    if size is None:
        new_part = new_text
    return PackageChange(package, _versions(old_text), _versions(new_part), size)


def parse(lines: Iterable[str] | str) -> ClosureDiff:
    """Every line of ``nix store diff-closures`` output, in Nix's order (by package)."""
    if isinstance(lines, str):
        lines = lines.splitlines()
    found = (parse_line(line) for line in lines)
    return ClosureDiff(tuple(change for change in found if change is not None))
