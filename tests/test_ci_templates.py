"""The CI templates in templates/ci/ run: their commands, taken from the YAML in order,
run against a local bare repository holding the test fleet.

What the test does not run, plainly:

* ``uses:`` steps (actions/checkout, install-nix): the test clones the server itself,
  one commit deep for a pull request (as actions/checkout does), fully for a publish.
* "Install gitops" (GitLab: ``nix profile install`` lines): a ``gitops`` on PATH runs
  this checkout's ``python -m gitops`` instead.
* steps named "Post ..." (GitLab: jobs named ``post-*``): they call the forge's API
  (comment, commit status), which is not here.
* nothing else is skipped: a command or option the CLI lacks fails the test.
* a template's ``NIX_CONFIG`` is added to this machine's (which says how Nix runs here).
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from gitops.commands.plan_cmd import MARKER
from gitops.demo import standin
from gitops.protocol import deploy_ref
from testing.env import needs_nix
from testing.helpers import commit_all, fleet_repo, git, git_out, push_to_bare

ROOT = Path(__file__).resolve().parent.parent
TEMPLATES = ROOT / "templates" / "ci"
ACTIONS = {
    "github": TEMPLATES / "github" / "gitops.yml",
    "forgejo": TEMPLATES / "forgejo" / "gitops.yml",
}
GITLAB = TEMPLATES / "gitlab" / ".gitlab-ci.yml"
HOSTS = {"web-1": ["server"], "web-2": ["server"], "ws-1": ["workstation"]}

pytestmark = needs_nix  # gitops check parses the .nix files with nix-instantiate


@dataclass(frozen=True)
class Step:
    name: str
    script: str
    env: Mapping[str, str]


# -- reading the templates ---------------------------------------------------------------

_EXPRESSION = re.compile(r"\$\{\{\s*(.+?)\s*\}\}")


def _expand(value: str, context: Mapping[str, str]) -> str:
    """``${{ secrets.X }}``, ``${{ vars.X || 'default' }}``; anything else (github.*)
    only appears in the forge-API steps, which are not run."""

    def one(match: re.Match[str]) -> str:
        for alternative in match.group(1).split("||"):
            alternative = alternative.strip()
            if alternative.startswith("'"):
                return alternative.strip("'")
            if not alternative.startswith(("secrets.", "vars.")):
                raise AssertionError(
                    f"a run step needs {alternative!r}, which the test cannot give"
                )
            found = context.get(alternative, "")
            if found:
                return found
        return ""

    return _EXPRESSION.sub(one, value)


def actions_steps(path: Path, job: str, context: Mapping[str, str]) -> list[Step]:
    workflow = yaml.safe_load(path.read_text())
    spec = workflow["jobs"][job]
    job_env = {k: _expand(str(v), context) for k, v in (spec.get("env") or {}).items()}
    steps = []
    for step in spec["steps"]:
        if "uses" in step:
            continue
        if step["name"].startswith("Post "):  # the forge's API: kept, never run
            steps.append(Step(step["name"], step["run"], {}))
            continue
        env = {
            **job_env,
            **{k: _expand(str(v), context) for k, v in (step.get("env") or {}).items()},
        }
        steps.append(Step(step["name"], step["run"], env))
    return steps


def _flatten(items: list[object]) -> Iterator[str]:
    for item in items:
        if isinstance(item, list):
            yield from _flatten(item)
        else:
            yield str(item)


def gitlab_steps(job: str, context: Mapping[str, str]) -> list[Step]:
    pipeline = yaml.safe_load(GITLAB.read_text())
    spec = pipeline[job]
    env = {**pipeline.get("variables", {}), **spec.get("variables", {}), **context}
    return [
        Step(line, line, {k: str(v) for k, v in env.items()}) for line in _flatten(spec["script"])
    ]


# -- what this checkout's CLI has (the pending items of issue 11) ------------------------


# -- running them ------------------------------------------------------------------------


@dataclass(frozen=True)
class Ran:
    name: str
    returncode: int
    stdout: str
    stderr: str


@dataclass
class Runner:
    tmp: Path
    bin: Path

    def env(self, extra: Mapping[str, str]) -> dict[str, str]:
        extra = dict(extra)
        if "NIX_CONFIG" in extra:  # the template's settings on top of this machine's
            extra["NIX_CONFIG"] = f"{os.environ.get('NIX_CONFIG', '')}\n{extra['NIX_CONFIG']}"
        return {
            **os.environ,
            "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
            "PYTHONPATH": str(ROOT),
            "RUNNER_TEMP": str(self.tmp / "runner-temp"),
            "GITHUB_STEP_SUMMARY": str(self.tmp / "runner-temp" / "summary.md"),
            **extra,
        }

    def run(self, steps: list[Step], checkout: Path) -> list[Ran]:
        """Every step in order, stopping at the first that fails, as CI does."""
        (self.tmp / "runner-temp").mkdir(exist_ok=True)
        ran = []
        for step in steps:
            if _skipped_by_design(step):
                continue
            done = subprocess.run(
                ["bash", "--noprofile", "--norc", "-eo", "pipefail", "-c", step.script],
                cwd=checkout,
                env=self.env(step.env),
                capture_output=True,
                text=True,
                check=False,
            )
            ran.append(Ran(step.name, done.returncode, done.stdout, done.stderr))
            if done.returncode != 0:
                break
        return ran


def _skipped_by_design(step: Step) -> bool:
    return (
        step.name == "Install gitops"
        or step.name.startswith("Post ")
        or step.script.startswith("nix profile install")
    )


def _gitops_commands(steps: list[Step]) -> list[str]:
    """The gitops subcommands the steps run, in order (e.g. ``check``, ``plan``)."""
    found = []
    for step in steps:
        if _skipped_by_design(step):
            continue
        for line in step.script.replace("\\\n", " ").splitlines():
            words = shlex.split(line, comments=True)
            if words[:1] == ["gitops"]:
                found.append(
                    " ".join(w for w in words[1:3] if not w.startswith("--") or w == "--eval")
                )
    return found


@dataclass
class Forge:
    """A bare server holding the fleet, and what CI would be given."""

    server: Path
    author: Path  # a developer's clone
    context: dict[str, str]
    runner: Runner

    def checkout(self, name: str, *, shallow: bool) -> Path:
        where = self.runner.tmp / name
        depth = ["--depth", "1"] if shallow else []
        git(
            "clone",
            "-q",
            *depth,
            "--single-branch",
            "-b",
            "main",
            f"file://{self.server}",
            where,
            cwd=self.runner.tmp,
        )
        return where

    def pull_request(self, name: str, path: str, text: str) -> Path:
        """A CI checkout of main with the change on top (what a pull request's merge ref holds)."""
        checkout = self.checkout(name, shallow=True)
        (checkout / path).write_text(text)
        commit_all(checkout, f"change {path}")
        return checkout

    def merge(self, path: str, text: str) -> None:
        (self.author / path).write_text(text)
        commit_all(self.author, f"change {path}")
        git("push", "-q", "origin", "main", cwd=self.author)


@pytest.fixture
def forge(tmp_path: Path) -> Forge:
    root = tmp_path / "author"
    fleet_repo(root, HOSTS, publisher_key=tmp_path / "publisher", machines=tmp_path / "machines")
    commit_all(root, "Initial fleet")
    server = push_to_bare(root, tmp_path / "server.git")
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "gitops"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m gitops "$@"\n')
    shim.chmod(0o755)
    nix_key = tmp_path / "nix-cache.key"
    made = subprocess.run(
        ["nix", "key", "generate-secret", "--key-name", "test-cache-1"],
        capture_output=True,
        text=True,
        check=False,
    )
    nix_key.write_text(made.stdout if made.returncode == 0 else "")
    cache_url = f"file://{tmp_path / 'cache'}"
    context = {
        # GitHub and Forgejo: secrets hold the keys themselves.
        "secrets.GITOPS_PUBLISHER_KEY": (tmp_path / "publisher").read_text().strip(),
        "secrets.GITOPS_NIX_SIGNING_KEY": nix_key.read_text().strip(),
        "vars.GITOPS_CACHE": cache_url,
        # GitLab: File variables name a file holding the key.
        "GITOPS_PUBLISHER_KEY": str(tmp_path / "publisher"),
        "GITOPS_NIX_SIGNING_KEY": str(nix_key),
        "GITOPS_CACHE": cache_url,
    }
    return Forge(server, root, context, Runner(tmp_path, bin_dir))


def _bad_host_yaml(forge: Forge) -> str:
    text = (forge.author / "hosts/web-1/host.yaml").read_text()
    return text.replace("- server", "- no-such-profile")


def _steps(kind: str, job: str, forge: Forge) -> list[Step]:
    if kind == "gitlab":
        return gitlab_steps(job, forge.context)
    return actions_steps(ACTIONS[kind], job, forge.context)


def _plan_file(kind: str, forge: Forge, checkout: Path) -> Path:
    return (
        checkout / "plan.md" if kind == "gitlab" else forge.runner.tmp / "runner-temp" / "plan.md"
    )


@pytest.mark.parametrize("kind", ["github", "forgejo", "gitlab"])
def test_template_runs_check_plan_then_build_publish_in_order(kind: str, forge: Forge) -> None:
    plan_job, publish_job = ("plan", "publish")
    pr_steps = _steps(kind, plan_job, forge)
    publish_steps = _steps(kind, publish_job, forge)
    assert _gitops_commands(pr_steps) == ["check", "check --eval", "plan", "plan"]
    plans = ["plan"] if kind == "forgejo" else ["plan", "plan"]  # GitHub, GitLab: markdown too
    assert _gitops_commands(publish_steps) == ["check", "build", *plans, "publish"]

    # A pull request that adds a package: every step passes and the plan is written.
    change = standin.profile_file("workstation", ["firefox"])
    checkout = forge.pull_request("pr-1", "profiles/workstation.nix", change)
    ran = forge.runner.run(pr_steps, checkout)
    assert [r.returncode for r in ran] == [0] * len(ran), ran[-1].stderr
    plan = _plan_file(kind, forge, checkout).read_text()
    assert plan.startswith(MARKER)
    assert "#### New: 3 hosts" in plan  # nothing is published yet; not a blind guess:
    assert "Note:" not in plan  # --remote origin read the server's (empty) deploy heads

    # It merges: build, sign, copy, publish, from a full clone of main.
    forge.merge("profiles/workstation.nix", change)
    published = forge.runner.run(publish_steps, forge.checkout("main-1", shallow=False))
    assert [r.returncode for r in published] == [0] * len(published), published[-1].stderr
    assert "publish" in published[-1].name.lower()
    systems_plan = next(r.stdout for r in published if "built systems:" in r.stdout)
    assert "no closure diff: no published system to compare with (a new host)" in systems_plan
    for host in HOSTS:
        assert git_out("rev-parse", deploy_ref(host), cwd=forge.server)
    # The built systems are in the cache, signed.
    narinfos = list((forge.runner.tmp / "cache").glob("*.narinfo"))
    assert narinfos
    assert all("Sig: test-cache-1:" in n.read_text() for n in narinfos)

    # The next pull request is planned against what the server now holds.
    server_change = standin.profile_file("server", ["nginx"])
    checkout = forge.pull_request("pr-2", "profiles/server.nix", server_change)
    ran = forge.runner.run(pr_steps, checkout)
    assert [r.returncode for r in ran] == [0] * len(ran), ran[-1].stderr
    plan = _plan_file(kind, forge, checkout).read_text()
    assert "**2 of 3 hosts change**" in plan
    assert "<b>web-1</b>, <b>web-2</b>: 1 file" in plan
    assert "| unchanged | 1 |" in plan

    # It merges: before publishing, the merge job shows what changes in each built system.
    forge.merge("profiles/server.nix", server_change)
    published = forge.runner.run(publish_steps, forge.checkout("main-2", shallow=False))
    assert [r.returncode for r in published] == [0] * len(published), published[-1].stderr
    systems_plan = next(r.stdout for r in published if "built systems:" in r.stdout)
    assert "  web-1 (changed): profiles/server.nix\n    system: 1 added\n" in systems_plan
    assert "      nginx: \u2205 \u2192 \u03b5\n" in systems_plan  # a package with no version
    assert "ws-1" not in systems_plan
    markdown = {
        "github": forge.runner.tmp / "runner-temp" / "summary.md",
        "gitlab": forge.runner.tmp / "main-2" / "systems-plan.md",
    }.get(kind)
    if markdown is not None:
        assert "<b>web-1</b>, <b>web-2</b>: 1 added</summary>" in markdown.read_text()


@pytest.mark.parametrize("kind", ["github", "gitlab"])
def test_a_bad_change_fails_at_check_and_nothing_after_it_runs(kind: str, forge: Forge) -> None:
    checkout = forge.pull_request("pr-bad", "hosts/web-1/host.yaml", _bad_host_yaml(forge))
    ran = forge.runner.run(_steps(kind, "plan", forge), checkout)
    assert [r.name for r in ran] == ["Check" if kind != "gitlab" else "gitops check"]
    assert ran[0].returncode == 1
    assert "no-such-profile" in ran[0].stderr + ran[0].stdout
    assert not _plan_file(kind, forge, checkout).exists()


def test_the_publish_jobs_are_serialised() -> None:
    for path in ACTIONS.values():
        job = yaml.safe_load(path.read_text())["jobs"]["publish"]
        assert job["concurrency"] == {"group": "gitops-publish", "cancel-in-progress": False}
    assert yaml.safe_load(GITLAB.read_text())["publish"]["resource_group"] == "gitops-publish"
