"""Properties of ``gitops check`` over generated and mutated fleets (Hypothesis).

Whatever a fleet's files hold (random YAML values, wrong types, duplicate keys, aliases,
deep nesting, unicode, huge numbers, broken syntax), ``check`` answers with problems or a
GitopsError, never another exception; and a fleet that passes ``check`` can be planned and
published, and its policies judged against any report, without error.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from gitops import cli
from gitops.errors import GitopsError
from gitops.fleet.check import check_repository
from gitops.fleet.model import load_fleet
from gitops.fleet.policies import Comparison, evaluate, load_policies
from gitops.fleet.schema import Problems
from gitops.fleet.source import TreeSource
from gitops.protocol import Report
from gitops.publish import plan as publish
from gitops.sitegen import compliance, derived
from testing.helpers import commit_all, init_repo, write_fleet

HOSTS = {"web-1": ["server"], "dev-ws-1": ["workstation"]}
PROPERTY_SETTINGS = settings(
    max_examples=40,
    deadline=None,
    database=None,  # nothing written into the work tree
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

# -- values ------------------------------------------------------------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(
        ["5m", "1h", "3650d", "3651d", "0", "-1s", "2024-02-30", "2027-06-30", "9999-12-31",
         "..", "hosts/../etc", "/etc", "server", "workstation", "ssh-ed25519 AAAA", "ü✓",
         "facts.firewall", "javascript:x", "null", "~", "yes"]
    ),
)  # fmt: skip
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)

durations = st.one_of(
    st.integers(min_value=0, max_value=4000 * 86400),
    st.builds("{}{}".format, st.integers(0, 5000), st.sampled_from(["", "s", "m", "h", "d", "w"])),
)
days = st.dates().map(str)
texts = st.text(max_size=20)
# Per field: values that are plausible there (so that many fleets pass check and go on to
# plan and the policies), or anything at all.
FLEET_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "name": texts,
    "deploy.shared": st.lists(
        st.sampled_from(["flake.nix", "modules", "modules/default.nix", "flake.lock"]),
        max_size=3,
    ),
    "deploy.expires_after": durations,
    "agent.poll_interval": durations,
    "agent.report_interval": durations,
    "thresholds.stale_after": durations,
    "site.title": texts,
    "site.commit_url": st.sampled_from(["https://git.example.org/c/{sha}", "/c/{sha}", ""]),
    "site.docs_url": texts,
    "publishers.0.principal": st.sampled_from(["ci@example.org", "a.b+c@d", "x y"]),
    "publishers": st.none(),
    "unknown_field": texts,
    # The newer sections (alerts, admins, commanders, checks, reboot, rollout).
    "alerts.webhooks.0.url": st.sampled_from(["https://hooks.example.org/x", "ftp://x", ""]),
    "alerts.webhooks.0.secret_env": st.sampled_from(["HOOK_SECRET", "1x", ""]),
    "alerts.commit_status": st.fixed_dictionaries(
        {
            "forge": st.sampled_from(["forgejo", "github", "gitlab"]),
            "api": st.sampled_from(["https://git.example.org/api/v1", "x"]),
            "repo": st.sampled_from(["ops/fleet", "nope"]),
            "token_env": st.sampled_from(["TOKEN", ""]),
        }
    ),
    "admins.0.name": texts,
    "admins.0.key": st.sampled_from(
        [
            "age1qyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqszqgpqyqs3290gq",
            "age1x",
            "ssh-rsa AAAAB3NzaC1yc2EAAAADAQABAAABAQ",
            "ecdsa-sha2-nistp256 AAAAE2VjZHNh",
        ]
    ),
    "commanders.0.principal": st.sampled_from(["ops@example.org", "a b", ""]),
    "commanders.0.key": st.sampled_from(["ssh-ed25519 AAAA", "x", ""]),
    "checks.disk.command": st.lists(st.sampled_from(["/bin/true", "", "df"]), max_size=2),
    "checks.disk.timeout": durations,
    "checks.Bad Name.command": st.just(["/bin/true"]),
    "reboot.allow": st.booleans(),
    "reboot.window": st.sampled_from(
        ["Mon-Fri 02:00-05:00", "any", "Sun 23:00-01:00", "Mon-Zzz 02:00", "25:00-26:00"]
    ),
    "reboot.timezone": st.sampled_from(["Europe/Berlin", "UTC", "Mars/Olympus", "../etc"]),
    "reboot.profiles.server.allow": st.booleans(),
    "reboot.profiles.nope.allow": st.booleans(),
    "rollout.waves": st.lists(
        st.fixed_dictionaries(
            {"name": st.sampled_from(["canary", "rest", "a"])},
            optional={
                "tags": st.lists(st.sampled_from(["canary", "nope"]), max_size=2),
                "hosts": st.lists(st.sampled_from(["web-1", "dev-ws-1", "nope"]), max_size=2),
                "percent": st.one_of(st.integers(-5, 120), st.floats()),
            },
        ),
        max_size=3,
    ),
    "rollout.success_threshold": st.one_of(st.floats(), st.integers(-1, 2)),
    "rollout.soak": durations,
}
HOST_FIELDS: dict[str, st.SearchStrategy[Any]] = {
    "profiles": st.lists(st.sampled_from(["server", "workstation", "nope", "../x"]), max_size=2),
    "tags": st.lists(texts, max_size=3),
    "owner": texts,
    "description": texts,
    "system": texts,
    "location": texts,
    "exemptions": st.lists(
        st.fixed_dictionaries(
            {"policy": st.sampled_from(["p1", "p2"]), "reason": texts, "expires": days}
        ),
        max_size=2,
    ),
    "exemptions.0.expires": st.one_of(days, texts),
    "key": texts,
    "typo": texts,
}
FACTS = [
    "facts.firewall", "facts.failed_units", "facts.disk_free_bytes./", "system.reboot_required",
    "report.age_seconds", "report.verified", "time", "changes", "facts.x.y.z", "system.nope",
    "nope", "facts.",
]  # fmt: skip
OPERATORS = [*(str(c) for c in Comparison), "similar_to"]


def edit(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[tuple[str, Any]]:
    """A field and a value for it: plausible there, or anything at all."""
    return st.sampled_from(sorted(fields)).flatmap(
        lambda name: st.tuples(st.just(name), st.one_of(fields[name], values))
    )


def _set(data: Any, path: str, value: Any) -> Any:
    """``data`` with ``path`` (``a.b``, ``a.0``) set to ``value``, creating what is missing."""
    head, _, rest = path.partition(".")
    if isinstance(data, list) and head.isdigit():
        items = list(data) or [{}]
        index = min(int(head), len(items) - 1)
        items[index] = _set(items[index], rest, value) if rest else value
        return items
    mapping = dict(data) if isinstance(data, dict) else {}
    mapping[head] = _set(mapping.get(head), rest, value) if rest else value
    return mapping


typed_values: dict[str, st.SearchStrategy[Any]] = {
    "equals": scalars,
    "not_equals": scalars,
    "in": st.lists(scalars, max_size=3),
    "not_in": st.lists(scalars, max_size=3),
    "at_least": st.one_of(st.integers(), st.floats()),
    "at_most": st.one_of(st.integers(), st.floats()),
    "is_empty": st.booleans(),
    "contains": texts,
    "exists": st.just(True),
    "matches": st.one_of(st.sampled_from(["^a+$", "act", "(", "[a-"]), texts),
}
plausible_leaf = st.sampled_from(sorted(typed_values)).flatmap(
    lambda op: st.builds(
        lambda fact, value: {"fact": fact, op: value}, st.sampled_from(FACTS), typed_values[op]
    )
)
any_leaf = st.builds(
    lambda fact, op, value: {"fact": fact, op: value},
    st.sampled_from(FACTS),
    st.sampled_from(OPERATORS),
    values,
)
conditions = st.recursive(
    st.one_of(plausible_leaf, any_leaf),
    lambda inner: st.one_of(
        st.builds(lambda c: {"not": c}, inner),
        st.builds(lambda cs: {"all": cs}, st.lists(inner, max_size=3)),
        st.builds(lambda cs: {"any": cs}, st.lists(inner, max_size=3)),
    ),
    max_leaves=6,
)
policies = st.fixed_dictionaries(
    {"name": st.one_of(st.just("p2"), st.text(max_size=10)), "condition": conditions},
    optional={
        "severity": st.sampled_from(["low", "high", "urgent", 3]),
        "applies_to": values,
        "description": values,
    },
)

# -- raw text mutations: what a YAML dump never produces ------------------------------------


def _duplicate_a_line(text: str, index: int) -> str:
    lines = text.splitlines() or [""]
    line = lines[index % len(lines)]
    return text + ("\n" if not text.endswith("\n") else "") + line + "\n"


def _deep(depth: int, flow: bool) -> str:
    if flow:
        return "deep: " + "[" * depth + "]" * depth + "\n"
    return "deep:\n" + "".join("  " * (i + 1) + "not:\n" for i in range(depth)) + "  x: 1\n"


BOMB = "lol: &a [x, x, x, x, x, x, x, x, x]\n" + "".join(
    f"l{i}: &{chr(98 + i)} [{', '.join([f'*{chr(97 + i)}'] * 9)}]\n" for i in range(7)
)

text_mutations = st.one_of(
    st.builds(lambda i: lambda t: _duplicate_a_line(t, i), st.integers(0, 50)),
    st.builds(lambda d, f: lambda t: t + _deep(d, f), st.integers(1, 400), st.booleans()),
    st.just(lambda t: t + BOMB),
    st.builds(lambda n: lambda t: t[:n], st.integers(0, 200)),
    st.builds(lambda s: lambda t: t + s, st.text(max_size=30)),
    st.builds(lambda b: lambda t: t + b.decode("latin-1"), st.binary(max_size=8)),
    st.just(lambda t: t + "x: !!timestamp 2024-02-30\n"),
    st.just(lambda t: t + "y: " + "9" * 5000 + "\n"),
    st.just(lambda t: t + "? [a]\n: 1\n"),
    st.just(lambda t: t + "---\nz: 1\n"),
)

# -- the fleet under test --------------------------------------------------------------------


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("template") / "fleet"
    root.mkdir()
    write_fleet(
        root,
        publisher=ed25519.Ed25519PrivateKey.generate(),
        hosts=HOSTS,
        host_keys={h: ed25519.Ed25519PrivateKey.generate() for h in HOSTS},
        machines=root.parent / "machines",
    )
    (root / "policies").mkdir()
    (root / "policies" / "p1.yaml").write_text(
        "name: p1\ncondition: {fact: facts.firewall, equals: active}\n"
    )
    return root


@contextlib.contextmanager
def copy_of(template: Path) -> Iterator[Path]:
    with tempfile.TemporaryDirectory() as scratch:
        root = Path(scratch) / "fleet"
        shutil.copytree(template, root)
        yield root


def load(path: Path) -> Any:
    return yaml.safe_load(path.read_text())


REPORTS: list[dict[str, Any]] = [
    {},
    {"facts": {"firewall": "active", "failed_units": [], "disk_free_bytes": {"/": 10**12}}},
    {"facts": {"firewall": 5, "failed_units": "unknown", "disk_free_bytes": None}, "time": 7},
    {"facts": [1, 2], "system": {"reboot_required": "maybe"}, "changes": {"a": [{}]}},
]


def _as_report(raw: dict[str, Any], host: str) -> Report | None:
    base = {
        "schema": 1,
        "host": host,
        "time": "2026-01-01T00:00:00Z",
        "agent_version": "0",
        "result": "applied",
        "reason": "",
        "report_id": "property",
    }
    try:
        return Report.from_json(json.dumps({**base, **raw}))
    except ValueError:
        return None


def judge_everything(root: Path) -> None:
    """What plan, publish and the site do with a fleet that passed check."""
    repo = pygit2.Repository(str(init_repo(root)))
    commit_all(root, "fleet")
    plan = publish.make_plan(repo, "HEAD")
    assert {h.host for h in plan.hosts} == set(plan.fleet.hosts)
    source = TreeSource(repo, repo.revparse_single("HEAD").peel(pygit2.Commit).tree)
    problems = Problems()
    found = load_policies(source, problems)
    assert problems.items == [], problems.lines()
    assert load_fleet(source, problems).hosts.keys() == plan.fleet.hosts.keys()
    derived.age_flips(found)
    now = datetime.now(UTC)
    for host in plan.fleet.hosts.values():
        for raw in REPORTS:
            # The site parses reports strictly first; only what parses reaches the policies.
            typed = _as_report(raw, host.name)
            if typed is not None:
                compliance.answer(found, host, typed, now)
    for policy in found:
        policy.condition.describe()
        for report in REPORTS:
            evaluate(policy.condition, report)


def check_then_judge(root: Path) -> None:
    try:
        result = check_repository(root, parse_nix=False)
    except GitopsError:
        event("check refused the repository")
        return
    for problem in result.problems:
        assert "\n" not in str(problem), problem
    event("check passed" if not result.problems else "check found problems")
    if not result.problems:
        judge_everything(root)


def run_cli_check(root: Path) -> None:
    """The command in-process: exit 0 or 1 with a message, never another exception."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = cli.execute(["check", "--repo", str(root), "--no-nix", "--json"])
        except GitopsError:
            return
    assert code in (0, 1)


# -- the properties ---------------------------------------------------------------------------


@PROPERTY_SETTINGS
@given(
    edits=st.lists(edit(FLEET_FIELDS), min_size=1, max_size=3),
    mutation=st.one_of(st.none(), st.none(), text_mutations),
)
def test_mutated_fleet_yaml_never_breaks_check_or_plan(
    template: Path,
    edits: list[tuple[str, Any]],
    mutation: Callable[[str], str] | None,
) -> None:
    with copy_of(template) as root:
        data = load(root / "fleet.yaml")
        for path, value in edits:
            data = _set(data, path, value)
        text = yaml.safe_dump(data, allow_unicode=True)
        (root / "fleet.yaml").write_text(mutation(text) if mutation else text)
        check_then_judge(root)
        run_cli_check(root)


@PROPERTY_SETTINGS
@given(
    edits=st.lists(edit(HOST_FIELDS), min_size=1, max_size=3),
    mutation=st.one_of(st.none(), st.none(), text_mutations),
)
def test_mutated_host_yaml_never_breaks_check_or_plan(
    template: Path,
    edits: list[tuple[str, Any]],
    mutation: Callable[[str], str] | None,
) -> None:
    with copy_of(template) as root:
        path = root / "hosts" / "web-1" / "host.yaml"
        data = load(path)
        for field, value in edits:
            data = _set(data, field, value)
        text = yaml.safe_dump(data, allow_unicode=True)
        path.write_text(mutation(text) if mutation else text)
        check_then_judge(root)


@PROPERTY_SETTINGS
@given(policy=policies, mutation=st.one_of(st.none(), st.none(), text_mutations))
def test_generated_policies_never_break_check_or_the_judgement(
    template: Path, policy: dict[str, Any], mutation: Callable[[str], str] | None
) -> None:
    with copy_of(template) as root:
        text = yaml.safe_dump(policy, allow_unicode=True)
        (root / "policies" / "generated.yaml").write_text(mutation(text) if mutation else text)
        check_then_judge(root)
