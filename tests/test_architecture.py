"""The import graph of ``gitops`` has no circle: every module can be read after the
modules it imports. Every import counts, also those inside functions and under
``if TYPE_CHECKING:`` (a circle hidden there is still a circle a reader must untangle).
The layer contracts themselves are import-linter's (pyproject ``[tool.importlinter]``).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import grimp
import pytest


def strongly_connected(
    nodes: Iterable[str], edges: Callable[[str], Iterable[str]]
) -> list[list[str]]:
    """Tarjan's algorithm, iteratively: the groups of nodes that reach each other."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in nodes:
        if root in index:
            continue
        work = [(root, iter(sorted(edges(root))))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges(child)))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                groups.append(sorted(group))
    return groups


def import_circles(graph: grimp.ImportGraph) -> list[list[str]]:
    groups = strongly_connected(sorted(graph.modules), graph.find_modules_directly_imported_by)
    return [g for g in groups if len(g) > 1]


def test_the_circle_finder_finds_a_circle_through_a_function_local_import() -> None:
    graph = grimp.ImportGraph()
    for name in ("pkg", "pkg.a", "pkg.b", "pkg.c"):
        graph.add_module(name)
    graph.add_import(importer="pkg.a", imported="pkg.b")
    graph.add_import(importer="pkg.b", imported="pkg.c")
    assert import_circles(graph) == []
    graph.add_import(importer="pkg.c", imported="pkg.a")
    assert import_circles(graph) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_a_circle_through_type_checking_and_function_imports_is_found(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    package = tmp_path / "circled"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from circled import b\n"
    )
    (package / "b.py").write_text("def late() -> None:\n    from circled import a\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert import_circles(grimp.build_graph("circled", cache_dir=None)) == [
        ["circled.a", "circled.b"]
    ]


def test_no_import_circle_anywhere_in_gitops() -> None:
    graph = grimp.build_graph("gitops", cache_dir=None)
    assert import_circles(graph) == []
