"""Reading report history through git's commit-graph gives the same site as reading
every commit object, whatever the graph holds (one file, a chain of split layers, none of
the newest commits, or garbage)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pygit2

from gitops.protocol import reports_ref
from gitops.sitegen import build as site_build
from gitops.sitegen import commitgraph
from gitops.system import process
from testing.site_helpers import NOW, Fleet, standard_fleet

PAGES = ("inventory.json", "audit.json", "index.json", "hosts/up.json", "hosts/pending.json")


def build(fleet: Fleet, out: Path) -> None:
    site_build.build(fleet.path, out, now=NOW, workers=1, use_cache=False)


def load(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


def graph_files(repo: Path) -> list[Path]:
    info = repo / "objects" / "info"
    return [p for p in info.rglob("*") if "commit-graph" in str(p.relative_to(info))]


def write_graph(repo: Path, *extra: str) -> None:
    process.run(
        ["git", "-C", str(repo), "commit-graph", "write", "--reachable", *extra], check=True
    )


def first_parents(repo: pygit2.Repository, head: str) -> list[tuple[str, int, str]]:
    walker = repo.walk(head)
    walker.simplify_first_parent()
    return [(str(c.id), c.commit_time, str(c.tree_id)) for c in walker]


def test_graph_walks_equal_object_walks(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    for hour in range(1, 40):  # a longer history for one host, in two graph layers
        fleet.report("up", NOW - timedelta(hours=40 - hour))
        if hour == 20:
            write_graph(fleet.path, "--split")
    write_graph(fleet.path, "--split=no-merge")
    for hour in range(3):  # and some commits the graph does not know yet
        fleet.report("up", NOW - timedelta(minutes=30 - hour))
    chain = fleet.path / "objects" / "info" / "commit-graphs" / "commit-graph-chain"
    assert len(chain.read_text().split()) == 2
    repo = pygit2.Repository(str(fleet.path))
    graph = commitgraph.CommitGraph.open(repo)
    assert graph is not None
    head = str(repo.references[reports_ref("up")].target)
    expected = first_parents(repo, head)
    steps = list(commitgraph.walk(repo, graph, head))
    assert [(s.sha, s.time, str(s.tree)) for s in steps] == expected
    assert [s.parent for s in steps] == [e[0] for e in expected[1:]] + [None]
    stop = expected[10][0]
    assert [s.sha for s in commitgraph.walk(repo, graph, head, stop)] == [
        e[0] for e in expected[:10]
    ]
    shared = commitgraph.Walks(repo)  # a second walk is served from the first as far as it went
    first = [s.sha for _, s in zip(range(5), shared.walk(head), strict=False)]
    assert first == [e[0] for e in expected[:5]]
    assert [s.sha for s in shared.walk(head)] == [e[0] for e in expected]


def test_site_is_the_same_with_and_without_a_graph(tmp_path: Path) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    write_graph(fleet.path)
    fleet.report("pending", NOW - timedelta(minutes=5))  # newer than the graph
    repo = pygit2.Repository(str(fleet.path))
    assert commitgraph.CommitGraph.open(repo) is not None
    with_graph, without = tmp_path / "with", tmp_path / "without"
    damaged, garbage = tmp_path / "damaged", tmp_path / "garbage"
    build(fleet, with_graph)
    graph = fleet.path / "objects" / "info" / "commit-graph"
    good = graph.read_bytes()
    # A graph whose first parent of host "up"'s head points nowhere: the walk goes on
    # through the objects.
    opened = commitgraph.CommitGraph.open(repo)
    assert opened is not None
    layer = opened.layers[0]
    head = repo.references[reports_ref("up")].target
    assert isinstance(head, pygit2.Oid)
    position = opened.find(bytes(head.raw))
    assert position is not None
    data = bytearray(good)
    data[layer.records + 36 * position + 20 : layer.records + 36 * position + 24] = (
        0x0FFFFFFF
    ).to_bytes(4, "big")
    graph.chmod(0o644)
    graph.write_bytes(bytes(data))
    build(fleet, damaged)
    graph.write_bytes(b"CGPH" + b"\x01\x01\x09\x00" + b"\xff" * 200)  # not a graph at all
    build(fleet, garbage)
    for path in graph_files(fleet.path):
        path.unlink()
    build(fleet, without)
    for name in PAGES:
        expected = load(without, name)
        for out in (with_graph, damaged, garbage):
            assert load(out, name) == expected, (out.name, name)
    assert len(load(with_graph, "hosts/pending.json")["reports"]) == 3
    assert len(load(damaged, "hosts/up.json")["reports"]) > 1  # read past the damage
