"""The NixOS side and the agent agree: defaults, the rendered config file, the flake.

nixpkgs is not available offline, so the modules themselves cannot be evaluated here.
What can be evaluated with real Nix is: the pure renderer nixos/agent-config.nix (its
output goes through the agent's own parse_config), the pure helpers of the package and
the flake, the flake.lock against flake.nix, and flake.nix itself with nixpkgs replaced
by a one-line stand-in whose nixosSystem returns its arguments: that shows which modules
each host gets and that configurationRevision is the deploy commit the agent builds.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest

from gitops.agent import config as agent_config
from gitops.agent.config import AgentConfig, HealthConfig, Mode, parse_config
from gitops.errors import GitopsError
from gitops.publish.plan import load_fleet_at, render_host_tree
from gitops.sitegen import commitgraph
from gitops.sitegen.collect import QUICK_READ
from testing.env import NIX_CONFIG
from testing.helpers import commit_all, git, git_out, init_repo, published_demo
from testing.site_helpers import standard_fleet

REPO = Path(__file__).resolve().parent.parent
NIXOS = REPO / "nixos"
DEFAULTS: dict[str, Any] = json.loads((NIXOS / "agent-defaults.json").read_text())

pytestmark = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None and not os.environ.get("CI"),
    reason="nix is not installed (CI installs it)",
)

# The module's option for each key of the agent's configuration file.
OPTION_FOR_KEY = {
    "signing_key": "signingKey",
    "state_dir": "stateDir",
    "system_profile": "systemProfile",
    "action": "action",
    "poll_interval": "interval",
    "poll_jitter": "randomizedDelaySec",
    "report_interval": "reportInterval",
    "ssh_key": "sshKey",
    "known_hosts": "knownHostsFile",
    "http_token_file": "httpTokenFile",
    "http_username": "httpUsername",
    "health": "health",
    "build_args": "buildArgs",
    "trust_on_first_use": "trustOnFirstUse",
    "min_commit": "minCommit",
    "max_age": "maxAge",
    "watch": "watch",
    "keep_generations": "keepGenerations",
    "build_retry_interval": "buildRetryInterval",
    "build_timeout": "buildTimeout",
    "activation_timeout": "activationTimeout",
    "metrics_file": "metricsFile",
    "secrets_dir": "secretsDir",
    "escrow": "escrow",
    "escrow_recipients": "escrowRecipients",
    "mode": "mode",
    "substituters": "substituters",
    "trusted_public_keys": "trustedPublicKeys",
}
HEALTH_OPTION_FOR_KEY = {
    "failed_units": "failedUnits",
    "remote": "remote",
    "commands": "commands",
    "grace": "grace",
    "timeout": "timeout",
    "remote_grace": "remoteGrace",
}
CACHE_KEY = "fleet-cache-1:" + "A" * 43 + "="
REQUIRED = {
    "hostName": "web-1",
    "remote": "https://git.example.org/infra/fleet.git",
    "trustedPublishersFile": "/etc/gitops/publishers.allowed_signers",
}


def module_config(**changes: Any) -> dict[str, Any]:
    """``config.services.gitops-agent`` as the module sees it with its defaults."""
    cfg: dict[str, Any] = {
        OPTION_FOR_KEY[key]: value for key, value in DEFAULTS.items() if key != "health"
    }
    cfg["health"] = {HEALTH_OPTION_FOR_KEY[k]: v for k, v in DEFAULTS["health"].items()}
    cfg["settings"] = {}
    cfg.update(REQUIRED)
    cfg.update(changes)
    return cfg


def nix_eval(expr: str, *, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "-E", expr],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "NIX_CONFIG": NIX_CONFIG},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def nix_path(path: Path) -> str:
    """A Nix path expression for ``path``."""
    return f"(/. + {json.dumps(str(path))})"


def render_expr(cfg_file: Path, extra: str = "") -> str:
    cfg = f"builtins.fromJSON (builtins.readFile {nix_path(cfg_file)})"
    if extra:
        cfg = f"({cfg}) // {extra}"
    return f"import {nix_path(NIXOS / 'agent-config.nix')} {{ cfg = {cfg}; }}"


def render(tmp_path: Path, cfg: dict[str, Any], extra: str = "") -> str:
    """The agent configuration file the module would write, as text."""
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    text = json.loads(nix_eval(render_expr(cfg_file, extra)).stdout)
    assert isinstance(text, str)
    return text


# -- defaults ------------------------------------------------------------------------------


def test_every_default_is_a_setting_the_agent_accepts() -> None:
    fields = {f.name for f in dataclasses.fields(AgentConfig)}
    health_fields = {f.name for f in dataclasses.fields(HealthConfig)}
    assert set(DEFAULTS) <= fields
    assert set(DEFAULTS["health"]) == health_fields
    assert set(DEFAULTS) == set(OPTION_FOR_KEY)
    # parse_config refuses unknown keys: all of them together are accepted.
    parse_config(
        json.dumps({**DEFAULTS, "host": "web-1", "remote": "x", "trusted_publishers": "/x"}),
        "defaults",
    )


# The real defaults, read at import: the autouse guard in conftest moves them away from the
# real system for every test, and these tests compare against the real ones.
REAL_DEFAULTS = {
    "DEFAULT_STATE_DIR": agent_config.DEFAULT_STATE_DIR,
    "DEFAULT_PROFILE": agent_config.DEFAULT_PROFILE,
    "DEFAULT_SECRETS_DIR": agent_config.DEFAULT_SECRETS_DIR,
}


@pytest.fixture
def real_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in REAL_DEFAULTS.items():
        monkeypatch.setattr(agent_config, name, value)


@pytest.mark.usefixtures("real_defaults")
def test_module_defaults_are_the_agent_defaults() -> None:
    """A host with the module's defaults behaves like an agent with no settings at all."""
    required = {"host": "web-1", "remote": "/srv/fleet.git", "trusted_publishers": "/etc/p"}
    with_defaults = parse_config(json.dumps({**DEFAULTS, **required}), "module defaults")
    assert with_defaults == AgentConfig(
        host="web-1", remote="/srv/fleet.git", trusted_publishers=Path("/etc/p")
    )


def test_module_reads_every_default_from_the_json_file() -> None:
    module = (NIXOS / "agent.nix").read_text()
    for key, value in DEFAULTS.items():
        if key == "health":
            for health_key in value:
                assert f"defaults.health.{health_key}" in module, health_key
        else:
            assert f"defaults.{key}" in module, key


def test_renderer_uses_only_declared_options() -> None:
    module = (NIXOS / "agent.nix").read_text()
    declared = set(re.findall(r"^\s*([A-Za-z]+) = (?:mkOption|lib\.mkEnableOption)", module, re.M))
    renderer = (NIXOS / "agent-config.nix").read_text()
    used = set(re.findall(r"\bcfg\.([A-Za-z]+)", renderer)) | set(
        re.findall(r"\bcfg\.health\.([A-Za-z]+)", renderer)
    )
    used.discard("health")
    # Two are computed by the module before rendering (text options become files).
    assert used - declared <= {"trustedPublishersFile", "knownHostsFile"}
    assert {"trustedPublishersFile", "knownHostsFile"} <= declared
    assert used - declared == set()


# -- the rendered file ---------------------------------------------------------------------


@pytest.mark.usefixtures("real_defaults")
def test_defaults_render_to_a_config_the_agent_parses(tmp_path: Path) -> None:
    text = render(tmp_path, module_config())
    data = json.loads(text)
    assert None not in data.values()  # unset options are left out, not written as null
    config = parse_config(text, "rendered")
    assert config == AgentConfig(
        host="web-1",
        remote="https://git.example.org/infra/fleet.git",
        trusted_publishers=Path("/etc/gitops/publishers.allowed_signers"),
    )


def test_every_option_round_trips(tmp_path: Path) -> None:
    cfg = module_config(
        remote="ssh://git@git.example.org/infra/fleet.git",
        knownHostsFile="/etc/gitops/known_hosts",
        sshKey="/etc/ssh/ssh_host_ed25519_key",
        httpTokenFile="/run/secrets/token",
        httpUsername="fleet-bot",
        signingKey="/var/lib/gitops-agent/report_key",
        stateDir="/var/lib/gitops",
        systemProfile="/nix/var/nix/profiles/system",
        action="boot",
        interval=900,
        randomizedDelaySec=120,
        reportInterval=7200,
        health={
            "failedUnits": False,
            "remote": True,
            "commands": ["curl -fsS http://127.0.0.1/health", ["systemctl", "is-active", "nginx"]],
            "grace": 30,
            "timeout": 15,
            "remoteGrace": 120,
        },
        buildArgs=["--max-jobs", "2"],
        trustOnFirstUse=False,
        minCommit="0" * 40,
        maxAge="30d",
        watch=["/srv/mirror.git/refs"],
        keepGenerations=10,
        buildRetryInterval=600,
        buildTimeout=14400,
        activationTimeout=300,
        metricsFile="/var/lib/prometheus-node-exporter/gitops.prom",
        secretsDir="/run/fleet-secrets",
        escrow={"luks-recovery": "/etc/luks-recovery.key"},
        escrowRecipients=["age1zltzz5e4tavefhg7jfa9zu557y772rc0uwn5kdall62qt9hgpaqqsdgtac"],
        mode="substitute",
        substituters=["https://cache.example.org", "file:///srv/nix-cache"],
        trustedPublicKeys=[CACHE_KEY],
    )
    config = parse_config(render(tmp_path, cfg), "rendered")
    assert config == AgentConfig(
        host="web-1",
        remote="ssh://git@git.example.org/infra/fleet.git",
        trusted_publishers=Path("/etc/gitops/publishers.allowed_signers"),
        signing_key=Path("/var/lib/gitops-agent/report_key"),
        state_dir=Path("/var/lib/gitops"),
        system_profile=Path("/nix/var/nix/profiles/system"),
        action=config.action.BOOT,
        poll_interval=900,
        poll_jitter=120,
        report_interval=7200,
        ssh_key=Path("/etc/ssh/ssh_host_ed25519_key"),
        known_hosts=Path("/etc/gitops/known_hosts"),
        http_token_file=Path("/run/secrets/token"),
        http_username="fleet-bot",
        health=HealthConfig(
            failed_units=False,
            remote=True,
            commands=(
                ("/bin/sh", "-c", "curl -fsS http://127.0.0.1/health"),
                ("systemctl", "is-active", "nginx"),
            ),
            grace=30,
            timeout=15,
            remote_grace=120,
        ),
        build_args=("--max-jobs", "2"),
        trust_on_first_use=False,
        min_commit="0" * 40,
        max_age=30 * 86400,
        watch=(Path("/srv/mirror.git/refs"),),
        keep_generations=10,
        build_retry_interval=600,
        build_timeout=14400,
        activation_timeout=300,
        metrics_file=Path("/var/lib/prometheus-node-exporter/gitops.prom"),
        secrets_dir=Path("/run/fleet-secrets"),
        escrow=(("luks-recovery", Path("/etc/luks-recovery.key")),),
        escrow_recipients=("age1zltzz5e4tavefhg7jfa9zu557y772rc0uwn5kdall62qt9hgpaqqsdgtac",),
        mode=Mode.SUBSTITUTE,
        substituters=("https://cache.example.org", "file:///srv/nix-cache"),
        trusted_public_keys=(CACHE_KEY,),
    )


def timeout_start_sec(tmp_path: Path, cfg: dict[str, Any]) -> int:
    """The unit's TimeoutStartSec, as the module computes it from the rendered file."""
    rendered = tmp_path / "rendered.json"
    rendered.write_text(render(tmp_path, cfg))
    expr = (
        f"import {nix_path(NIXOS / 'agent-timeout.nix')} "
        f"(builtins.fromJSON (builtins.readFile {nix_path(rendered)}))"
    )
    seconds = json.loads(nix_eval(expr).stdout)
    assert isinstance(seconds, int)
    return seconds


def test_the_unit_outlasts_the_agents_own_time_limits(tmp_path: Path) -> None:
    module = (NIXOS / "agent.nix").read_text()
    assert "TimeoutStartSec = timeoutStartSec;" in module
    default = timeout_start_sec(tmp_path, module_config())
    config = parse_config(render(tmp_path, module_config()), "rendered")
    longest_cycle = (
        config.build_timeout
        + 2 * config.activation_timeout
        + config.health.grace
        + 2 * config.health.remote_grace
        + config.health.timeout * len(config.health.commands)
    )
    assert default > longest_cycle
    # Longer limits, also through `settings` and as durations, make a longer unit limit.
    longer = module_config(
        buildTimeout=14400,
        health={**module_config()["health"], "commands": ["true", "true"]},
        settings={"activation_timeout": "1h"},
    )
    assert timeout_start_sec(tmp_path, longer) == default + 7200 + 2 * (3600 - 600) + 2 * 60


def test_settings_are_merged_over_the_options(tmp_path: Path) -> None:
    cfg = module_config(settings={"health": {"grace": 45}, "root": "/srv/fake-root"})
    config = parse_config(render(tmp_path, cfg), "rendered")
    assert config.health == HealthConfig(grace=45)  # the other health values stay
    assert config.root == Path("/srv/fake-root")


def test_a_misspelt_setting_is_refused_by_the_agent(tmp_path: Path) -> None:
    text = render(tmp_path, module_config(settings={"poll_intervall": 60}))
    with pytest.raises(GitopsError, match="poll_intervall: unknown setting"):
        parse_config(text, "rendered")


def test_public_files_given_as_nix_paths_are_copied_to_the_store(tmp_path: Path) -> None:
    signers = tmp_path / "publishers.allowed_signers"
    signers.write_text('publisher@example.org namespaces="git" ssh-ed25519 AAAA\n')
    text = render(tmp_path, module_config(), f"{{ trustedPublishersFile = {nix_path(signers)}; }}")
    stored = parse_config(text, "rendered").trusted_publishers
    # The store path of exactly this file (content-addressed), which the host will have.
    added = subprocess.run(
        ["nix-store", "--add", str(signers)],
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, "NIX_CONFIG": NIX_CONFIG},
    ).stdout.strip()
    assert str(stored) == added
    assert Path(added).read_text() == signers.read_text()


@pytest.mark.parametrize("option", ["signingKey", "sshKey", "httpTokenFile"])
def test_a_secret_given_as_a_nix_path_is_refused(tmp_path: Path, option: str) -> None:
    secret = tmp_path / "secret"
    secret.write_text("-----BEGIN OPENSSH PRIVATE KEY-----\n")
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(module_config()))
    result = nix_eval(render_expr(cfg_file, f"{{ {option} = {nix_path(secret)}; }}"), check=False)
    assert result.returncode != 0
    assert f"services.gitops-agent.{option}: write the path as a string" in result.stderr


def test_a_secret_in_the_store_is_refused(tmp_path: Path) -> None:
    cfg_file = tmp_path / "cfg.json"
    cfg_file.write_text(json.dumps(module_config()))
    extra = '{ signingKey = builtins.storeDir + "/0000000000000000000000000000000-key"; }'
    result = nix_eval(render_expr(cfg_file, extra), check=False)
    assert result.returncode != 0
    assert "is in the Nix store, which every user can read" in result.stderr


# -- package and flake helpers -------------------------------------------------------------


def test_package_dependencies_follow_pyproject() -> None:
    pyproject = nix_path(REPO / "pyproject.toml")
    expr = f"import {nix_path(NIXOS / 'python-deps.nix')} (builtins.fromTOML (builtins.readFile {pyproject}))"
    names = json.loads(nix_eval(expr).stdout)
    assert {"pygit2", "cryptography", "pyyaml", "jinja2", "watchfiles"} <= set(names)
    expr = f'import {nix_path(NIXOS / "python-deps.nix")} {{ project.dependencies = [ "typing_extensions>=4.4" "Jinja2 >= 3" "ruamel.yaml" ]; }}'
    assert json.loads(nix_eval(expr).stdout) == ["typing-extensions", "jinja2", "ruamel-yaml"]


def test_hosts_are_the_directories_with_a_configuration(tmp_path: Path) -> None:
    hosts = nix_path(NIXOS / "hosts.nix")
    in_repo = json.loads(nix_eval(f"import {hosts} {nix_path(REPO / 'hosts')}").stdout)
    assert in_repo == sorted(p.parent.name for p in (REPO / "hosts").glob("*/configuration.nix"))
    assert len(in_repo) >= 8
    (tmp_path / "hosts" / "web-1").mkdir(parents=True)
    (tmp_path / "hosts" / "web-1" / "configuration.nix").write_text("{ }\n")
    (tmp_path / "hosts" / "notes").mkdir()  # no configuration.nix
    (tmp_path / "hosts" / "README.md").write_text("hosts\n")
    assert json.loads(nix_eval(f"import {hosts} {nix_path(tmp_path / 'hosts')}").stdout) == [
        "web-1"
    ]
    assert json.loads(nix_eval(f"import {hosts} {nix_path(tmp_path / 'none')}").stdout) == []


# -- the flake -----------------------------------------------------------------------------

STANDIN_NIXPKGS = """{
  # Stands in for nixpkgs: nixosSystem returns what it was given.
  outputs = { self }: {
    lib.nixosSystem = args: { inherit args; };
    legacyPackages = builtins.listToAttrs (map (system: {
      name = system;
      value.callPackage = fn: overrides: { package = toString fn; inherit overrides; };
    }) [ "x86_64-linux" "aarch64-linux" ]);
  };
}
"""


def nix(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NIX_CONFIG": NIX_CONFIG + "\ndownload-attempts = 1\nconnect-timeout = 2"}
    result = subprocess.run(
        ["nix", *args], cwd=cwd, check=False, capture_output=True, text=True, env=env
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


NIXPKGS_BRANCH = "nixos-26.05"


def test_flake_asks_for_the_current_stable_nixpkgs_and_the_lock_pins_nothing_stale(
    tmp_path: Path,
) -> None:
    """flake.nix asks for nixos-26.05. nixpkgs cannot be downloaded here, so no real
    26.05 revision and narHash can be computed: the committed lock has no nixpkgs node
    (nothing stale, nothing invented), and `nix flake lock` fills it in on first use
    (docs/nixos-versions.md). With a stand-in, Nix locks the input flake.nix declares."""
    for name in ("flake.nix", "flake.lock"):
        shutil.copy(REPO / name, tmp_path / name)
    committed = json.loads((REPO / "flake.lock").read_text())
    assert committed["version"] == 7
    pinned = committed["nodes"].get("nixpkgs")
    if pinned is None:  # as committed here: the admin's first `nix flake lock` pins it
        assert committed["nodes"] == {"root": {}}
    else:  # locked where GitHub is reachable: a real pin of the branch flake.nix names
        assert pinned["original"]["ref"] == NIXPKGS_BRANCH
        assert re.fullmatch(r"[0-9a-f]{40}", pinned["locked"]["rev"])
        assert pinned["locked"]["narHash"].startswith("sha256-")
    standin = tmp_path / "standin"
    standin.mkdir()
    (standin / "flake.nix").write_text(STANDIN_NIXPKGS)
    nix("flake", "lock", "--override-input", "nixpkgs", f"path:{standin}", f"path:{tmp_path}",
        cwd=tmp_path)  # fmt: skip
    locked = json.loads((tmp_path / "flake.lock").read_text())["nodes"]["nixpkgs"]
    assert locked["original"] == {
        "owner": "NixOS",
        "ref": NIXPKGS_BRANCH,
        "repo": "nixpkgs",
        "type": "github",
    }
    assert locked["locked"]["type"] == "path"  # the stand-in, not a download
    # Once the admin has locked it for real: no further update may be needed.
    nix("flake", "metadata", "--json", "--no-update-lock-file", f"path:{tmp_path}", cwd=tmp_path)


@pytest.fixture
def fleet_repo(tmp_path: Path) -> pygit2.Repository:
    """This repository's fleet in a fresh git repository, nixpkgs locked to the stand-in."""
    standin = tmp_path / "nixpkgs"
    standin.mkdir()
    (standin / "flake.nix").write_text(STANDIN_NIXPKGS)
    repo = init_repo(tmp_path / "fleet")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in ("flake.nix", "fleet.yaml", "pyproject.toml", "README.md"):
        shutil.copy(REPO / name, repo / name)
    for name in ("nixos", "modules", "hosts", "profiles", "gitops", "site"):
        if (REPO / name).is_dir():
            shutil.copytree(REPO / name, repo / name, ignore=ignore)
    git("add", "-A", cwd=repo)
    nix("flake", "lock", "--override-input", "nixpkgs", f"path:{standin}", cwd=repo)
    commit_all(repo, "fleet with a stand-in nixpkgs")
    return pygit2.Repository(str(repo))


def deploy_commit(repo: pygit2.Repository, host: str) -> str:
    """What `gitops publish` puts on deploy/<host> (unsigned here: Nix does not care)."""
    main = repo.revparse_single("HEAD")
    assert isinstance(main, pygit2.Commit)
    fleet = load_fleet_at(repo, main)
    tree = render_host_tree(repo, main, fleet, fleet.hosts[host])
    who = pygit2.Signature("publisher", "publisher@example.org")
    oid = repo.create_commit(f"refs/heads/deploy/{host}", who, who, f"deploy {host}", tree, [])
    return str(oid)


def flake_eval(flake: str, attr: str, apply: str, cwd: Path) -> Any:
    result = nix("eval", "--json", f"{flake}#{attr}", "--apply", apply, cwd=cwd)
    return json.loads(result.stdout)


HOST_MODULES = """c: map (m:
  if builtins.isAttrs m
  then { inherit (m.networking) hostName; revision = m.system.configurationRevision; }
  else builtins.baseNameOf (toString m)) c.args.modules"""


def test_flake_defines_every_host_of_the_fleet(fleet_repo: pygit2.Repository) -> None:
    workdir = Path(fleet_repo.workdir)
    head = str(fleet_repo.head.target)
    configurations = flake_eval(
        f"git+file://{workdir}?rev={head}", "nixosConfigurations", "builtins.attrNames", workdir
    )
    assert configurations == sorted(p.name for p in (REPO / "hosts").iterdir() if p.is_dir())
    outputs = flake_eval(
        f"git+file://{workdir}?rev={head}",
        "nixosModules",
        "m: builtins.mapAttrs (n: p: builtins.baseNameOf (toString p)) m",
        workdir,
    )
    assert outputs == {
        "agent": "agent.nix",
        "default": "agent.nix",
        "server": "server.nix",
        "site": "site.nix",
    }
    package = flake_eval(
        f"git+file://{workdir}?rev={head}", "packages.x86_64-linux.default", "p: p.package", workdir
    )
    assert package.endswith("/nixos/package.nix")


@pytest.mark.parametrize("host", ["files-1", "kiosk-lobby"])
def test_flake_in_a_deploy_tree_defines_only_that_host(
    fleet_repo: pygit2.Repository, host: str
) -> None:
    """The agent builds git+file://<mirror>?ref=...&rev=<deploy commit>."""
    workdir = Path(fleet_repo.workdir)
    deploy = deploy_commit(fleet_repo, host)
    flake = f"git+file://{workdir}?ref=refs/heads/deploy/{host}&rev={deploy}"
    assert flake_eval(flake, "nixosConfigurations", "builtins.attrNames", workdir) == [host]
    modules = flake_eval(flake, f"nixosConfigurations.{host}", HOST_MODULES, workdir)
    assert modules == [
        "agent.nix",
        "site.nix",
        "modules",
        "configuration.nix",
        {"hostName": host, "revision": deploy},
    ]


# -- the site service's script -------------------------------------------------------------


def run_site_update(
    state: Path, remote: Path, history_hosts: int | None = None
) -> subprocess.CompletedProcess[str]:
    """nixos/site-update.sh as gitops-site.service runs it, with this checkout's gitops."""
    bin_dir = Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GITOPS_SITE_STATE": str(state),
        "GITOPS_SITE_REPOSITORY": str(remote),
    }
    if history_hosts is not None:
        env["GITOPS_SITE_HISTORY_HOSTS"] = str(history_hosts)
    return subprocess.run(
        ["bash", str(NIXOS / "site-update.sh")],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )


def test_site_update_mirrors_the_repository_and_swaps_in_new_builds(tmp_path: Path) -> None:
    work = init_repo(tmp_path / "fleet")
    for name in ("fleet.yaml", "hosts", "profiles", "modules", "policies"):
        source = REPO / name
        if source.is_dir():
            shutil.copytree(source, work / name)
        elif source.is_file():
            shutil.copy(source, work / name)
    commit_all(work, "the example fleet")
    server = tmp_path / "server.git"
    git("clone", "-q", "--bare", work, server, cwd=tmp_path)
    git("push", "-q", str(server), "HEAD:refs/heads/reports/old-host", cwd=work)
    state = tmp_path / "state"

    first = run_site_update(state, server)
    assert first.returncode == 0, first.stderr
    mirror = pygit2.Repository(str(state / "mirror.git"))
    assert mirror.is_bare
    assert "refs/heads/reports/old-host" in list(mirror.references)
    index = (state / "www" / "index.html").read_text()
    assert "Riverbend Planning" in index  # fleet.yaml site.title
    www_inode = (state / "www").stat().st_ino

    # A change on the server: a host is described differently, a branch is deleted.
    host_yaml = work / "hosts" / "kiosk-lobby" / "host.yaml"
    host_yaml.write_text(
        host_yaml.read_text().replace(
            "description: Visitor information screen in the lobby",
            "description: Visitor screen and room booking in the lobby",
        )
    )
    head = commit_all(work, "kiosk-lobby: room booking")
    git("push", "-q", str(server), "HEAD:refs/heads/main", cwd=work)
    git("push", "-q", str(server), ":refs/heads/reports/old-host", cwd=work)

    second = run_site_update(state, server)
    assert second.returncode == 0, second.stderr
    mirror = pygit2.Repository(str(state / "mirror.git"))
    assert str(mirror.references["refs/heads/main"].target) == head
    assert "refs/heads/reports/old-host" not in list(mirror.references)  # pruned
    graph = commitgraph.CommitGraph.open(mirror)  # written on clone, extended on fetch
    assert graph is not None and graph.find(bytes.fromhex(head)) is not None
    pages = "".join(p.read_text() for p in (state / "www").rglob("*.html"))
    assert "Visitor screen and room booking in the lobby" in pages
    assert (state / "www").stat().st_ino != www_inode  # a new directory, swapped in
    assert not list(state.glob(".www.tmp-*"))  # nothing half-built left behind


def test_site_update_passes_the_history_budget(tmp_path: Path) -> None:
    """historyHosts reaches the build: with 0, every host waits for a next build."""
    fleet = standard_fleet(tmp_path / "fleet.git")
    for minute in range(QUICK_READ + 2):  # a history longer than a quick read
        fleet.report("up", datetime.now(UTC) - timedelta(minutes=30 - minute))
    state = tmp_path / "state"
    first = run_site_update(state, fleet.path, history_hosts=0)
    assert first.returncode == 0, first.stderr
    assert "older reports of 1 host(s) are read in the next builds" in first.stderr
    second = run_site_update(state, fleet.path)
    assert second.returncode == 0, second.stderr
    assert "older reports" not in second.stderr


def test_site_update_fails_loudly_on_an_unreachable_repository(tmp_path: Path) -> None:
    result = run_site_update(tmp_path / "state", tmp_path / "missing.git")
    assert result.returncode != 0
    assert not (tmp_path / "state" / "www").exists()
    assert not (tmp_path / "state" / "mirror.git").exists()


# -- the docs name every option ------------------------------------------------------------


def declared_options(module: Path, prefix: str) -> set[str]:
    """Option names under ``prefix`` (e.g. health.grace), from the module's source."""
    text = module.read_text()
    body = text.split(f"options.{prefix} = {{", 1)[1].split("\n  config = ", 1)[0]
    names: set[str] = set()
    group = ""
    for line in body.splitlines():
        opened = re.match(r"^    ([A-Za-z]+) = \{$", line)
        if opened:
            group = opened.group(1) + "."
            continue
        if re.match(r"^    \};$", line):
            group = ""
            continue
        # shared.*Option: the option constructors of nixos/lib.nix.
        option = re.match(
            r"^\s+([A-Za-z]+) = (?:mkOption|lib\.mkEnableOption|shared\.[a-z][A-Za-z]*Option)\b",
            line,
        )
        if option:
            names.add(group + option.group(1))
    return names


@pytest.mark.parametrize(
    ("module", "prefix", "doc"),
    [
        ("agent.nix", "services.gitops-agent", "install-agent.md"),
        ("site.nix", "services.gitops-site", "site.md"),
        ("server.nix", "services.gitops-server", "server.md"),
    ],
)
def test_docs_list_every_option(module: str, prefix: str, doc: str) -> None:
    options = declared_options(NIXOS / module, prefix)
    assert {"enable", "package"} <= options
    text = (REPO / "docs" / doc).read_text()
    documented = set(re.findall(r"`([A-Za-z]+(?:\.[A-Za-z]+)?)`", text))
    assert options - documented == set()


def test_the_commanders_file_reaches_the_agent_configuration(tmp_path: Path) -> None:
    signers = tmp_path / "commanders.allowed_signers"
    signers.write_text('alice@example.org namespaces="gitops-command" ssh-ed25519 AAAA\n')
    assert parse_config(render(tmp_path, module_config()), "rendered").trusted_commanders is None
    text = render(tmp_path, module_config(), f"{{ trustedCommandersFile = {nix_path(signers)}; }}")
    stored = parse_config(text, "rendered").trusted_commanders
    # Public material: copied to the store (nix eval names the path; the build adds it).
    assert stored is not None and stored.name.endswith("-commanders.allowed_signers")
    assert str(stored).startswith("/nix/store/")


# -- enrolment at first boot (services.gitops-agent.enrol) ----------------------------------

# Just enough of nixpkgs' lib for the module's options: mkOption returns its arguments.
STANDIN_LIB = """
let type = name: { inherit name; }; in {
  types = {
    str = type "str"; bool = type "bool"; lines = type "lines";
    strMatching = _: type "strMatching"; nullOr = _: type "nullOr"; listOf = _: type "listOf";
  };
  mkOption = args: args;
  mkEnableOption = what: { default = false; description = "Whether to enable ${what}."; };
  literalExpression = text: text;
}
"""


def enrol_option_defaults() -> dict[str, Any]:
    """``enrol.<option> -> default`` as nixos/agent.nix declares them (None: required),
    evaluated with real Nix and a stand-in lib, for a host named web-1."""
    expr = f"""
      let
        module = import {nix_path(NIXOS / "agent.nix")} {{
          config = {{ services.gitops-agent.hostName = "web-1"; networking.hostName = "web-1"; }};
          pkgs = {{ }};
          lib = {STANDIN_LIB};
        }};
        enrol = module.options.services.gitops-agent.enrol;
      in builtins.mapAttrs (name: option: {{ default = option.default or null; }}) enrol
    """
    result = nix_eval(expr).stdout
    return {f"enrol.{k}": v["default"] for k, v in json.loads(result).items()}


def test_enrol_options_and_defaults_are_documented() -> None:
    defaults = enrol_option_defaults()
    assert set(defaults) == {
        "enrol.enable", "enrol.remote", "enrol.name", "enrol.profiles", "enrol.owner",
        "enrol.sshKey", "enrol.knownHosts",
    }  # fmt: skip
    assert defaults["enrol.enable"] is False
    assert defaults["enrol.name"] == "web-1"  # hostName
    table = {}
    for line in (REPO / "docs" / "install-agent.md").read_text().splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) == 3 and cells[0].startswith("`enrol."):
            table[cells[0].strip("`")] = cells[1]
    assert set(table) == set(defaults)
    assert table["enrol.remote"] == "required"
    assert table["enrol.name"] == "`hostName`"
    literal = {None: "null", False: "false", "": '""'}
    for name in ("enrol.enable", "enrol.owner", "enrol.sshKey", "enrol.knownHosts"):
        assert table[name] == f"`{literal[defaults[name]]}`", name
    assert defaults["enrol.profiles"] == [] and table["enrol.profiles"] == "`[ ]`"


def enrol_unit(tmp_path: Path, cfg: dict[str, Any], known_hosts: str | None = None) -> Any:
    """nixos/agent-enrol.nix for ``cfg``, with the `gitops` of this checkout and /usr's
    coreutils."""
    package = tmp_path / "package"
    (package / "bin").mkdir(parents=True, exist_ok=True)
    wrapper = package / "bin" / "gitops"
    wrapper.write_text(f'#!/bin/sh\nexec env PYTHONPATH={REPO} {sys.executable} -m gitops "$@"\n')
    wrapper.chmod(0o755)
    cfg_file = tmp_path / "enrol-cfg.json"
    cfg_file.write_text(json.dumps(cfg))
    hosts = "null" if known_hosts is None else json.dumps(known_hosts)
    expr = (
        f"import {nix_path(NIXOS / 'agent-enrol.nix')} {{ "
        f"cfg = builtins.fromJSON (builtins.readFile {nix_path(cfg_file)}); "
        f'gitops = {json.dumps(str(package))}; coreutils = "/usr"; knownHostsFile = {hosts}; }}'
    )
    return json.loads(nix_eval(expr).stdout)


def test_the_enrol_unit_runs_gitops_enroll_once(tmp_path: Path) -> None:
    demo = published_demo(tmp_path / "demo", {"alpha": ["workstation"]})
    state = tmp_path / "state"
    cfg = module_config(
        stateDir=str(state),
        signingKey=str(tmp_path / "ssh_host_ed25519_key"),
        enrol={
            "enable": True, "remote": str(demo.server), "name": "o'brien-1",
            "profiles": ["workstation"], "owner": "dana@example.org", "sshKey": None,
            "knownHosts": None,
        },
    )  # fmt: skip
    refused = enrol_unit(tmp_path, cfg)
    # Once: systemd skips the unit when the marker exists; before the agent's first cycle.
    unit = refused["unit"]
    assert unit["unitConfig"]["ConditionPathExists"] == f"!{state}/enrolled"
    assert refused["marker"] == f"{state}/enrolled"
    assert "gitops-agent.service" in unit["before"] and "sshd-keygen.service" in unit["after"]
    assert unit["wantedBy"] == ["multi-user.target"]
    assert unit["serviceConfig"]["Type"] == "oneshot"
    assert unit["serviceConfig"]["Restart"] == "on-failure"
    # A refused proposal (not a host name; quoted, not run by the shell): no marker.
    done = subprocess.run(
        ["/bin/sh", "-c", refused["script"]], capture_output=True, text=True, check=False
    )
    assert done.returncode != 0 and "is not a host name" in done.stderr
    assert not state.exists()

    cfg["enrol"]["name"] = "delta"
    accepted = enrol_unit(tmp_path, cfg, known_hosts="git.example.org ssh-ed25519 AAAA")
    assert "'--known-hosts' " in accepted["script"]  # only for an ssh remote; harmless here
    script = enrol_unit(tmp_path, cfg)["script"]
    done = subprocess.run(["/bin/sh", "-c", script], capture_output=True, text=True, check=False)
    assert done.returncode == 0, done.stderr
    assert "proposed delta on enroll/delta" in done.stdout
    assert (state / "enrolled").is_file()
    assert git_out("rev-parse", "refs/heads/enroll/delta", cwd=demo.server)
    assert (tmp_path / "ssh_host_ed25519_key").is_file()  # made, as sshd would have
