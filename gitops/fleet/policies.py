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

Operators: ``equals``, ``not_equals``, ``in``, ``not_in``, ``at_least``, ``at_most``,
``is_empty``, ``contains``, ``exists`` on a ``fact`` (a dotted path into the report:
``facts.firewall``, ``system.reboot_required``, ``facts.disk_free_bytes./``), combined
with ``all``, ``any`` and ``not``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from gitops.fleet.schema import Problems, Reader, load_yaml
from gitops.fleet.source import Source
from gitops.protocol import REPORT_FIELDS

POLICIES_DIR = "policies"
SEVERITIES = ("low", "medium", "high", "critical")
_COMPARISONS = (
    "equals",
    "not_equals",
    "in",
    "not_in",
    "at_least",
    "at_most",
    "is_empty",
    "contains",
    "exists",
)
UNKNOWN_VALUES = (None, "unknown")
# Where a ``fact`` path may start: status.json's top-level keys (docs/protocol.md), plus
# ``report``, which the site adds at build time (``report.age_seconds``, ``report.verified``).
FACT_ROOTS = frozenset({*REPORT_FIELDS, "report"})


class Outcome(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    UNKNOWN = "unknown"


@dataclass(frozen=True)
class Condition:
    op: str  # one of _COMPARISONS, or all / any / not
    fact: str = ""
    value: Any = None
    children: tuple[Condition, ...] = ()

    def describe(self) -> str:
        if self.op in ("all", "any"):
            joined = f" {'and' if self.op == 'all' else 'or'} ".join(
                c.describe() for c in self.children
            )
            return f"({joined})"
        if self.op == "not":
            return f"not {self.children[0].describe()}"
        if self.op in ("is_empty", "exists"):
            return f"{self.fact} {self.op.replace('_', ' ')}"
        return f"{self.fact} {self.op.replace('_', ' ')} {self.value!r}"


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
    severity: str
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


def _compare(op: str, actual: Any, expected: Any) -> bool:
    match op:
        case "equals":
            return bool(actual == expected)
        case "not_equals":
            return bool(actual != expected)
        case "in":
            return actual in expected
        case "not_in":
            return actual not in expected
        case "at_least":
            return isinstance(actual, int | float) and actual >= expected
        case "at_most":
            return isinstance(actual, int | float) and actual <= expected
        case "is_empty":
            return (
                (len(actual) == 0) == bool(expected)
                if isinstance(actual, list | dict | str)
                else False
            )
        case "contains":
            return isinstance(actual, list | str) and expected in actual
        case "exists":
            return True
    raise AssertionError(op)


def evaluate(condition: Condition, report: Mapping[str, Any]) -> Outcome:
    if condition.op == "all":
        outcomes = [evaluate(c, report) for c in condition.children]
        if Outcome.FAIL in outcomes:
            return Outcome.FAIL
        return Outcome.UNKNOWN if Outcome.UNKNOWN in outcomes else Outcome.PASS
    if condition.op == "any":
        outcomes = [evaluate(c, report) for c in condition.children]
        if Outcome.PASS in outcomes:
            return Outcome.PASS
        return Outcome.UNKNOWN if Outcome.UNKNOWN in outcomes else Outcome.FAIL
    if condition.op == "not":
        inner = evaluate(condition.children[0], report)
        return {Outcome.PASS: Outcome.FAIL, Outcome.FAIL: Outcome.PASS}.get(inner, Outcome.UNKNOWN)
    actual = lookup(report, condition.fact)
    if condition.op == "exists":
        return Outcome.PASS if actual not in UNKNOWN_VALUES else Outcome.FAIL
    if actual in UNKNOWN_VALUES:
        return Outcome.UNKNOWN
    return Outcome.PASS if _compare(condition.op, actual, condition.value) else Outcome.FAIL


def _parse_condition(
    data: Any, where: str, field_name: str, problems: Problems
) -> Condition | None:
    if not isinstance(data, dict):
        problems.add(
            f"{where}: {field_name}",
            "must be a mapping",
            "e.g. {fact: facts.firewall, equals: active}",
        )
        return None
    for combinator in ("all", "any"):
        if combinator in data:
            items = data[combinator]
            if len(data) != 1 or not isinstance(items, list) or not items:
                problems.add(
                    f"{where}: {field_name}.{combinator}",
                    "must be the only key, with a non-empty list of conditions",
                )
                return None
            children = [
                _parse_condition(item, where, f"{field_name}.{combinator}[{i}]", problems)
                for i, item in enumerate(items)
            ]
            if any(c is None for c in children):
                return None
            return Condition(combinator, children=tuple(c for c in children if c is not None))
    if "not" in data:
        if len(data) != 1:
            problems.add(f"{where}: {field_name}.not", "must be the only key")
            return None
        child = _parse_condition(data["not"], where, f"{field_name}.not", problems)
        return Condition("not", children=(child,)) if child is not None else None
    fact = data.get("fact")
    ops = [key for key in data if key != "fact"]
    if not isinstance(fact, str) or not fact:
        problems.add(
            f"{where}: {field_name}.fact", "is missing", "name a report field, e.g. facts.firewall"
        )
        return None
    if fact.split(".", 1)[0] not in FACT_ROOTS:
        problems.add(
            f"{where}: {field_name}.fact",
            f"{fact!r} is not a report field",
            "start with facts., system., report. or another status.json key "
            "(docs/protocol.md lists them)",
        )
        return None
    if len(ops) != 1 or ops[0] not in _COMPARISONS:
        problems.add(
            f"{where}: {field_name}",
            f"needs exactly one operator besides 'fact' (found {', '.join(map(str, ops)) or 'none'})",
            f"use one of {', '.join(_COMPARISONS)}, or all/any/not",
        )
        return None
    op = ops[0]
    value = data[op]
    if op in ("in", "not_in") and not isinstance(value, list):
        problems.add(f"{where}: {field_name}.{op}", "must be a list")
        return None
    if op in ("at_least", "at_most") and (
        not isinstance(value, int | float) or isinstance(value, bool)
    ):
        problems.add(f"{where}: {field_name}.{op}", "must be a number")
        return None
    return Condition(op, fact=fact, value=value)


def load_policies(source: Source, problems: Problems) -> list[Policy]:
    names = source.list_dir(POLICIES_DIR) or []
    result: list[Policy] = []
    seen: dict[str, str] = {}
    for name in names:
        if not name.endswith((".yaml", ".yml")):
            continue
        path = f"{POLICIES_DIR}/{name}"
        where = source.describe(path)
        raw = source.read(path)
        if raw is None:
            continue
        data = load_yaml(raw, where, problems)
        if data is None:
            continue
        top = Reader(data, where, problems)
        policy_name = top.string("name", required=True)
        severity = top.string("severity", "medium")
        if severity not in SEVERITIES:
            top.problem("severity", f"{severity!r} is not one of {', '.join(SEVERITIES)}")
        selector_reader = top.mapping("applies_to")
        selector = Selector(
            tags=selector_reader.strings("tags"),
            profiles=selector_reader.strings("profiles"),
            hosts=selector_reader.strings("hosts"),
        )
        selector_reader.finish()
        condition = _parse_condition(top.get("condition"), where, "condition", problems)
        description = top.string("description")
        resolution = top.string("resolution")
        top.finish()
        if policy_name in seen:
            top.problem(
                "name",
                f"{policy_name!r} is also defined in {seen[policy_name]}",
                "names must be unique",
            )
            continue
        if policy_name and condition is not None:
            seen[policy_name] = path
            result.append(
                Policy(policy_name, description, severity, resolution, condition, selector, path)
            )
    return result
