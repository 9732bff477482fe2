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
        protocol.TRAILER_SYSTEM_PATH,
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


def test_archive_refs_are_documented_and_parse_back() -> None:
    assert f"`{protocol.ARCHIVE_PREFIX}<host>/<YYYY-MM>`" in DOC
    assert protocol.ARCHIVE_MONTH.pattern in DOC
    ref = protocol.archive_ref("web-1", "2026-01")
    assert ref == "refs/archive/reports/web-1/2026-01"
    assert protocol.parse_archive_ref(ref) == ("web-1", "2026-01")
    for bad in (
        "refs/archive/reports/web-1/2026-13",
        "refs/archive/reports/Web_1/2026-01",
        "refs/archive/reports/web-1",
        "refs/heads/reports/web-1",
        "refs/archive/reports/web-1/2026-01/x",
    ):
        assert protocol.parse_archive_ref(bad) is None, bad


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


def _report(**extra: object) -> dict[str, object]:
    return {
        "schema": 1,
        "host": "web-1",
        "time": "2026-11-23T10:00:00Z",
        "result": "unchanged",
        "report_id": "r1",
        **extra,
    }


def test_an_old_report_without_commands_or_reboot_needed_since_still_parses() -> None:
    report = protocol.Report.from_json(json.dumps(_report()))
    assert report.commands == ()
    assert report.reboot_needed_since is None
    again = protocol.Report.from_json(report.to_json())
    assert again == report


def test_command_acknowledgements_and_reboot_needed_since_round_trip() -> None:
    ack = {
        "id": "20261206-143000-reboot-3fa2b1c4",
        "name": "reboot",
        "outcome": "done",
        "at": "2026-11-23T09:59:00Z",
        "detail": "rebooting after this report",
    }
    text = json.dumps(_report(commands=[ack], reboot_needed_since="2026-11-23T09:00:00Z"))
    report = protocol.Report.from_json(text)
    assert report.commands[0].outcome is protocol.CommandOutcome.DONE
    assert report.reboot_needed_since == datetime(2026, 11, 23, 9, tzinfo=UTC)
    assert protocol.Report.from_json(report.to_json()) == report
    assert report.to_dict()["commands"] == [ack]


@pytest.mark.parametrize(
    ("commands", "message"),
    [
        ([{"id": "x", "name": "reboot", "outcome": "done", "at": "2026-11-23T09:59:00Z"}], "id"),
        (
            [
                {
                    "id": "abcdefgh-1",
                    "name": "reboot",
                    "outcome": "maybe",
                    "at": "2026-11-23T09:59:00Z",
                }
            ],
            "outcome",
        ),
        ([{"id": "abcdefgh-1", "name": "reboot", "outcome": "done"}], "at: missing"),
        (["reboot"], "not an object"),
        ([{}] * 65, "more than 64"),
    ],
)
def test_a_bad_acknowledgement_refuses_the_report(commands: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        protocol.Report.from_json(json.dumps(_report(commands=commands)))


def test_reboot_needed_since_must_be_a_time() -> None:
    with pytest.raises(ValueError, match="reboot_needed_since"):
        protocol.Report.from_json(json.dumps(_report(reboot_needed_since=5)))


def _command(**changes: object) -> dict[str, object]:
    data: dict[str, object] = {
        "schema": 1,
        "id": "20261206-143000-collect-logs-3fa2b1c4",
        "name": "collect-logs",
        "hosts": ["web-1"],
        "issued": "2026-12-06T14:30:00Z",
        "expires": "2026-12-07T14:30:00Z",
        "units": ["sshd.service"],
        "since": 7200,
        "max_bytes": 4096,
    }
    data.update(changes)
    return data


def test_a_command_round_trips() -> None:
    command = protocol.Command.from_json(json.dumps(_command()))
    assert command.name is protocol.CommandName.COLLECT_LOGS
    assert command.units == ("sshd.service",)
    assert protocol.Command.from_json(command.to_json()) == command


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"name": "shell"}, "not one of reboot, poweroff"),
        ({"hosts": []}, "hosts"),
        ({"hosts": ["Web_1"]}, "hosts"),
        ({"units": ["-a; rm -rf /"]}, "units"),
        ({"max_bytes": 10**9}, "max_bytes"),
        ({"expires": "2026-12-06T14:30:00Z"}, "after issued"),
        ({"name": "run-check", "check": "../x"}, "check"),
        ({"schema": 2}, "schema"),
        ({"id": "a/b"}, "id"),
    ],
)
def test_a_bad_command_says_what_is_wrong(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        protocol.Command.from_json(json.dumps(_command(**changes)))


def test_every_command_name_and_control_path_is_documented() -> None:
    for name in protocol.CommandName:
        assert f"`{name}`" in DOC, name
    for outcome in protocol.CommandOutcome:
        assert f"`{outcome}`" in DOC, outcome
    for path in (protocol.CONTROL_SETTINGS_FILE, protocol.CONTROL_COMMANDS_DIR):
        assert f"`{path}" in DOC, path
    assert f"`{protocol.COMMAND_NAMESPACE}`" in DOC


@pytest.mark.parametrize(
    ("window", "moment", "inside"),
    [
        ("Mon-Fri 02:00-05:00", datetime(2026, 12, 7, 2, 0), True),  # Monday 02:00
        ("Mon-Fri 02:00-05:00", datetime(2026, 12, 7, 5, 0), False),  # end is exclusive
        ("Mon-Fri 02:00-05:00", datetime(2026, 12, 6, 3, 0), False),  # Sunday
        ("Fri 22:00-04:00", datetime(2026, 12, 5, 3, 0), True),  # Saturday, Friday's night
        ("Fri 22:00-04:00", datetime(2026, 12, 4, 3, 0), False),  # Friday early morning
        ("Sat,Sun 00:00-24:00", datetime(2026, 12, 6, 23, 59), True),
        ("Sun-Mon 01:00-02:00", datetime(2026, 12, 7, 1, 30), True),  # wraps the week
        ("03:00-04:00", datetime(2026, 12, 9, 3, 30), True),  # daily
    ],
)
def test_reboot_windows(window: str, moment: datetime, inside: bool) -> None:
    assert protocol.parse_window(window).contains(moment) is inside


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("Mon-Fry 02:00-05:00", "not a day"),
        ("Mon-Fri 2-5", "like 02:00-05:00"),
        ("Mon-Fri 25:00-26:00", "not a time of day"),
        ("02:00-02:00", "empty"),
        ("every night", "not a day"),
    ],
)
def test_a_bad_reboot_window_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        protocol.parse_window(text)


def test_a_reboot_policy_applies_its_time_zone() -> None:
    policy = protocol.RebootPolicy(True, "Mon-Fri 02:00-05:00", "Europe/Berlin")
    assert policy.allows(datetime(2026, 12, 7, 1, 30, tzinfo=UTC))  # 02:30 in Berlin
    assert not policy.allows(datetime(2026, 12, 7, 4, 30, tzinfo=UTC))  # 05:30 in Berlin
    assert not protocol.RebootPolicy(False).allows(datetime(2026, 12, 7, 1, 30, tzinfo=UTC))
    with pytest.raises(ValueError, match="time zone"):
        protocol.parse_timezone("Mars/Olympus")


def test_host_control_settings_round_trip() -> None:
    control = protocol.HostControl(
        protocol.RebootPolicy(True, "Sat 03:00-04:00", "UTC"),
        {"disk": protocol.CheckSpec(("/bin/true",), 5)},
    )
    assert protocol.HostControl.from_json(control.to_json()) == control


def test_files_that_drive_root_refuse_a_key_given_twice_and_unsafe_secrets() -> None:
    """A command, the host settings and the secrets manifest mean one thing to every
    reader: a key given twice (the last wins in Python, the first in other parsers) is
    refused. Reports, which only describe, are read as before."""
    command = json.dumps(_command())
    twice = command.replace('"hosts": ["web-1"]', '"hosts": ["web-1"], "hosts": ["web-2"]')
    assert twice != command
    with pytest.raises(ValueError, match="'hosts' is given twice"):
        protocol.Command.from_json(twice)
    control = protocol.HostControl(protocol.RebootPolicy(True, "Sat 03:00-04:00", "UTC"), {})
    text = control.to_json().replace("{", '{"checks": {}, ', 1)
    with pytest.raises(ValueError, match="given twice"):
        protocol.HostControl.from_json(text)
    with pytest.raises(ValueError, match="'x' is given twice"):
        protocol.parse_secrets_manifest('{"schema": 1, "secrets": {"x": {}, "x": {}}}')
    with pytest.raises(ValueError, match="not a schema 1"):
        protocol.parse_secrets_manifest('{"schema": true, "secrets": {}}')
    for owner in ("4294967295", "9999999999"):
        with pytest.raises(ValueError, match="not a user or group"):
            protocol.parse_secrets_manifest(
                json.dumps({"schema": 1, "secrets": {"x": {"owner": owner}}})
            )
    for mode in ("0666", "0620", "0777"):
        with pytest.raises(ValueError, match="lets others than its owner change the secret"):
            protocol.parse_secrets_manifest(
                json.dumps({"schema": 1, "secrets": {"x": {"mode": mode}}})
            )
