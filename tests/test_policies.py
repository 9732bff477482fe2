"""Policies: the example set in policies/, three-valued evaluation, clear errors."""

from __future__ import annotations

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
    ],
)
def test_a_bad_policy_names_file_and_field(tmp_path: Path, text: str, expected: str) -> None:
    problems = _load(tmp_path, text)
    assert problems, text
    assert any(p.startswith(expected) for p in problems), problems
