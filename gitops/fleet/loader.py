"""Read one YAML file strictly: every file gitops reads (fleet.yaml, host.yaml, policies,
the agent configuration) goes through :func:`load_document`.

PyYAML's safe loader is permissive where it hurts: a repeated key silently replaces the
first (a second ``key:`` in host.yaml swapped a host's trust anchor), aliases can make a
small file stand for billions of values (the "billion laughs"), nesting is unbounded, and
an impossible date (``2024-02-30``) raises a bare ``ValueError``. Here a document is
composed first (libyaml, fast; aliases stay shared nodes, nothing is expanded), walked once
with bounds on size, depth and expansion and checked for duplicate keys, and only then
turned into Python values. Dates stay strings: the fields that hold dates parse them and
say which field is wrong.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Final

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

MAX_BYTES: Final = 1 << 20  # no fleet file comes near 1 MiB; a bigger one is a mistake
MAX_DEPTH: Final = 64  # levels of nesting, counted through aliases
MAX_VALUES: Final = 100_000  # values after expanding aliases

_BASE: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_MERGE_TAG: Final = "tag:yaml.org,2002:merge"
_TIMESTAMP_TAG: Final = "tag:yaml.org,2002:timestamp"


class _Loader(_BASE):  # type: ignore[valid-type,misc]
    """libyaml's parser when available (an order of magnitude faster on large fleets)."""

    # Implicit timestamps off: `expires: 2024-02-30` reaches the field as text, which
    # reports a bad date with its field; a date that parses is parsed there too.
    yaml_implicit_resolvers: ClassVar[dict[Any, list[tuple[Any, Any]]]] = {
        first: [(tag, regexp) for tag, regexp in resolvers if tag != _TIMESTAMP_TAG]
        for first, resolvers in _BASE.yaml_implicit_resolvers.items()
    }

    def construct_object(self, node: Node, deep: bool = False) -> Any:
        # An explicit `!!timestamp 2024-02-30` or a 5,000-digit integer raises ValueError
        # deep in PyYAML; give it the node's position like every other YAML error.
        try:
            return super().construct_object(node, deep)
        except (ValueError, OverflowError, TypeError) as err:
            raise yaml.constructor.ConstructorError(
                None, None, f"invalid value {_short(node.value)} ({err})", node.start_mark
            ) from err


class Document(dict[Any, Any]):
    """A YAML file's top-level mapping, remembering the line of each field for messages:
    ``lines["exemptions[0].expires"] == 9``."""

    lines: dict[str, int]


@dataclass(frozen=True)
class YamlProblem:
    """Why a file was refused: where (line, field when known) and what to do."""

    problem: str
    fix: str
    line: int | None = None
    field: str = ""


class RefusedError(Exception):
    """The document cannot be used; ``problems`` says why (every duplicate key at once)."""

    def __init__(self, problems: list[YamlProblem]) -> None:
        super().__init__(problems[0].problem)
        self.problems = problems


def _short(value: object) -> str:
    text = str(value)
    return repr(text if len(text) <= 40 else text[:40] + "...")


def _line(node: Node) -> int:
    return int(node.start_mark.line) + 1


def _key_name(loader: _Loader, node: Node) -> tuple[object, str]:
    """(what the key means, how to name it): ``1`` and ``0x1``, or ``yes`` and ``true``,
    are the same key once loaded, so duplicates are found by value."""
    if not isinstance(node, ScalarNode):
        return id(node), f"<{type(node).__name__} at line {_line(node)}>"
    text = str(node.value)
    try:
        value = loader.construct_object(node)
    except yaml.YAMLError:
        return ("text", text), text
    try:
        hash(value)
    except TypeError:
        return ("text", text), text
    # bool is an int to Python (True == 1); YAML means different keys.
    return (type(value) is bool, value), text


@dataclass
class _Walk:
    loader: _Loader
    lines: dict[str, int]
    problems: list[YamlProblem]
    count: int = 0

    def mapping(self, node: MappingNode, path: str, first_visit: bool) -> list[tuple[Node, str]]:
        children: list[tuple[Node, str]] = []
        seen: dict[object, int] = {}
        for key_node, value_node in node.value:
            identity, name = _key_name(self.loader, key_node)
            field = f"{path}.{name}" if path else name
            line = _line(key_node)
            if key_node.tag == _MERGE_TAG and first_visit:
                # `<<: *defaults` lets one key silently override another: what a reviewer
                # reads is not what counts, the very thing duplicate keys are refused for.
                self.problems.append(
                    YamlProblem(
                        "merge keys (<<) are not accepted",
                        "write the keys out in this mapping",
                        line,
                        field,
                    )
                )
            if first_visit and identity in seen:
                self.problems.append(
                    YamlProblem(
                        f"duplicate key (first at line {seen[identity]})",
                        "keep one",
                        line,
                        field,
                    )
                )
            seen.setdefault(identity, line)
            self.lines.setdefault(field, line)
            children.append((value_node, field))
        return children

    def sequence(self, node: SequenceNode, path: str) -> list[tuple[Node, str]]:
        children = []
        for index, item in enumerate(node.value):
            field = f"{path}[{index}]"
            self.lines.setdefault(field, _line(item))
            children.append((item, field))
        return children

    def run(self, root: Node) -> None:
        """Depth-first over the document as it would expand, aliases included; stop at the
        first bound exceeded (an alias cycle exceeds the depth)."""
        stack: list[tuple[Node, str, int]] = [(root, "", 1)]
        visited: set[int] = set()
        while stack:
            node, path, depth = stack.pop()
            self.count += 1
            if self.count > MAX_VALUES:
                raise RefusedError(
                    [
                        YamlProblem(
                            f"expands to more than {MAX_VALUES:,} values (an alias, *name, "
                            "repeats everything its anchor holds)",
                            "write the values out, or use fewer aliases",
                            _line(node),
                        )
                    ]
                )
            if depth > MAX_DEPTH:
                raise RefusedError(
                    [
                        YamlProblem(
                            f"nested deeper than {MAX_DEPTH} levels",
                            "flatten it (aliases count as the levels they stand for)",
                            _line(node),
                        )
                    ]
                )
            first_visit = id(node) not in visited
            visited.add(id(node))
            if isinstance(node, MappingNode):
                children = self.mapping(node, path, first_visit)
            elif isinstance(node, SequenceNode):
                children = self.sequence(node, path)
            else:
                continue
            stack.extend((child, field, depth + 1) for child, field in reversed(children))


def _syntax_problem(err: yaml.YAMLError) -> YamlProblem:
    mark = getattr(err, "problem_mark", None) or getattr(err, "context_mark", None)
    reason = str(getattr(err, "problem", None) or str(err).splitlines()[0])
    if len(reason) > 100:
        reason = reason[:100] + "..."
    fix = "fix the value"
    if not isinstance(err, yaml.constructor.ConstructorError):
        reason, fix = f"invalid YAML ({reason})", "fix the syntax"
    if mark is None:
        return YamlProblem(reason, fix)
    return YamlProblem(f"{reason} at column {mark.column + 1}", fix, mark.line + 1)


def load_document(text: bytes | str) -> Any:
    """The file's value (a :class:`Document` when it is a mapping), or :class:`RefusedError`."""
    if len(text) > MAX_BYTES:
        raise RefusedError(
            [
                YamlProblem(
                    f"is {len(text):,} bytes, more than the {MAX_BYTES:,} gitops reads",
                    "split it or remove what does not belong in it",
                )
            ]
        )
    loader = _Loader(text)
    try:
        try:
            root = loader.get_single_node()
        except RecursionError:  # the pure-Python composer without libyaml, on deep nesting
            raise RefusedError(
                [YamlProblem(f"nested deeper than {MAX_DEPTH} levels", "flatten it")]
            ) from None
        if root is None:
            return None
        walk = _Walk(loader, {}, [])
        walk.run(root)
        if walk.problems:
            raise RefusedError(walk.problems)
        value = loader.construct_document(root)
    except yaml.YAMLError as err:
        raise RefusedError([_syntax_problem(err)]) from err
    finally:
        loader.dispose()
    if isinstance(value, dict):
        document = Document(value)
        document.lines = walk.lines
        return document
    return value
