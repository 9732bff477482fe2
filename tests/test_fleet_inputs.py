"""Bad input in every file gitops reads: one clear line (file, line, field, fix), never a
crash, and whatever ``gitops check`` lets through can be planned, published and shown.

The holes this closes were found on main: a duplicate ``key:`` in host.yaml silently replaced
a host's trust anchor (issue 8, hole 15), and fleet.yaml or a policy could pass ``check``
and then crash ``plan``, ``publish`` or the site build (issue 9).
"""

from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from typing_extensions import override

from gitops.agent.config import parse_config
from gitops.errors import GitopsError
from gitops.fleet import loader
from gitops.fleet.check import check_repository
from gitops.fleet.model import load_fleet
from gitops.fleet.policies import (
    COMPARISONS,
    MAX_CONDITION_DEPTH,
    Combinator,
    Comparison,
    Condition,
    Outcome,
    evaluate,
    load_policies,
)
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource, TreeSource
from gitops.sitegen import build as site_build
from testing.helpers import commit_all, fleet_repo, gitops, public_line
from testing.site_helpers import NOW as SITE_NOW
from testing.site_helpers import Fleet as SiteFleet

HOSTS = {"web-1": ["server"], "dev-ws-1": ["workstation"]}


@dataclass
class Repo:
    root: Path
    key: Path

    def host_yaml(self, host: str = "web-1") -> Path:
        return self.root / "hosts" / host / "host.yaml"

    @property
    def fleet_yaml(self) -> Path:
        return self.root / "fleet.yaml"

    def policy(self, text: str, name: str = "bad") -> Path:
        path = self.root / "policies" / f"{name}.yaml"
        path.parent.mkdir(exist_ok=True)
        path.write_text(text)
        return path

    def update_fleet(self, **changes: Any) -> None:
        data = yaml.safe_load(self.fleet_yaml.read_text())
        data.update(changes)
        self.fleet_yaml.write_text(yaml.safe_dump(data, sort_keys=False))

    def problems(self) -> list[str]:
        return [str(p) for p in check_repository(self.root, parse_nix=False).problems]


@pytest.fixture
def repo(tmp_path: Path) -> Repo:
    root = tmp_path / "fleet"
    fleet_repo(root, HOSTS, publisher_key=tmp_path / "publisher", machines=tmp_path / "machines")
    return Repo(root, tmp_path / "publisher")


def assert_one_clear_line(done: subprocess.CompletedProcess[str], expected: str) -> None:
    assert done.returncode == 1, (done.stdout, done.stderr)
    assert "Traceback" not in done.stderr
    assert "unexpected error" not in done.stderr
    assert expected in done.stderr, done.stderr


# -- duplicate keys (issue 8, hole 15) -------------------------------------------------


def test_a_second_key_in_host_yaml_is_refused_by_check_plan_and_publish(repo: Repo) -> None:
    attacker = public_line(ed25519.Ed25519PrivateKey.generate())
    original = repo.host_yaml().read_text()
    repo.host_yaml().write_text(original + f"owner: ops@example.org\nkey: {attacker}\n")
    first = 1 + original.splitlines().index(
        next(line for line in original.splitlines() if line.startswith("key:"))
    )
    second = len(original.splitlines()) + 2
    expected = (
        f"hosts/web-1/host.yaml:{second}: key: duplicate key (first at line {first}); keep one"
    )
    assert_one_clear_line(gitops("check", "--repo", repo.root, "--no-nix"), expected)
    commit_all(repo.root, "a host.yaml with two keys")
    assert_one_clear_line(gitops("plan", "--repo", repo.root), expected.split(":", 1)[1])
    done = gitops("publish", "--repo", repo.root, "--key", repo.key)
    assert_one_clear_line(done, "key: duplicate key")
    assert not pygit2.Repository(str(repo.root)).references.get("refs/heads/deploy/web-1")


def test_a_second_publishers_list_in_fleet_yaml_is_refused(repo: Repo) -> None:
    attacker = public_line(ed25519.Ed25519PrivateKey.generate())
    text = repo.fleet_yaml.read_text()
    repo.fleet_yaml.write_text(
        text + f"publishers:\n- principal: evil@example.org\n  key: {attacker}\n"
    )
    problems = repo.problems()
    assert any(
        p.startswith("fleet.yaml:") and ": publishers: duplicate key (first at line 2)" in p
        for p in problems
    ), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: a\nname: b\ncondition: {fact: facts.a, exists: true}\n", "name: duplicate key"),
        (
            "name: x\ncondition:\n  fact: facts.firewall\n  equals: active\n"
            "  fact: facts.ssh_root_login\n",
            "policies/bad.yaml:5: condition.fact: duplicate key (first at line 3)",
        ),
        (
            "name: x\ncondition: {all: [{fact: facts.a, equals: 1, equals: 2}]}\n",
            "policies/bad.yaml:2: condition.all[0].equals: duplicate key",
        ),
    ],
)
def test_duplicate_keys_in_a_policy_are_refused(repo: Repo, text: str, expected: str) -> None:
    repo.policy(text)
    problems = repo.problems()
    assert any(expected in p for p in problems), problems


def test_duplicate_keys_in_the_agent_configuration_are_refused(tmp_path: Path) -> None:
    text = (
        "host: web-1\nremote: /srv/fleet.git\ntrusted_publishers: /etc/gitops/publishers\n"
        "trusted_publishers: /tmp/attacker\n"
    )
    with pytest.raises(GitopsError) as caught:
        parse_config(text, "/etc/gitops/agent.yaml")
    assert "/etc/gitops/agent.yaml:4: trusted_publishers: duplicate key (first at line 3)" in (
        str(caught.value)
    )


def test_yes_and_true_are_the_same_key() -> None:
    with pytest.raises(loader.RefusedError) as caught:
        loader.load_document("yes: 1\ntrue: 2\n")
    assert caught.value.problems[0].problem == "duplicate key (first at line 1)"


def test_a_merge_key_is_refused_as_it_lets_one_key_silently_override_another() -> None:
    with pytest.raises(loader.RefusedError) as caught:
        loader.load_document("base: &b {key: a, y: 2}\nm:\n  <<: *b\n  key: b\n")
    [problem] = caught.value.problems
    assert (problem.line, problem.field) == (3, "m.<<")
    assert problem.problem == "merge keys (<<) are not accepted"


def test_an_alias_as_a_key_is_still_a_duplicate() -> None:
    with pytest.raises(loader.RefusedError, match="duplicate key"):
        loader.load_document("&k key: a\n*k : b\n")


def test_aliases_as_values_are_accepted_within_the_bounds() -> None:
    data = loader.load_document("tags: &t [a, b]\nmore: *t\n")
    assert data == {"tags": ["a", "b"], "more": ["a", "b"]}


# -- bounds: size, depth, aliases --------------------------------------------------------

BOMB = "".join(
    f"{name}: &{name} [{', '.join([f'*{prev}'] * 9) if prev else ', '.join(['lol'] * 9)}]\n"
    for prev, name in zip(["", "a", "b", "c", "d", "e", "f", "g"], "abcdefghi", strict=False)
)


def test_an_alias_bomb_in_a_policy_is_refused_at_check_without_expanding_it(repo: Repo) -> None:
    # Nine lists of nine, eight deep: 43 million strings once expanded.
    repo.policy(BOMB + "name: bomb\ncondition: {fact: facts.firewall, in: *h}\n", name="bomb")
    started = time.monotonic()
    problems = repo.problems()
    assert time.monotonic() - started < 5
    assert any(
        p.startswith("policies/bomb.yaml:") and "expands to more than 100,000 values" in p
        for p in problems
    ), problems


def test_a_300_deep_not_is_refused_with_a_clear_line(repo: Repo) -> None:
    condition: dict[str, Any] = {"fact": "facts.firewall", "equals": "active"}
    for _ in range(300):
        condition = {"not": condition}
    repo.policy(json.dumps({"name": "deep", "condition": condition}))
    done = gitops("check", "--repo", repo.root, "--no-nix")
    assert_one_clear_line(done, "policies/bad.yaml:1: nested deeper than 64 levels")


def test_conditions_nested_deeper_than_the_policy_bound_are_refused(repo: Repo) -> None:
    condition: dict[str, Any] = {"fact": "facts.firewall", "equals": "active"}
    for _ in range(20):  # within YAML's bound, beyond a policy's
        condition = {"not": condition}
    repo.policy(yaml.safe_dump({"name": "deep", "condition": condition}))
    problems = repo.problems()
    assert any("conditions are nested deeper than 16 levels" in p for p in problems), problems


def test_an_alias_cycle_is_refused() -> None:
    with pytest.raises(loader.RefusedError, match="nested deeper"):
        loader.load_document("a: &a [*a]\n")


def test_a_huge_file_is_refused(repo: Repo) -> None:
    repo.host_yaml().write_text(
        repo.host_yaml().read_text() + "description: " + "x" * (2 << 20) + "\n"
    )
    problems = repo.problems()
    assert any(
        p.startswith("hosts/web-1/host.yaml: is 2,097,") and "more than the 1,048,576" in p
        for p in problems
    ), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (b"owner: \xff\xfe\n", "hosts/web-1/host.yaml: invalid YAML (unacceptable character"),
        (b"owner: !!timestamp 2024-02-30\n", "hosts/web-1/host.yaml:1: invalid value '2024-02-30'"),
        (b"owner: " + b"9" * 5000 + b"\n", "hosts/web-1/host.yaml:1: invalid value '9999"),
        (b"? [a]\n: 1\n", "hosts/web-1/host.yaml:1: found unhashable key"),
        (b"a: 1\n---\nb: 2\n", "hosts/web-1/host.yaml:2: invalid YAML (but found another document"),
        (b"- a\n- b\n", "hosts/web-1/host.yaml:1: expected a mapping of settings"),
        (b"key: !!python/object:os.system x\n", "could not determine a constructor"),
    ],
)
def test_yaml_that_cannot_be_used_is_one_line(repo: Repo, text: bytes, expected: str) -> None:
    repo.host_yaml().write_bytes(text)
    problems = repo.problems()
    assert any(p.startswith(expected) or expected in p for p in problems), problems


# -- fleet.yaml: durations, dates, shared paths, types -----------------------------------


def test_an_expiry_that_overflows_is_refused_by_check_plan_and_publish(repo: Repo) -> None:
    repo.update_fleet(deploy={"expires_after": 99999999999999999999999})
    expected = "fleet.yaml:6: deploy.expires_after: is longer than 3650d"
    assert_one_clear_line(gitops("check", "--repo", repo.root, "--no-nix"), expected)
    commit_all(repo.root, "overflowing expiry")
    assert_one_clear_line(gitops("plan", "--repo", repo.root), "deploy.expires_after")
    assert_one_clear_line(
        gitops("publish", "--repo", repo.root, "--key", repo.key), "deploy.expires_after"
    )


def test_the_longest_expiry_accepted_can_be_published(repo: Repo) -> None:
    repo.update_fleet(deploy={"expires_after": "3650d"})
    assert repo.problems() == []
    commit_all(repo.root, "ten years")
    done = gitops("publish", "--repo", repo.root, "--key", repo.key)
    assert done.returncode == 0, done.stderr
    head = pygit2.Repository(str(repo.root)).revparse_single("deploy/web-1")
    assert isinstance(head, pygit2.Commit)
    message = head.message
    expected = datetime.now(UTC) + timedelta(days=3650)
    assert f"Expires: {expected:%Y-%m-%d}T" in message, message


def test_an_impossible_exemption_date_is_a_field_error_in_check_plan_and_publish(
    repo: Repo,
) -> None:
    repo.host_yaml().write_text(
        repo.host_yaml().read_text()
        + "exemptions:\n  - policy: firewall-active\n    reason: lab\n    expires: 2024-02-30\n"
    )
    expected = "hosts/web-1/host.yaml:7: exemptions[0].expires: '2024-02-30' is not a date"
    assert_one_clear_line(gitops("check", "--repo", repo.root, "--no-nix"), expected)
    commit_all(repo.root, "impossible date")
    assert_one_clear_line(gitops("plan", "--repo", repo.root), "exemptions[0].expires")
    assert_one_clear_line(
        gitops("publish", "--repo", repo.root, "--key", repo.key), "exemptions[0].expires"
    )


@pytest.mark.parametrize("day", ["9999-12-31", "0001-01-01", "2024-13-01", "tomorrow", 20240101])
def test_exemption_dates_are_real_and_bounded(repo: Repo, day: object) -> None:
    repo.policy("name: firewall-active\ncondition: {fact: facts.firewall, equals: active}\n")
    data = yaml.safe_load(repo.host_yaml().read_text())
    data["exemptions"] = [{"policy": "firewall-active", "reason": "lab", "expires": day}]
    repo.host_yaml().write_text(yaml.safe_dump(data))
    problems = repo.problems()
    assert any("exemptions[0].expires:" in p for p in problems), problems


@pytest.mark.parametrize(
    ("shared", "expected"),
    [
        (["flake.nix", "hosts/../etc"], "deploy.shared[1]: 'hosts/../etc' must be a relative path"),
        (["/etc"], "deploy.shared[0]: '/etc' must be a relative path"),
        (["."], "deploy.shared[0]: '.' must be a relative path"),
        (["modules//x"], "must be a relative path"),
        ([".git/config"], "is not a path a deploy tree can carry"),
        (["hosts/web-1"], "hosts/ and profiles/ are chosen per host"),
        (
            ["flake.nix", "no-such-file"],
            "deploy.shared[1]: 'no-such-file' is not in the repository",
        ),
        (["modules", "modules/default.nix"], "'modules/default.nix' overlaps 'modules'"),
        (["flake.nix", "flake.nix"], "'flake.nix' overlaps 'flake.nix'"),
        (["flake.nix", 5], "deploy.shared[1]: must be a string"),
        ({"a": 1}, "deploy.shared: must be a list of strings"),
        (["bad\tname"], "is not a path a deploy tree can carry"),
    ],
)
def test_shared_paths_are_refused_not_ignored(repo: Repo, shared: object, expected: str) -> None:
    repo.update_fleet(deploy={"shared": shared})
    problems = repo.problems()
    assert any(p.startswith("fleet.yaml:") and expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"publishers": "ci@example.org"}, "fleet.yaml:2: publishers: must be a list"),
        ({"publishers": [["x"]]}, "publishers[0]: must be a mapping"),
        ({"name": ["a"]}, "name: must be a string"),
        ({"agent": [1]}, "agent: must be a mapping"),
        ({"agent": {"poll_interval": 1.5}}, "agent.poll_interval: expected a duration"),
        ({"agent": {"poll_interval": -1}}, "agent.poll_interval: a duration cannot be negative"),
        ({"agent": {"report_interval": "9" * 40}}, "agent.report_interval: '9999"),
        ({"thresholds": {"stale_after": True}}, "thresholds.stale_after: expected a duration"),
        ({"deploy": {"expires_after": 0}}, "deploy.expires_after: must be longer than 0"),
        ({"site": {"commit_url": "javascript:alert(1)"}}, "site.commit_url: 'javascript:alert(1)'"),
        ({"site": {"title": {"a": 1}}}, "site.title: must be a string"),
        ({"ünïcode": "✓"}, "ünïcode: unknown setting"),
        ({12: "x"}, "12: unknown setting"),
    ],
)
def test_wrong_types_in_fleet_yaml_name_file_and_field(
    repo: Repo, changes: dict[Any, Any], expected: str
) -> None:
    repo.update_fleet(**{str(k) if isinstance(k, int) else k: v for k, v in changes.items()})
    if 12 in changes:
        repo.fleet_yaml.write_text(repo.fleet_yaml.read_text() + "12: x\n")
    problems = repo.problems()
    assert any(p.startswith("fleet.yaml") and expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("principal", "expected"),
    [
        ("ci example", "is not a usable principal"),
        ("*", "is not a usable principal"),
        ("a,b@example.org", "is not a usable principal"),
        ("<evil>", "is not a usable principal"),
        ("", "is empty"),
    ],
)
def test_publisher_principals_must_be_usable_in_signatures(
    repo: Repo, principal: str, expected: str
) -> None:
    data = yaml.safe_load(repo.fleet_yaml.read_text())
    data["publishers"][0]["principal"] = principal
    repo.fleet_yaml.write_text(yaml.safe_dump(data))
    problems = repo.problems()
    assert any("publishers[0].principal:" in p and expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"key": ["ssh-ed25519", "AAAA"]}, "key: must be a string"),
        ({"key": "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIA=="}, "key: "),
        ({"profiles": {"server": True}}, "profiles: must be a list of strings"),
        ({"profiles": ["../fleet"]}, "profiles[0]: '../fleet' is not a profile name"),
        ({"profiles": [".hidden"]}, "profiles[0]: '.hidden' is not a profile name"),
        ({"tags": [1, 2]}, "tags[0]: must be a string"),
        ({"exemptions": {"policy": "x"}}, "exemptions: must be a list"),
        ({"exemptions": [{"policy": "x"}]}, "exemptions[0].reason: is missing"),
        (
            {
                "exemptions": [
                    {"policy": "p", "reason": "r", "expires": "2030-01-01"},
                    {"policy": "p", "reason": "r2", "expires": "2031-01-01"},
                ]
            },
            "exemptions[1].policy: 'p' is exempted twice",
        ),
        (
            {"exemptions": [{"policy": "no-such-policy", "reason": "r", "expires": "2030-01-01"}]},
            "exemptions: no policy named 'no-such-policy'",
        ),
    ],
)
def test_wrong_types_in_host_yaml_name_file_and_field(
    repo: Repo, changes: dict[str, Any], expected: str
) -> None:
    data = yaml.safe_load(repo.host_yaml().read_text())
    data.update(changes)
    repo.host_yaml().write_text(yaml.safe_dump(data))
    problems = repo.problems()
    assert any(p.startswith("hosts/web-1/host.yaml") and expected in p for p in problems), problems


# -- policies: checked fully at check time, total at evaluation --------------------------


@pytest.mark.parametrize(
    ("condition", "expected"),
    [
        ({"fact": "facts.failed_units", "contains": 5}, "condition.contains: must be a string"),
        ({"fact": "facts.uptime_seconds", "at_least": "many"}, "at_least: must be a number"),
        ({"fact": "facts.uptime_seconds", "at_most": float("nan")}, "must be a finite number"),
        ({"fact": "facts.firewall", "matches": "(["}, "matches: is not a regular expression"),
        # the site adds this many seconds to a date: 1e300 crashed the build (OverflowError)
        ({"fact": "report.age_seconds", "at_least": 1e300}, "must be between 0 and 315360000"),
        ({"fact": "report.age_seconds", "equals": -1}, "must be between 0 and 315360000"),
        ({"fact": "facts.firewall", "matches": 5}, "matches: must be a regular expression"),
        ({"fact": "facts.firewall", "in": "active"}, "in: must be a non-empty list"),
        ({"fact": "facts.firewall", "in": [[1]]}, "in: must list strings, numbers"),
        ({"fact": "facts.firewall", "is_empty": "yes"}, "is_empty: must be true or false"),
        ({"fact": "facts.firewall", "exists": False}, "exists: must be true"),
        ({"fact": "facts.firewall", "equals": None}, "equals: cannot be null"),
        ({"fact": "facts.firewall", "similar_to": "a"}, "needs exactly one operator"),
        ({"fact": "facts.firewall"}, "needs exactly one operator besides 'fact' (found none)"),
        ({"fact": "system.no_such", "exists": True}, "system.* is one of store_path"),
        ({"fact": "time.year", "exists": True}, "time is a single value"),
        ({"fact": "report.nope", "exists": True}, "report.* is one of report.age_seconds"),
        ({"fact": "facts..x", "exists": True}, "has an empty part"),
        ({"fact": 5, "exists": True}, "condition.fact: is missing"),
        ({"all": []}, "condition.all: must be a non-empty list"),
        ({"all": [{"fact": "facts.a", "exists": True}], "fact": "x"}, "must be the only key"),
        ({"not": [{"fact": "facts.a", "exists": True}]}, "condition.not: must be a mapping"),
    ],
)
def test_policy_values_are_checked_at_check_time(
    repo: Repo, condition: dict[str, Any], expected: str
) -> None:
    repo.policy(yaml.safe_dump({"name": "x", "condition": condition}))
    problems = repo.problems()
    assert any(p.startswith("policies/bad.yaml") and expected in p for p in problems), problems


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("name: ../../etc\ncondition: {fact: facts.a, exists: true}\n", "is not a policy name"),
        ("name: x\nseverity: [high]\ncondition: {fact: facts.a, exists: true}\n", "severity:"),
        ("name: x\napplies_to: [laptop]\ncondition: {fact: facts.a, exists: true}\n", "applies_to"),
        ("name: x\ncondition: {fact: facts.a, exists: true}\ntypo: 1\n", "typo: unknown setting"),
    ],
)
def test_other_policy_fields_are_checked(repo: Repo, text: str, expected: str) -> None:
    repo.policy(text)
    problems = repo.problems()
    assert any(expected in p for p in problems), problems


def test_every_operator_has_one_rule_and_survives_any_reported_value() -> None:
    assert set(COMPARISONS) == set(Comparison)
    values: dict[Comparison, Any] = {
        Comparison.EQUALS: "a",
        Comparison.NOT_EQUALS: 1,
        Comparison.IN: ["a", 1],
        Comparison.NOT_IN: [True],
        Comparison.AT_LEAST: 1,
        Comparison.AT_MOST: 2.5,
        Comparison.IS_EMPTY: True,
        Comparison.CONTAINS: "a",
        Comparison.EXISTS: True,
        Comparison.MATCHES: "^a+$",
    }
    deep: Any = "x"
    for _ in range(900):
        deep = [deep]
    reported: list[Any] = [
        None, "unknown", "a", "aaa", "", 0, 1, True, 2.5, float("nan"), float("inf"),
        10**400, [], ["a"], [1, "a"], {}, {"a": 1}, deep, "a" * 100_000,
    ]  # fmt: skip
    for op, value in values.items():
        assert COMPARISONS[op].check(value) is None, op
        condition = Condition(op, fact="facts.x", value=value)
        for actual in reported:
            outcome = evaluate(condition, {"facts": {"x": actual}})
            assert outcome in set(Outcome)
        for combinator in Combinator:
            children = (condition,) if combinator is Combinator.NOT else (condition, condition)
            combined = Condition(combinator, children=children)
            assert evaluate(combined, {"facts": {"x": "a"}}) in set(Outcome)
            assert combined.describe()


@pytest.mark.parametrize(
    ("op", "value", "actual", "outcome"),
    [
        (Comparison.EQUALS, 1, True, Outcome.FAIL),  # JSON's true is not 1
        (Comparison.CONTAINS, "backup.service", ["backup.service"], Outcome.PASS),
        (Comparison.CONTAINS, "5", [5], Outcome.FAIL),
        (Comparison.CONTAINS, "act", "active", Outcome.PASS),
        (Comparison.MATCHES, "^(active|enabled)$", "active", Outcome.PASS),
        (Comparison.MATCHES, "^(active|enabled)$", "inactive", Outcome.FAIL),
        (Comparison.MATCHES, "a", 5, Outcome.FAIL),
        (Comparison.AT_LEAST, 5, True, Outcome.FAIL),
        (Comparison.AT_LEAST, 5, "7", Outcome.FAIL),
        (Comparison.IN, ["a", "b"], "b", Outcome.PASS),
        (Comparison.EXISTS, True, None, Outcome.FAIL),
        (Comparison.EQUALS, "a", "unknown", Outcome.UNKNOWN),
    ],
)
def test_comparisons_judge_facts_by_json_types(
    op: Comparison, value: object, actual: object, outcome: Outcome
) -> None:
    assert evaluate(Condition(op, fact="facts.x", value=value), {"facts": {"x": actual}}) is outcome


def test_a_matches_policy_loads_and_evaluates(tmp_path: Path) -> None:
    (tmp_path / "policies").mkdir()
    (tmp_path / "policies" / "fw.yaml").write_text(
        "name: fw\ncondition: {fact: facts.firewall, matches: '^(active|nftables)$'}\n"
    )
    problems = Problems()
    [policy] = load_policies(DirSource(tmp_path), problems)
    assert problems.items == []
    assert evaluate(policy.condition, {"facts": {"firewall": "nftables"}}) is Outcome.PASS


# -- the command itself ------------------------------------------------------------------


def test_check_of_a_missing_directory_says_so(tmp_path: Path) -> None:
    done = gitops("check", "--repo", tmp_path / "nonexistent")
    assert_one_clear_line(done, f"gitops: error: no such directory: {tmp_path / 'nonexistent'}")


def test_check_of_a_file_says_it_is_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("x")
    assert_one_clear_line(gitops("check", "--repo", tmp_path / "file"), "not a directory")


def test_check_of_a_directory_without_fleet_yaml_says_so_at_once(tmp_path: Path) -> None:
    # Would take minutes to walk: check must not look inside before it knows it is a fleet.
    for index in range(200):
        deep = tmp_path / "tree" / str(index) / "a" / "b"
        deep.mkdir(parents=True)
        (deep / "x.nix").write_text("{ broken")
    with pytest.raises(GitopsError, match="not a fleet repository"):
        check_repository(tmp_path / "tree")
    done = gitops("check", "--repo", tmp_path / "tree")
    assert_one_clear_line(done, "not a fleet repository (no fleet.yaml)")


def test_check_json_lists_problems_as_objects(repo: Repo) -> None:
    repo.host_yaml().write_text(repo.host_yaml().read_text() + "profiles: [x]\n")
    repo.update_fleet(agent={"poll_interval": "soon"})
    done = gitops("check", "--repo", repo.root, "--json", "--no-nix")
    assert done.returncode == 1
    result = json.loads(done.stdout)
    assert result["ok"] is False
    problems = result["problems"]
    assert {"file": "fleet.yaml", "line": 6, "field": "agent.poll_interval"}.items() <= problems[
        0
    ].items()
    duplicate = next(p for p in problems if p["file"] == "hosts/web-1/host.yaml")
    assert duplicate == {
        "file": "hosts/web-1/host.yaml",
        "line": 4,
        "field": "profiles",
        "problem": "duplicate key (first at line 1)",
        "fix": "keep one",
    }
    for problem in problems:
        assert set(problem) <= {"file", "line", "field", "problem", "fix"}
        assert problem["problem"] and "\n" not in problem["problem"]


# -- what check accepts, at its limits, the site builds ----------------------------------


class ExtremeFleet(SiteFleet):
    @override
    def fleet_yaml(self) -> str:
        data = yaml.safe_load(super().fleet_yaml())
        data["deploy"] = {"expires_after": "3650d"}
        data["agent"] = {"poll_interval": "3650d", "report_interval": "3650d"}
        data["thresholds"] = {"stale_after": "3650d"}
        data["site"] = {"commit_url": "/c/{sha}", "title": "Flotte ✓ <script>"}
        return yaml.safe_dump(data, allow_unicode=True)


def test_a_fleet_at_the_limits_check_accepts_publishes_and_builds_the_site(tmp_path: Path) -> None:
    deep: dict[str, Any] = {"fact": "facts.firewall", "equals": {"a": [1, "b"]}}
    for _ in range(MAX_CONDITION_DEPTH - 1):
        deep = {"not": deep}
    limits = {
        "deep": {"name": "deep", "condition": deep},
        "old": {
            "name": "old",
            "condition": {"fact": "report.age_seconds", "at_most": 3650 * 86400},
        },
        "match": {"name": "match", "condition": {"fact": "facts.firewall", "matches": "^act"}},
        "units": {
            "name": "units",
            "condition": {
                "any": [
                    {"fact": "facts.failed_units", "contains": "x.service"},
                    {"fact": "facts.failed_units", "is_empty": True},
                    {"fact": "facts.firewall", "in": ["active", 1, 2.5, True]},
                ]
            },
        },
    }
    fleet = ExtremeFleet.create(tmp_path / "fleet.git", example_policies=False)
    fleet.policies = {f"{name}.yaml": yaml.safe_dump(p) for name, p in limits.items()}
    exemptions = [
        {"policy": "deep", "reason": "ends last", "expires": "2999-12-31"},
        {"policy": "old", "reason": "ended long ago", "expires": "1970-01-01"},
    ]
    fleet.add_host("web-1", exemptions=exemptions, tags=["ünïcode ✓"], owner="ø@example.org")
    fleet.add_host("web-2")
    fleet.commit_main("limits", SITE_NOW - timedelta(days=2))
    source = TreeSource(fleet.repo, fleet.repo.revparse_single("main").peel(pygit2.Commit).tree)
    problems = Problems()
    assert len(load_policies(source, problems)) == len(limits)
    load_fleet(source, problems)
    assert problems.lines() == []  # what check reads, check accepts
    fleet.publish(SITE_NOW - timedelta(days=1))
    weird: dict[str, Any] = {"firewall": [[[]]], "failed_units": {"a": 1}, "x": "a" * 10_000}
    fleet.report("web-1", SITE_NOW - timedelta(hours=1), facts=weird)
    fleet.report("web-2", SITE_NOW - timedelta(hours=1))
    out = tmp_path / "site"
    site_build.build(fleet.path, out, now=SITE_NOW, workers=1)
    page = json.loads((out / "hosts" / "web-1.json").read_text())
    outcomes = {p["policy"]: p["outcome"] for p in page["policies"]}
    assert outcomes["deep"] == "exempt"
    assert set(outcomes) == set(limits)


def test_check_reads_a_symlink_as_git_stores_it(repo: Repo) -> None:
    # git stores the link, not the file: plan would read '../dev-ws-1/host.yaml' as YAML.
    repo.host_yaml().unlink()
    repo.host_yaml().symlink_to("../dev-ws-1/host.yaml")
    problems = repo.problems()
    assert "hosts/web-1/host.yaml:1: expected a mapping of settings at the top level" in problems
    commit_all(repo.root, "a linked host.yaml")
    assert_one_clear_line(gitops("plan", "--repo", repo.root), "expected a mapping of settings")


def test_a_fleet_whose_deploy_trees_lack_flake_nix_is_refused(repo: Repo) -> None:
    repo.update_fleet(deploy={"shared": ["modules"]})
    assert any(
        p.startswith("fleet.yaml: deploy.shared: does not list flake.nix") for p in repo.problems()
    )
    repo.update_fleet(deploy={"shared": ["flake.nix", "modules"]})
    (repo.root / "flake.nix").unlink()
    problems = repo.problems()
    assert any(p.startswith("flake.nix: missing") for p in problems), problems
