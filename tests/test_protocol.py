"""The protocol module and docs/protocol.md say the same thing."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pytest

from gitops import protocol
from gitops.fleet.policies import FACT_ROOTS
from gitops.fleet.rollout_record import Record

DOC = (Path(__file__).resolve().parent.parent / "docs" / "protocol.md").read_text(encoding="utf-8")


def _status_example() -> dict[str, object]:
    block = DOC.split("### `status.json`", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    example = json.loads(block)
    assert isinstance(example, dict)
    return example


def test_the_documented_status_json_has_exactly_the_report_fields_in_order() -> None:
    assert tuple(_status_example()) == protocol.REPORT_FIELDS


def test_the_documented_system_object_has_exactly_the_system_fields() -> None:
    system = _status_example()["system"]
    assert isinstance(system, dict)
    assert set(system) == set(protocol.SystemInfo.__dataclass_fields__)


def test_every_result_is_documented_and_nothing_else() -> None:
    table = DOC.split("`result` is one of:", 1)[1].split("\n\n", 2)[1]
    documented = re.findall(r"^\| `([a-z-]+)` \|", table, flags=re.M)
    assert documented == [str(result) for result in protocol.Result]


def test_every_trailer_and_ref_prefix_is_documented() -> None:
    for name in (
        protocol.TRAILER_SOURCE,
        protocol.TRAILER_HOST,
        protocol.TRAILER_EXPIRES,
        protocol.TRAILER_SOURCE_GENERATION,
        protocol.TRAILER_RECOVERS,
        protocol.TRAILER_REPORT_ID,
        protocol.TRAILER_RESULT,
        protocol.TRAILER_DEPLOY_COMMIT,
    ):
        assert f"`{name}`" in DOC or f"{name}:" in DOC, name
    for prefix in (protocol.DEPLOY_PREFIX, protocol.REPORTS_PREFIX):
        assert f"`{protocol.branch_name(prefix)}<host>`" in DOC
    assert protocol.HOST_NAME.pattern in DOC
    assert f"`{protocol.branch_name(protocol.ROLLOUT_REF)}`" in DOC
    assert f"`{protocol.ROLLOUT_FILE}`" in DOC


def test_the_documented_rollout_record_parses() -> None:
    text = DOC.split("## The rollout branch", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    record = Record.from_json(text)
    assert record.to_json() == Record.from_json(record.to_json()).to_json()
    assert json.loads(record.to_json())["schema"] == protocol.ROLLOUT_SCHEMA
    assert [w.name for w in record.reached()] == ["canary", "early"]


def test_policies_may_name_every_report_field_including_changes() -> None:
    assert set(protocol.REPORT_FIELDS) <= FACT_ROOTS
    assert "changes" in FACT_ROOTS


def test_time_round_trips_and_bad_times_say_what_is_wrong() -> None:
    moment = datetime(2026, 11, 23, 10, 0, 5, tzinfo=UTC)
    assert protocol.format_time(moment) == "2026-11-23T10:00:05Z"
    assert protocol.parse_time("2026-11-23T10:00:05Z") == moment
    with pytest.raises(ValueError, match="not YYYY-MM-DDTHH:MM:SSZ"):
        protocol.parse_time("yesterday")
    with pytest.raises(ValueError, match="not a real date"):
        protocol.parse_time("2024-02-30T00:00:00Z")


def test_the_documented_secrets_manifest_parses_and_names_the_tree_paths() -> None:
    block = DOC.split("### Secrets in deploy trees", 1)[1].split("```json", 1)[1].split("```", 1)[0]
    files = protocol.parse_secrets_manifest(block)
    assert [f.name for f in files] == ["wifi-office", "backup-password"]
    assert files[0].mode == 0o440 and files[1].path is None
    assert f"`{protocol.SECRETS_MANIFEST}`" in DOC
    assert f"`{protocol.SECRETS_DIR}/<name>{protocol.SECRET_SUFFIX}`" in DOC
    assert protocol.SECRET_NAME.pattern in DOC
    assert f"`{protocol.ESCROW_DIR}/<name>.age`" in DOC
    assert f"`{protocol.branch_name(protocol.ENROLL_PREFIX)}<host>`" in DOC


def test_a_secrets_manifest_refuses_names_and_paths_that_could_escape() -> None:
    ok = {"mode": "0400"}
    for bad in ({"..": ok}, {"a/b": ok}, {"x.age": ok}, {"x": {"path": "/nix/store/x"}}):
        with pytest.raises(ValueError):
            protocol.parse_secrets_manifest(json.dumps({"schema": 1, "secrets": bad}))
