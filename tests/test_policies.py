"""Policies: the example set in policies/, three-valued evaluation, clear errors."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pytest

from gitops.fleet.policies import Outcome, Policy, Selector, evaluate, load_policies
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from testing.site_helpers import GOOD_FACTS, ROOT


def example_policies() -> dict[str, Policy]:
    problems = Problems()
    found = load_policies(DirSource(ROOT), problems)
    assert problems.items == []
    return {p.name: p for p in found}


def report(**facts: Any) -> dict[str, Any]:
    return {
        "facts": {**GOOD_FACTS, **facts},
        "system": {"reboot_required": False},
        "report": {"age_seconds": 600, "verified": True},
    }


def test_the_example_set_loads_and_a_healthy_host_passes_everything() -> None:
    policies = example_policies()
    assert len(policies) >= 9
    assert {p.severity for p in policies.values()} <= {"low", "medium", "high", "critical"}
    for policy in policies.values():
        assert policy.description and policy.resolution, policy.name
        assert evaluate(policy.condition, report()) is Outcome.PASS, policy.name


@pytest.mark.parametrize(
    ("policy", "facts", "outcome"),
    [
        ("firewall-active", {"firewall": "inactive"}, Outcome.FAIL),
        ("firewall-active", {"firewall": "unknown"}, Outcome.UNKNOWN),
        ("ssh-password-login-disabled", {"ssh_password_login": "enabled"}, Outcome.FAIL),
        ("ssh-password-login-disabled", {"ssh_password_login": "not-running"}, Outcome.PASS),
        ("disk-encryption", {"disk_encryption": "none"}, Outcome.FAIL),
        ("gc-timer-enabled", {"gc_timer": "absent"}, Outcome.FAIL),
        ("no-failed-units", {"failed_units": ["backup.service"]}, Outcome.FAIL),
        ("no-failed-units", {"failed_units": "unknown"}, Outcome.UNKNOWN),
        ("no-auto-upgrade-timer", {"auto_upgrade_timer": "enabled"}, Outcome.FAIL),
        ("disk-free", {"disk_free_bytes": {"/": 1 << 30, "/nix": 80 << 30}}, Outcome.FAIL),
        ("disk-free", {"disk_free_bytes": {"/": 50 << 30, "/nix": "unknown"}}, Outcome.UNKNOWN),
        ("disk-free", {"disk_free_bytes": {"/": 1 << 30, "/nix": "unknown"}}, Outcome.FAIL),
    ],
)
def test_example_policies_fail_and_go_unknown(
    policy: str, facts: dict[str, Any], outcome: Outcome
) -> None:
    assert evaluate(example_policies()[policy].condition, report(**facts)) is outcome


def test_reboot_and_freshness_read_system_and_report() -> None:
    policies = example_policies()
    rebooting = {**report(), "system": {"reboot_required": True}}
    assert evaluate(policies["reboot-not-pending"].condition, rebooting) is Outcome.FAIL
    old = {**report(), "report": {"age_seconds": 3 * 86400}}
    assert evaluate(policies["report-fresh"].condition, old) is Outcome.FAIL
    assert policies["disk-encryption"].applies_to == Selector(tags=("laptop",))


def _load(tmp_path: Path, text: str) -> list[str]:
    (tmp_path / "policies").mkdir(exist_ok=True)
    (tmp_path / "policies" / "bad.yaml").write_text(text)
    problems = Problems()
    load_policies(DirSource(tmp_path), problems)
    return problems.lines()


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: x\ncondition: {fact: facts.firewall}\n", "policies/bad.yaml:2: condition: needs"),
        ("name: x\ncondition: {equals: 1}\n", "policies/bad.yaml:2: condition.fact: is missing"),
        (
            "name: x\ncondition: {fact: fcts.firewall, equals: active}\n",
            "policies/bad.yaml:2: condition.fact: 'fcts.firewall' is not a report field",
        ),
        (
            "name: x\ncondition: {all: [{fact: facts.a, at_least: many}]}\n",
            "policies/bad.yaml:2: condition.all[0].at_least: must be a number",
        ),
        ("condition: {fact: facts.a, exists: true}\n", "policies/bad.yaml: name: is missing"),
        (
            "name: x\nseverity: urgent\ncondition: {fact: facts.a, exists: true}\n",
            "policies/bad.yaml:2: severity: 'urgent' is not one of",
        ),
        (
            "name: x\ncondtion: {fact: facts.a, exists: true}\n",
            "policies/bad.yaml: condition: must be a mapping",
        ),
        ("name: [x\n", "policies/bad.yaml:"),
        (
            "name: x\ncondition: {fact: vulns.oldest_days, at_most: 30}\n",
            "policies/bad.yaml:2: condition.fact: vulns.* is vulns.<open|oldest_days>.<severity>",
        ),
        (
            "name: x\ncondition: {fact: vulns.open.severe, equals: 0}\n",
            "policies/bad.yaml:2: condition.fact: vulns.* is",
        ),
    ],
)
def test_a_bad_policy_names_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    problems = _load(tmp_path, text)
    assert problems, text
    assert any(p.startswith(expected) for p in problems), problems


# -- max_age_days: a fact's time no older than N days (nixpkgs currency) --------------------


def nixpkgs_policy(days: object = 90) -> tuple[list[Policy], list[str]]:
    text = (
        "name: nixpkgs-fresh\nseverity: medium\n"
        f"condition: {{fact: facts.nixpkgs_date, max_age_days: {days}}}\n"
    )
    with tempfile.TemporaryDirectory() as root:
        (Path(root) / "policies").mkdir()
        (Path(root) / "policies" / "nixpkgs-fresh.yaml").write_text(text)
        problems = Problems()
        found = load_policies(DirSource(Path(root)), problems)
    return found, [str(p) for p in problems.items]


def dated_report(nixpkgs_date: object, *, age: int | None = 600) -> dict[str, Any]:
    data: dict[str, Any] = {"time": "2026-11-20T12:00:00Z", "facts": {"nixpkgs_date": nixpkgs_date}}
    if age is not None:
        data["report"] = {"age_seconds": age, "verified": True}
    return data


@pytest.mark.parametrize(
    ("nixpkgs_date", "age", "outcome"),
    [
        ("2026-09-01T00:00:00Z", 600, Outcome.PASS),  # 80 days before the report
        ("2026-08-01T00:00:00Z", 600, Outcome.FAIL),  # 111 days
        ("2026-08-22T12:00:00Z", 0, Outcome.PASS),  # exactly 90 days
        ("2026-08-22T12:00:00Z", 1, Outcome.FAIL),  # a second later (the site's clock)
        ("2026-09-01T00:00:00Z", 30 * 86400, Outcome.FAIL),  # judged a month later
        ("2026-09-01T00:00:00Z", None, Outcome.PASS),  # no site: at the report's own time
        ("unknown", 600, Outcome.UNKNOWN),
        ("last tuesday", 600, Outcome.FAIL),  # not a time: never young enough
        (20260901, 600, Outcome.FAIL),
    ],
)
def test_max_age_days_measures_a_facts_age_at_judging_time(
    nixpkgs_date: object, age: int | None, outcome: Outcome
) -> None:
    (policy,), problems = nixpkgs_policy()
    assert problems == []
    assert evaluate(policy.condition, dated_report(nixpkgs_date, age=age)) is outcome
    assert policy.condition.describe() == "facts.nixpkgs_date max age days 90"


@pytest.mark.parametrize(
    ("days", "problem"),
    [("ninety", "must be a number"), (-1, "between 0 and 3650 days"), (4000, "between 0")],
)
def test_max_age_days_takes_a_number_of_days(days: object, problem: str) -> None:
    found, problems = nixpkgs_policy(days)
    assert found == [] and len(problems) == 1 and problem in problems[0], problems


def test_max_age_days_says_when_its_answer_flips() -> None:
    from datetime import UTC, datetime

    from gitops.fleet.policies import deadlines, is_dated

    (policy,), _ = nixpkgs_policy(10)
    assert is_dated(policy.condition)
    assert deadlines(policy.condition, dated_report("2026-11-15T00:00:00Z")) == [
        datetime(2026, 11, 25, 0, 0, 1, tzinfo=UTC)
    ]
    assert deadlines(policy.condition, dated_report("unknown")) == []


# -- vulns.*: known vulnerabilities, which the site adds from the feed --------------------


def test_vuln_severities_are_the_feeds() -> None:
    from gitops.fleet.policies import VULN_SEVERITIES
    from gitops.inventory.vulns import Severity

    assert tuple(str(s) for s in Severity) == VULN_SEVERITIES


def test_vulns_facts_judge_old_critical_cves_and_unknown_without_a_feed() -> None:
    from datetime import date

    from gitops.fleet.model import CveExemption
    from gitops.inventory.sbom import Package
    from gitops.inventory.vulns import Cve, Finding, Severity
    from gitops.sitegen.vulnscan import HostScan, facts

    def finding(cve: str, severity: Severity, published: str, exempt: bool = False) -> Finding:
        exemption = CveExemption(cve, "why", date(2099, 1, 1)) if exempt else None
        entry = Cve(cve, severity, 9.0, published, "", ())
        return Finding(entry, "h", Package("", "openssl", "3.0.13"), "3.0.15", exemption)

    today = date(2026, 11, 20)
    scan = HostScan(
        "",
        open=(
            finding("CVE-1", Severity.CRITICAL, "2026-11-01"),
            finding("CVE-2", Severity.CRITICAL, "2026-10-01"),
            finding("CVE-3", Severity.HIGH, ""),  # undated: its age is unknown
        ),
        exempt=(finding("CVE-4", Severity.CRITICAL, "2020-01-01", exempt=True),),
    )
    found = facts(scan, today)
    assert found["vulns"]["open"] == {
        "critical": 2,
        "high": 1,
        "medium": 0,
        "low": 0,
        "none": 0,
        "unknown": 0,
    }
    assert found["vulns"]["oldest_days"]["critical"] == 50  # the exempt one does not count
    assert found["vulns"]["oldest_days"]["medium"] == 0  # none open

    text = "name: x\ncondition: {{fact: vulns.oldest_days.{0}, at_most: {1}}}\n"
    with tempfile.TemporaryDirectory() as root:
        for days, severity, outcome in (
            (30, "critical", Outcome.FAIL),
            (50, "critical", Outcome.PASS),
            (30, "high", Outcome.UNKNOWN),
            (30, "low", Outcome.PASS),
        ):
            (policy,) = _load_ok(Path(root), text.format(severity, days))
            assert evaluate(policy.condition, {**report(), **found}) is outcome, severity
            for nothing in (None, HostScan("no vulnerability feed is configured")):
                unknown = {**report(), **facts(nothing, today)}
                assert evaluate(policy.condition, unknown) is Outcome.UNKNOWN


def _load_ok(root: Path, text: str) -> list[Policy]:
    (root / "policies").mkdir(exist_ok=True)
    (root / "policies" / "x.yaml").write_text(text)
    problems = Problems()
    found = load_policies(DirSource(root), problems)
    assert problems.items == []
    return found
