"""Property: whatever bytes a host puts in its status.json, signed with its key or not
signed at all, the site builds, counts that report as nothing, and every other host still
renders. Generated and mutated reports go through the real incremental build (a cached
site, then one new report commit), as they would on the server."""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gitops.protocol import Report
from gitops.sitegen import build as site_build
from gitops.sitegen.cache import cache_dir_for
from testing.site_helpers import NOW, Fleet

FIELDS = (
    "schema",
    "host",
    "time",
    "agent_version",
    "result",
    "reason",
    "report_id",
    "deploy_seen",
    "deploy_applied",
    "source_commit",
    "action",
    "system",
    "facts",
    "durations",
    "log_tail",
    "changes",
    "commands",  # the agent's acknowledgements of signed commands
    "reboot_needed_since",
)
SYSTEM_FIELDS = (
    "store_path",
    "generation",
    "current_system",
    "booted_system",
    "nixos_version",
    "reboot_required",
)
TIMES = (
    "9999-12-31T23:59:59Z",
    "0001-01-01T00:00:00Z",
    "2100-01-01T00:00:00Z",
    "2026-11-23T12:04:00Z",
    "2026-02-30T00:00:00Z",
    "2026-11-23 12:00:00",
)

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=20)
    | st.sampled_from(TIMES),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


ACKS = st.lists(
    st.fixed_dictionaries(
        {
            "id": st.sampled_from(["reboot-20261123-abcdef12", "x", ""]),
            "name": st.sampled_from(["reboot", "collect-logs", "run-check", "nope"]),
            "outcome": st.sampled_from(["done", "failed", "refused", "maybe"]),
            "at": st.sampled_from(TIMES),
        },
        optional={"detail": json_values, "output": json_values},
    ),
    max_size=3,
)
# Values plausible for a field (so that some reports parse and reach the pages), beside
# any JSON at all.
PLAUSIBLE: dict[str, st.SearchStrategy[Any]] = {
    "commands": ACKS,
    "reboot_needed_since": st.sampled_from(TIMES),
}


@dataclass(frozen=True)
class Template:
    fleet: Fleet
    out: Path
    good: dict[str, Any]  # web's valid status.json


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("properties")
    fleet = Fleet.create(root / "fleet.git")
    fleet.add_host("web")
    fleet.add_host("ok")
    fleet.commit_main("Import", NOW - timedelta(days=2))
    fleet.publish(NOW - timedelta(days=2))
    fleet.report("ok", NOW - timedelta(hours=1))
    head = fleet.report("web", NOW - timedelta(hours=2))
    out = root / "www" / "site"
    site_build.build(fleet.path, out, now=NOW, workers=1)
    commit = fleet.repo.get(head)
    assert isinstance(commit, pygit2.Commit)
    blob = commit.tree["status.json"]
    assert isinstance(blob, pygit2.Blob)
    return Template(fleet, out, Report.from_json(bytes(blob.data)).to_dict())


@st.composite
def statuses(draw: st.DrawFn, good: dict[str, Any]) -> bytes:
    """A status.json: the good one with one field given another value (often of another
    type) or removed, a deep nest, a JSON constant Python accepts and JSON does not, or
    any bytes at all."""
    kind = draw(st.sampled_from(["field", "field", "field", "nest", "constant", "bytes"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    status = json.loads(json.dumps(good))
    if kind == "nest":
        depth = draw(st.integers(min_value=1, max_value=3000))
        field = draw(st.sampled_from(["facts", "system", "durations", "changes"]))
        status[field] = "NEST"  # written as text: json itself cannot nest that deep
        return json.dumps(status).replace('"NEST"', "[" * depth + "]" * depth).encode()
    if kind == "constant":
        text = json.dumps(status)
        constant = draw(st.sampled_from(["NaN", "Infinity", "-Infinity", "1" * 5000]))
        return text.replace('"generation": 1', f'"generation": {constant}').encode()
    path = draw(st.sampled_from([*FIELDS, *(f"system.{f}" for f in SYSTEM_FIELDS)]))
    parent, key = (status["system"], path[7:]) if path.startswith("system.") else (status, path)
    if draw(st.booleans()) and key != "system":
        parent.pop(key, None)
    else:
        parent[key] = draw(PLAUSIBLE.get(key, json_values) | json_values)
    return json.dumps(status).encode()


@pytest.fixture
def scratch() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="site-property-") as name:
        yield Path(name)


def _copy(template: Template, into: Path) -> tuple[Fleet, Path]:
    """The template's repository and built site (with its cache), to change freely."""
    shutil.copytree(template.fleet.path, into / "fleet.git")
    out = into / "www" / "site"
    shutil.copytree(template.out, out)
    shutil.copytree(cache_dir_for(template.out), cache_dir_for(out))
    repo = pygit2.Repository(str(into / "fleet.git"))
    return replace(template.fleet, path=into / "fleet.git", repo=repo), out


@settings(
    max_examples=30,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data())
def test_no_status_json_breaks_the_site(
    template: Template, scratch: Path, data: st.DataObject
) -> None:
    reports = data.draw(
        st.lists(st.tuples(statuses(template.good), st.booleans()), min_size=1, max_size=6),
        label="status.json files (and whether each is signed)",
    )
    with tempfile.TemporaryDirectory(dir=scratch) as name:
        fleet, out = _copy(template, Path(name))
        written = []
        for index, (status, signed) in enumerate(reports):
            when = NOW - timedelta(minutes=50 - index)
            written.append((fleet.raw_report("web", status, when, signed=signed), status))
        site_build.build(fleet.path, out, now=NOW, workers=1)
        rows = {h["name"]: h for h in json.loads((out / "inventory.json").read_text())["hosts"]}
        assert rows["ok"]["state"] == "up to date"
        assert (out / "hosts" / "ok.html").is_file() and (out / "hosts" / "web.html").is_file()
        shown = {
            r["commit"]: r for r in json.loads((out / "hosts" / "web.json").read_text())["reports"]
        }
        for oid, status in written:
            try:
                Report.from_json(status)
            except ValueError:
                assert shown[oid]["error"]  # refused by the one parser: counts as nothing
            else:
                assert shown[oid]["error"] is None
        if all(shown[oid]["error"] for oid, _ in written):
            assert rows["web"]["last_seen"] == "2026-11-23T10:00:00Z"
