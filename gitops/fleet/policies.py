"""Compliance policies: ``policies/*.yaml``, conditions over reported facts, as data.

A policy is a yes/no question asked of every host's latest verified report (FleetDM's
model). Conditions are a small tree of operators evaluated here, never ``eval``; the
result is three-valued: a fact the host could not determine makes the answer
``unknown``, not a pass or a fail.

```yaml
name: disk-encryption
description: The root filesystem is on an encrypted (LUKS) device.
severity: high                # low | medium | high | critical
resolution: Reinstall with LUKS, or add an exemption with a reason and an expiry.
applies_to: {tags: [laptop]}  # optional: tags / profiles / hosts
condition:
  fact: facts.disk_encryption
  equals: luks
```

Comparisons (:class:`Comparison`, each defined once in :data:`COMPARISONS`) on a ``fact``
(a dotted path into the report: ``facts.firewall``, ``system.reboot_required``,
``facts.disk_free_bytes./``), combined with ``all``, ``any`` and ``not``. The site adds
two roots of its own at build time: ``report.*`` (the report's age) and ``vulns.*`` (the
host's known vulnerabilities, from the feed: ``vulns.oldest_days.critical``).

Everything is checked when the file is loaded (``gitops check``): the fact names a report
field, each operator's value has the type it needs, regular expressions compile, nesting is
bounded. Evaluation never raises, whatever a host reported: a policy that passes check
cannot break the site build.
"""

from __future__ import annotations

import functools
import math
import re
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from typing import Any, Final, assert_never

from gitops.fleet.schema import MAX_DURATION, Problems, Reader, load_yaml
from gitops.fleet.source import Source
from gitops.protocol import REPORT_FIELDS, Report

POLICIES_DIR = "policies"
UNKNOWN_VALUES = (None, "unknown")
# Where a ``fact`` path may start: status.json's top-level keys (docs/protocol.md), plus
# ``report``, which the site adds at build time (sitegen/compliance.py ``context``).
FACT_ROOTS = frozenset({*REPORT_FIELDS, "report", "vulns"})
SITE_FACTS: Final = ("age_seconds", "verified")
# ``vulns.<fact>.<severity>``: the host's known vulnerabilities, which the site adds at build
# time from the feed fleet.yaml names (sitegen/vulnscan.py); "unknown" without one.
VULN_ROOT: Final = "vulns"
VULN_FACTS: Final = ("open", "oldest_days")
VULN_SEVERITIES: Final = ("critical", "high", "medium", "low", "none", "unknown")
AGE_FACT: Final = "report.age_seconds"
MAX_CONDITION_DEPTH: Final = 16  # all/any/not levels; real policies use two or three
MAX_PATTERN: Final = 1000  # characters in a `matches` pattern
MAX_MATCHED: Final = 4096  # longer fact strings do not match (bounds regex work per host)
_POLICY_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$", re.ASCII)


class Severity(StrEnum):
    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"
    CRITICAL = "critical"


SEVERITIES = tuple(str(s) for s in Severity)


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


class Combinator(StrEnum):
    ALL = "all"
    ANY = "any"
    NOT = "not"


class Comparison(StrEnum):
    EQUALS = "equals"
    NOT_EQUALS = "not_equals"
    IN = "in"
    NOT_IN = "not_in"
    AT_LEAST = "at_least"
    AT_MOST = "at_most"
    IS_EMPTY = "is_empty"
    CONTAINS = "contains"
    EXISTS = "exists"
    MATCHES = "matches"
    MAX_AGE_DAYS = "max_age_days"


Operator = Combinator | Comparison


# -- what each comparison accepts, and how it judges a fact ---------------------------

_JSON_SCALARS = (str, int, float, bool)


def _json_value(value: Any) -> bool:
    """A value a report (JSON) can hold; YAML's dates, sets and bytes never equal a fact."""
    if isinstance(value, float):
        return math.isfinite(value)
    if isinstance(value, _JSON_SCALARS):
        return True
    if isinstance(value, list):
        return all(_json_value(item) for item in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _json_value(v) for k, v in value.items())
    return False


def _any_value(value: Any) -> str | None:
    if value is None:
        return "cannot be null (a missing fact is unknown, never equal)"
    if not _json_value(value):
        return "must be a string, number, true/false, or a list or mapping of those"
    return None


def _scalar_list(value: Any) -> str | None:
    if not isinstance(value, list) or not value:
        return "must be a non-empty list, e.g. [a, b]"
    if not all(isinstance(item, _JSON_SCALARS) and _json_value(item) for item in value):
        return "must list strings, numbers or true/false"
    return None


def _number(value: Any) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if isinstance(value, float) and not math.isfinite(value):
        return "must be a finite number"
    return None


def _boolean(value: Any) -> str | None:
    return None if isinstance(value, bool) else "must be true or false"


def _true(value: Any) -> str | None:
    if value is not True:
        return "must be true (for 'is missing', write not: {fact: ..., exists: true})"
    return None


def _string(value: Any) -> str | None:
    return None if isinstance(value, str) else "must be a string"


@functools.lru_cache(maxsize=256)
def _compiled(pattern: str) -> re.Pattern[str]:
    return re.compile(pattern)


def _pattern(value: Any) -> str | None:
    if not isinstance(value, str):
        return "must be a regular expression, as a string"
    if len(value) > MAX_PATTERN:
        return f"is longer than {MAX_PATTERN} characters"
    try:
        _compiled(value)
    except (re.error, RecursionError, OverflowError) as err:
        return f"is not a regular expression ({err})"
    return None


def _equal(actual: Any, expected: Any) -> bool:
    # JSON's true is not 1: Python's True == 1 must not make a policy pass.
    return isinstance(actual, bool) == isinstance(expected, bool) and bool(actual == expected)


def _number_of(actual: Any) -> int | float | None:
    if isinstance(actual, bool) or not isinstance(actual, int | float):
        return None
    return actual


def _at_least(actual: Any, expected: Any) -> bool:
    number = _number_of(actual)
    return number is not None and number >= expected


def _at_most(actual: Any, expected: Any) -> bool:
    number = _number_of(actual)
    return number is not None and number <= expected


def _is_empty(actual: Any, expected: Any) -> bool:
    if not isinstance(actual, list | dict | str):
        return False
    return (len(actual) == 0) == bool(expected)


def _contains(actual: Any, expected: Any) -> bool:
    if isinstance(actual, str):
        return expected in actual
    if isinstance(actual, list):
        return any(_equal(item, expected) for item in actual)
    return False


def _days(value: Any) -> str | None:
    problem = _number(value)
    if problem is None and not 0 <= value <= MAX_DURATION // 86400:
        problem = f"must be between 0 and {MAX_DURATION // 86400} days"
    return problem


def parse_time(value: Any) -> datetime | None:
    """A fact's RFC 3339 time (``2026-01-02T00:18:56Z``), None when it is not one."""
    if not isinstance(value, str) or len(value) > 64:
        return None
    try:
        moment = datetime.fromisoformat(value)
    except ValueError:
        return None
    return moment if moment.tzinfo is not None else None


def _within_days(actual: Any, expected: Any) -> bool:
    """``expected`` is (days, the moment the age is measured at)."""
    days, moment = expected
    then = parse_time(actual)
    return then is not None and moment - then <= timedelta(days=days)


def _matches(actual: Any, expected: Any) -> bool:
    if not isinstance(actual, str) or len(actual) > MAX_MATCHED:
        return False
    return _compiled(expected).search(actual) is not None


@dataclass(frozen=True)
class Rule:
    """One comparison: what its value must be (a problem, or None), and the test
    ``(reported fact, policy value) -> passes``, total over any JSON a host sends."""

    check: Callable[[Any], str | None]
    test: Callable[[Any, Any], bool]
    unary: bool = False  # described without its value ("facts.x exists")
    aged: bool = False  # the test also gets the evaluation moment: (value, moment)


# Adding an operator: a member of Comparison and its Rule here (and a line in the docs).
COMPARISONS: Final[Mapping[Comparison, Rule]] = {
    Comparison.EQUALS: Rule(_any_value, _equal),
    Comparison.NOT_EQUALS: Rule(_any_value, lambda a, e: not _equal(a, e)),
    Comparison.IN: Rule(_scalar_list, lambda a, e: any(_equal(a, x) for x in e)),
    Comparison.NOT_IN: Rule(_scalar_list, lambda a, e: not any(_equal(a, x) for x in e)),
    Comparison.AT_LEAST: Rule(_number, _at_least),
    Comparison.AT_MOST: Rule(_number, _at_most),
    Comparison.IS_EMPTY: Rule(_boolean, _is_empty, unary=True),
    Comparison.CONTAINS: Rule(_string, _contains),
    Comparison.EXISTS: Rule(_true, lambda _a, _e: True, unary=True),
    Comparison.MATCHES: Rule(_pattern, _matches),
    Comparison.MAX_AGE_DAYS: Rule(_days, _within_days, aged=True),
}
if set(COMPARISONS) != set(Comparison):  # pragma: no cover - caught by any import
    raise AssertionError("every Comparison needs a Rule in COMPARISONS")


@dataclass(frozen=True)
class Condition:
    op: Operator
    fact: str = ""
    value: Any = None
    children: tuple[Condition, ...] = ()

    def describe(self) -> str:
        op = self.op
        if isinstance(op, Comparison):
            words = f"{self.fact} {op.replace('_', ' ')}"
            return words if COMPARISONS[op].unary else f"{words} {self.value!r}"
        match op:
            case Combinator.ALL | Combinator.ANY:
                joiner = " and " if op is Combinator.ALL else " or "
                return f"({joiner.join(c.describe() for c in self.children)})"
            case Combinator.NOT:
                return f"not {self.children[0].describe()}"
            case _:
                assert_never(op)


@dataclass(frozen=True)
class Selector:
    tags: tuple[str, ...] = ()
    profiles: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()

    def matches(self, host: str, tags: tuple[str, ...], profiles: tuple[str, ...]) -> bool:
        if self.hosts and host not in self.hosts:
            return False
        if self.tags and not set(self.tags) & set(tags):
            return False
        return not (self.profiles and not set(self.profiles) & set(profiles))


@dataclass(frozen=True)
class Policy:
    name: str
    description: str
    severity: Severity
    resolution: str
    condition: Condition
    applies_to: Selector = field(default_factory=Selector)
    path: str = ""


def lookup(data: Mapping[str, Any], path: str) -> Any:
    """``facts.disk_free_bytes./nix`` → data["facts"]["disk_free_bytes"]["/nix"]; None if absent."""
    node: Any = data
    for key in path.split("."):
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = node[key]
    return node


def _judge(condition: Condition, report: Mapping[str, Any], op: Comparison) -> Outcome:
    actual = lookup(report, condition.fact)
    if op is Comparison.EXISTS:
        return Outcome.PASS if actual not in UNKNOWN_VALUES else Outcome.FAIL
    if isinstance(actual, str | type(None)) and actual in UNKNOWN_VALUES:
        return Outcome.UNKNOWN
    rule = COMPARISONS[op]
    expected = condition.value
    if rule.aged:
        moment = evaluated_at(report)
        if moment is None:
            return Outcome.UNKNOWN
        expected = (condition.value, moment)
    return Outcome.PASS if rule.test(actual, expected) else Outcome.FAIL


def evaluated_at(report: Mapping[str, Any]) -> datetime | None:
    """The moment a report is judged at: its ``time`` plus ``report.age_seconds`` (the
    site adds it: the build's time), else its own time."""
    moment = parse_time(report.get("time"))
    age = lookup(report, AGE_FACT)
    if moment is None:
        return None
    if isinstance(age, int) and not isinstance(age, bool):
        moment += timedelta(seconds=age)
    return moment


def facts_used(condition: Condition) -> list[str]:
    """Every fact path ``condition`` looks at."""
    if condition.children:
        return [f for c in condition.children for f in facts_used(c)]
    return [condition.fact]


def is_dated(condition: Condition) -> bool:
    """Whether ``condition`` measures a fact's age (its answer changes with time)."""
    if condition.children:
        return any(is_dated(c) for c in condition.children)
    return condition.op is Comparison.MAX_AGE_DAYS


def deadlines(condition: Condition, report: Mapping[str, Any]) -> list[datetime]:
    """When this report's answer to ``condition`` may flip as time passes, by its
    ``max_age_days`` comparisons (the fact's time plus the days, and a second)."""
    if condition.children:
        return [d for c in condition.children for d in deadlines(c, report)]
    if condition.op is not Comparison.MAX_AGE_DAYS:
        return []
    then = parse_time(lookup(report, condition.fact))
    if then is None:
        return []
    return [then + timedelta(days=condition.value, seconds=1)]


def evaluate(condition: Condition, report: Mapping[str, Any]) -> Outcome:
    op = condition.op
    if isinstance(op, Comparison):
        return _judge(condition, report, op)
    match op:
        case Combinator.ALL:
            outcomes = [evaluate(c, report) for c in condition.children]
            if Outcome.FAIL in outcomes:
                return Outcome.FAIL
            return Outcome.UNKNOWN if Outcome.UNKNOWN in outcomes else Outcome.PASS
        case Combinator.ANY:
            outcomes = [evaluate(c, report) for c in condition.children]
            if Outcome.PASS in outcomes:
                return Outcome.PASS
            return Outcome.UNKNOWN if Outcome.UNKNOWN in outcomes else Outcome.FAIL
        case Combinator.NOT:
            inner = evaluate(condition.children[0], report)
            swapped = {Outcome.PASS: Outcome.FAIL, Outcome.FAIL: Outcome.PASS}
            return swapped.get(inner, Outcome.UNKNOWN)
        case _:
            assert_never(op)


# -- fact paths, derived from the report's own types ----------------------------------


def _field_shapes() -> dict[str, Any]:
    """Report field → its type (status.json's shape: a dataclass, a dict, or a leaf)."""
    hints = typing.get_type_hints(Report)
    return {name: hints[name] for name in REPORT_FIELDS}


_SHAPES: Final = _field_shapes()


def fact_problem(fact: str) -> str | None:
    """Why ``fact`` names nothing a report can hold, or None."""
    root, *rest = fact.split(".")
    if "" in (root, *rest):
        return f"{fact[:80]!r} has an empty part; write e.g. facts.firewall"
    if root not in FACT_ROOTS:
        return f"{fact[:80]!r} is not a report field"
    if root == "report":
        if len(rest) == 1 and rest[0] in SITE_FACTS:
            return None
        return f"report.* is one of {', '.join('report.' + f for f in SITE_FACTS)}"
    if root == VULN_ROOT:
        if len(rest) == 2 and rest[0] in VULN_FACTS and rest[1] in VULN_SEVERITIES:
            return None
        return (
            f"vulns.* is vulns.<{'|'.join(VULN_FACTS)}>.<severity>, severity one of "
            f"{', '.join(VULN_SEVERITIES)} (e.g. vulns.oldest_days.critical)"
        )
    shape = _SHAPES[root]
    if is_dataclass(shape):
        names = [f.name for f in fields(shape)]
        if len(rest) != 1 or rest[0] not in names:
            return f"{root}.* is one of {', '.join(names)}"
    elif typing.get_origin(shape) is not dict and rest:
        return f"{root} is a single value; it has no {'.'.join(rest)[:60]!r}"
    return None


def _age_problem(fact: str, value: Any) -> str | None:
    """The site adds ``report.age_seconds`` to a report's time to know when an answer
    flips: a number of seconds past any date would overflow that."""
    number = _number_of(value)
    if fact == AGE_FACT and number is not None and not 0 <= number <= MAX_DURATION:
        return f"must be between 0 and {MAX_DURATION} seconds (ten years) for {AGE_FACT}"
    return None


# -- loading ----------------------------------------------------------------------------


@dataclass(frozen=True)
class _Parse:
    """Parses one policy's condition tree; problems go to the policy file's reader, which
    knows the line of every field."""

    top: Reader

    def problem(self, field_name: str, what: str, fix: str = "") -> None:
        self.top.problem(field_name, what, fix)

    def condition(self, data: Any, field_name: str, depth: int = 1) -> Condition | None:
        if depth > MAX_CONDITION_DEPTH:
            self.problem(
                field_name,
                f"conditions are nested deeper than {MAX_CONDITION_DEPTH} levels",
                "flatten them (all/any take a list)",
            )
            return None
        if not isinstance(data, dict):
            self.problem(
                field_name, "must be a mapping", "e.g. {fact: facts.firewall, equals: active}"
            )
            return None
        for combinator in Combinator:
            if combinator in data:
                return self.combined(data, combinator, field_name, depth)
        return self.comparison(data, field_name)

    def combined(
        self, data: dict[Any, Any], op: Combinator, field_name: str, depth: int
    ) -> Condition | None:
        here = f"{field_name}.{op}"
        if len(data) != 1:
            self.problem(here, f"must be the only key of its condition (found {len(data)} keys)")
            return None
        items = data[op]
        if op is Combinator.NOT:
            child = self.condition(items, here, depth + 1)
            return Condition(op, children=(child,)) if child is not None else None
        if not isinstance(items, list) or not items:
            self.problem(here, "must be a non-empty list of conditions")
            return None
        children = [self.condition(c, f"{here}[{i}]", depth + 1) for i, c in enumerate(items)]
        if any(c is None for c in children):
            return None
        return Condition(op, children=tuple(c for c in children if c is not None))

    def comparison(self, data: dict[Any, Any], field_name: str) -> Condition | None:
        fact = data.get("fact")
        ops = [key for key in data if key != "fact"]
        if not isinstance(fact, str) or not fact:
            self.problem(
                f"{field_name}.fact", "is missing", "name a report field, e.g. facts.firewall"
            )
            return None
        problem = fact_problem(fact)
        if problem:
            self.problem(
                f"{field_name}.fact",
                problem,
                "start with facts., system., report., vulns. or another status.json key "
                "(docs/protocol.md lists them)",
            )
            return None
        if len(ops) != 1 or ops[0] not in COMPARISONS:
            found = ", ".join(str(op)[:40] for op in ops) or "none"
            self.problem(
                field_name,
                f"needs exactly one operator besides 'fact' (found {found})",
                f"use one of {', '.join(COMPARISONS)}, or all/any/not",
            )
            return None
        op = Comparison(ops[0])
        value = data[ops[0]]
        problem = COMPARISONS[op].check(value) or _age_problem(fact, value)
        if problem:
            self.problem(f"{field_name}.{op}", problem)
            return None
        return Condition(op, fact=fact, value=value)


def _severity(top: Reader) -> Severity:
    text = top.string("severity", "medium")
    try:
        return Severity(text)
    except ValueError:
        top.problem("severity", f"{text[:40]!r} is not one of {', '.join(SEVERITIES)}")
        return Severity.MEDIUM


def _policy_name(top: Reader) -> str:
    name = top.string("name", required=True)
    if name and not _POLICY_NAME.match(name):
        top.problem(
            "name",
            f"{name[:60]!r} is not a policy name",
            "use letters, digits, '.', '_' and '-' (exemptions and pages refer to it)",
        )
        return ""
    return name


def _load_one(source: Source, path: str, problems: Problems) -> Policy | None:
    where = source.describe(path)
    raw = source.read(path)
    if raw is None:
        return None
    data = load_yaml(raw, where, problems)
    if data is None:
        return None
    top = Reader(data, where, problems)
    name = _policy_name(top)
    severity = _severity(top)
    selector_reader = top.mapping("applies_to")
    selector = Selector(
        tags=selector_reader.strings("tags"),
        profiles=selector_reader.strings("profiles"),
        hosts=selector_reader.strings("hosts"),
    )
    selector_reader.finish()
    condition = _Parse(top).condition(top.get("condition"), "condition")
    description = top.string("description")
    resolution = top.string("resolution")
    top.finish()
    if not name or condition is None:
        return None
    return Policy(name, description, severity, resolution, condition, selector, path)


def load_policies(source: Source, problems: Problems) -> list[Policy]:
    result: list[Policy] = []
    seen: dict[str, str] = {}
    for entry in source.list_dir(POLICIES_DIR) or []:
        if not entry.endswith((".yaml", ".yml")):
            continue
        path = f"{POLICIES_DIR}/{entry}"
        policy = _load_one(source, path, problems)
        if policy is None:
            continue
        if policy.name in seen:
            problems.add(
                source.describe(path),
                f"{policy.name!r} is also defined in {seen[policy.name]}",
                "names must be unique",
                field="name",
            )
            continue
        seen[policy.name] = path
        result.append(policy)
    return result
