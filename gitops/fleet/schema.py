"""Parse YAML documents into typed values at the edge, collecting *every* problem.

A ``Reader`` walks one mapping, records a problem (file, field, what is wrong, how to fix)
for each bad field instead of stopping at the first, and returns safe defaults so
parsing can go on. ``Problems`` is what ``gitops check`` prints.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import date
from typing import Any, Final, TypeVar

from typing_extensions import override

from gitops.errors import ProblemsError
from gitops.fleet.loader import Document, RefusedError, load_document

T = TypeVar("T")

_DURATION = re.compile(r"^\s*(\d{1,15})\s*([smhdw]?)\s*$", re.ASCII)
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
# Ten years: longer than any interval or expiry means, and far from where adding it to a
# date overflows (year 9999); agents, publish and the site all do that arithmetic.
MAX_DURATION: Final = 3650 * 86400
_DATE = re.compile(r"^\d{4}-\d\d-\d\d$", re.ASCII)
# Dates a fleet file may hold: a day before or after these overflows date arithmetic.
EARLIEST_DATE: Final = date(1970, 1, 1)
LATEST_DATE: Final = date(2999, 12, 31)


def parse_duration(value: object) -> int:
    """Seconds from ``300``, ``"90s"``, ``"5m"``, ``"1h"``, ``"2d"``, ``"1w"``; at most
    :data:`MAX_DURATION`. ValueError says what is wrong."""
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ValueError("expected a duration such as 5m, 1h or 2d")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a duration cannot be negative")
        seconds = value
    else:
        match = _DURATION.match(value)
        if match is None:
            raise ValueError(f"{value[:40]!r} is not a duration; write e.g. 30s, 5m, 1h, 2d")
        seconds = int(match.group(1)) * _DURATION_UNITS[match.group(2)]
    if seconds > MAX_DURATION:
        raise ValueError(f"is longer than {MAX_DURATION // 86400}d, the longest gitops accepts")
    return seconds


def parse_date(value: object) -> date:
    """``YYYY-MM-DD``, a real day between :data:`EARLIEST_DATE` and :data:`LATEST_DATE`."""
    if isinstance(value, date):
        day = value
    elif isinstance(value, str) and _DATE.match(value):
        try:
            day = date.fromisoformat(value)
        except ValueError as err:
            raise ValueError(f"{value!r} is not a date ({err})") from err
    else:
        raise ValueError(f"{str(value)[:40]!r} is not a date")
    if not EARLIEST_DATE <= day <= LATEST_DATE:
        raise ValueError(f"{day.isoformat()} is not between {EARLIEST_DATE} and {LATEST_DATE}")
    return day


@dataclass(frozen=True)
class Problem:
    """One thing wrong in a fleet file: where (file, line, field), what, and the fix."""

    file: str
    problem: str
    fix: str = ""
    field: str = ""
    line: int | None = None

    @override
    def __str__(self) -> str:
        where = f"{self.file}:{self.line}" if self.line is not None else self.file
        if self.field:
            where += f": {self.field}"
        text = f"{where}: {self.problem}" + (f"; {self.fix}" if self.fix else "")
        return _one_line(text)

    def to_json(self) -> dict[str, object]:
        data: dict[str, object] = {"file": self.file}
        if self.line is not None:
            data["line"] = self.line
        data.update(field=self.field, problem=self.problem, fix=self.fix)
        return data


def _one_line(text: str) -> str:
    """Names and values come from the user's files: a newline or other control character
    in one must not split or garble the one-line message, so it is shown escaped."""
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else c.encode("unicode_escape").decode() for c in text)


@dataclass
class Problems:
    items: list[Problem] = field(default_factory=list)

    def add(
        self, file: str, problem: str, fix: str = "", *, field: str = "", line: int | None = None
    ) -> None:
        self.items.append(Problem(file, problem, fix, field, line))

    def __bool__(self) -> bool:
        return bool(self.items)

    def lines(self) -> list[str]:
        return [str(p) for p in self.items]

    def raise_if_any(self, summary: str) -> None:
        if self.items:
            count = len(self.items)
            raise ProblemsError(
                f"{summary}: {count} problem{'s' if count != 1 else ''}", self.lines()
            )


def load_yaml(text: bytes | str, where: str, problems: Problems) -> dict[str, Any] | None:
    """The file's top-level mapping (a :class:`Document`, which knows each field's line),
    or None after adding to ``problems`` why it cannot be used."""
    try:
        data = load_document(text)
    except RefusedError as refused:
        for item in refused.problems:
            problems.add(where, item.problem, item.fix, field=item.field, line=item.line)
        return None
    if data is None:
        return {}
    if not isinstance(data, dict):
        problems.add(where, "expected a mapping of settings at the top level", line=1)
        return None
    return data


_PATH_TAIL = re.compile(r"(\.[^.\[]*|\[\d+\])$")


class Reader:
    """Typed access to one mapping; bad fields become problems, never exceptions."""

    def __init__(
        self,
        data: dict[str, Any],
        where: str,
        problems: Problems,
        prefix: str = "",
        lines: dict[str, int] | None = None,
    ) -> None:
        self.data = data
        self.where = where
        self.problems = problems
        self.prefix = prefix
        if lines is None:
            lines = data.lines if isinstance(data, Document) else {}
        self.lines = lines
        self.known: set[str] = set()

    def _name(self, key: str) -> str:
        return f"{self.prefix}{key}"

    def line_of(self, field: str) -> int | None:
        """The line of ``field``, or of the nearest enclosing field the file has."""
        while field:
            line = self.lines.get(field)
            if line is not None:
                return line
            trimmed = _PATH_TAIL.sub("", field)
            if trimmed == field:
                return None
            field = trimmed
        return None

    def problem(self, key: str, what: str, fix: str = "") -> None:
        name = self._name(key)
        self.problems.add(self.where, what, fix, field=name, line=self.line_of(name))

    def get(self, key: str) -> Any:
        self.known.add(key)
        return self.data.get(key)

    def _child(self, data: dict[str, Any], prefix: str) -> Reader:
        return Reader(data, self.where, self.problems, prefix, self.lines)

    def string(self, key: str, default: str = "", *, required: bool = False) -> str:
        value = self.get(key)
        if value is None:
            if required:
                self.problem(key, "is missing", f"add '{key}: ...'")
            return default
        if not isinstance(value, str | int | float) or isinstance(value, bool):
            self.problem(key, "must be a string")
            return default
        if required and value == "":
            self.problem(key, "is empty", f"write a value after '{key}:'")
        return str(value)

    def boolean(self, key: str, default: bool) -> bool:
        value = self.get(key)
        if value is None:
            return default
        if not isinstance(value, bool):
            self.problem(key, "must be true or false")
            return default
        return value

    def duration(self, key: str, default: int) -> int:
        found = self.optional_duration(key)
        return default if found is None else found

    def optional_duration(self, key: str) -> int | None:
        value = self.get(key)
        if value is None:
            return None
        try:
            return parse_duration(value)
        except ValueError as err:
            self.problem(key, str(err))
            return None

    def strings(
        self, key: str, *, check: Callable[[str], str | None] | None = None
    ) -> tuple[str, ...]:
        value = self.get(key)
        if value is None:
            return ()
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list):
            self.problem(key, "must be a list of strings", f"write '{key}: [a, b]'")
            return ()
        result: list[str] = []
        for index, item in enumerate(value):
            if not isinstance(item, str):
                self.problem(f"{key}[{index}]", "must be a string")
                continue
            problem = check(item) if check else None
            if problem:
                self.problem(f"{key}[{index}]", problem)
                continue
            result.append(item)
        return tuple(result)

    def mapping(self, key: str) -> Reader:
        value = self.get(key)
        if value is None:
            value = {}
        elif not isinstance(value, dict):
            self.problem(key, "must be a mapping")
            value = {}
        return self._child(value, f"{self._name(key)}.")

    def items(self, key: str) -> list[Reader]:
        value = self.get(key)
        if value is None:
            return []
        if not isinstance(value, list):
            self.problem(key, "must be a list")
            return []
        readers = []
        for index, item in enumerate(value):
            if not isinstance(item, dict):
                self.problem(f"{key}[{index}]", "must be a mapping")
                continue
            readers.append(self._child(item, f"{self._name(key)}[{index}]."))
        return readers

    def date(self, key: str, *, required: bool = False) -> date | None:
        value = self.get(key)
        if value is None:
            if required:
                self.problem(key, "is missing", "write a date as YYYY-MM-DD")
            return None
        try:
            return parse_date(value)
        except ValueError as err:
            self.problem(key, str(err), "write a real date as YYYY-MM-DD")
            return None

    def convert(self, key: str, parse: Callable[[str], T], *, required: bool, fix: str) -> T | None:
        text = self.string(key, required=required)
        if not text:
            return None
        try:
            return parse(text)
        except ValueError as err:
            self.problem(key, str(err), fix)
            return None

    def finish(self) -> None:
        """Unknown keys are problems: a typo must not silently do nothing."""
        for key in self.data:
            if key not in self.known:
                self.problem(str(key), "unknown setting", "remove it or check its spelling")
