"""``services.gitops-server`` (nixos/server.nix) and the server agree.

nixpkgs is not available offline, so the module cannot be evaluated in a NixOS system
here. What real Nix can evaluate: the module's options (with a stand-in ``lib`` that
keeps each option's declaration as it is), which the docs' table must match, default by
default; the pure renderer of server.yaml, whose output goes through the server's own
parser; sshd's settings, which must be those of the snippet ``gitops server sync``
writes; and nixos/server-sync.sh, run as the units run it, with real git and gitops.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml

from gitops.server.config import MainPolicy, ServerConfig
from gitops.server.layout import Layout
from gitops.server.sync import sshd_snippet
from gitops.trust import keys
from testing.env import NIX_CONFIG
from testing.helpers import git, published_demo

REPO = Path(__file__).resolve().parent.parent
NIXOS = REPO / "nixos"
DOC = REPO / "docs" / "server.md"

pytestmark = pytest.mark.skipif(
    shutil.which("nix-instantiate") is None and not os.environ.get("CI"),
    reason="nix is not installed (CI installs it)",
)

# Just enough of nixpkgs' lib for the module's `options`: mkOption returns its
# arguments, so each option's default and description can be read back.
STANDIN_LIB = """
let
  type = name: { inherit name; };
  types = {
    str = type "str"; bool = type "bool"; lines = type "lines"; package = type "package";
    path = type "path";
    ints = { positive = type "positive"; unsigned = type "unsigned"; };
    strMatching = _: type "strMatching"; nullOr = _: type "nullOr"; attrsOf = _: type "attrsOf";
    listOf = _: type "listOf";
  };
in {
  inherit types;
  mkOption = args: args;
  mkEnableOption = what: { default = false; description = "Whether to enable ${what}."; };
  literalExpression = text: text;
}
"""


def nix(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["nix-instantiate", *args],
        check=False,
        capture_output=True,
        text=True,
        env={**os.environ, "NIX_CONFIG": NIX_CONFIG},
    )
    if check:
        assert result.returncode == 0, result.stderr
    return result


def nix_eval(expr: str) -> Any:
    return json.loads(nix("--eval", "--strict", "--json", "-E", expr).stdout)


def nix_file(path: Path) -> str:
    return f"(/. + {json.dumps(str(path))})"


@pytest.mark.parametrize("name", ["server.nix", "server-config.nix", "server-sshd.nix", "lib.nix"])
def test_the_nix_files_parse(name: str) -> None:
    nix("--parse", str(NIXOS / name))


def test_the_sync_script_is_valid_bash() -> None:
    subprocess.run(["bash", "-n", NIXOS / "server-sync.sh"], check=True)


# -- options and the docs ---------------------------------------------------------------------


def module_defaults() -> dict[str, Any]:
    """``option -> default`` (``sshd.maxStartups`` for nested ones), ``package`` left out:
    its default needs nixpkgs."""
    expr = f"""
      let
        module = import {nix_file(NIXOS / "server.nix")} {{
          config = {{ }}; pkgs = {{ }}; lib = {STANDIN_LIB};
        }};
        options = module.options.services.gitops-server;
        flat = prefix: attrs: builtins.concatLists (map (name:
          let value = attrs.${{name}}; in
          if value ? description then
            (if name == "package" || !(value ? default) then [ ]
             else [ {{ name = prefix + name; value = value.default; }} ])
          else flat "${{prefix}}${{name}}." value
        ) (builtins.attrNames attrs));
      in builtins.listToAttrs (flat "" options)
    """
    result = nix_eval(expr)
    assert isinstance(result, dict)
    return result


def documented_options() -> dict[str, str]:
    """``option -> default cell`` from the options table in docs/server.md."""
    found: dict[str, str] = {}
    section = DOC.read_text().split("### Options", 1)[1].split("\n#", 1)[0]
    for line in section.splitlines():
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
        if len(cells) != 3 or not cells[0].startswith("`"):
            continue
        for name in re.findall(r"`([A-Za-z.]+)`", cells[0]):
            found[name] = cells[1]
    return found


def nix_literal(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, dict) and not value:
        return "{ }"
    return json.dumps(value)


def test_the_docs_give_every_option_with_its_default() -> None:
    defaults = module_defaults()
    documented = documented_options()
    assert set(documented) == set(defaults) | {"package", "repository"}
    assert documented["repository"] == "required"
    for name, value in defaults.items():
        assert documented[name] == f"`{nix_literal(value)}`", name


def test_the_defaults_are_the_servers() -> None:
    defaults = module_defaults()
    snippet = sshd_snippet(Layout(Path("/srv")), "git")
    assert f"MaxStartups {defaults['sshd.maxStartups']}\n" in snippet
    assert f"LoginGraceTime {defaults['sshd.loginGraceTime']}\n" in snippet
    # null: the server's own per-CPU defaults (server.yaml without the key).
    assert defaults["maxPushes"] is None and defaults["pushQueue"] is None


# -- server.yaml ------------------------------------------------------------------------------


def render(cfg: dict[str, Any]) -> ServerConfig:
    cfg = {
        "command": "/nix/store/x-nixos-gitops/bin/gitops",
        "repository": "ssh://git@forge.example.org/infra/fleet.git",
        "mirror": True,
        "admins": {},
        "maxPushes": None,
        "pushQueue": None,
        **cfg,
    }
    expr = (
        f"import {nix_file(NIXOS / 'server-config.nix')} "
        f"{{ cfg = builtins.fromJSON {json.dumps(json.dumps(cfg))}; }}"
    )
    text = nix_eval(expr)
    assert isinstance(text, str)
    return ServerConfig.parse(text, "the module's server.yaml")


def test_a_mirrored_main_renders_to_what_the_server_reads() -> None:
    config = render({})
    assert config == ServerConfig(
        command=("/nix/store/x-nixos-gitops/bin/gitops",),
        main=MainPolicy.MIRROR,
        upstream="ssh://git@forge.example.org/infra/fleet.git",
    )


def test_admins_and_limits_render_to_what_the_server_reads(tmp_path: Path) -> None:
    alice = keys.new_keypair(tmp_path / "alice").openssh()
    config = render(
        {"mirror": False, "admins": {"alice@example.org": alice}, "maxPushes": 6, "pushQueue": 0}
    )
    assert config.main is MainPolicy.SIGNED and config.upstream is None
    assert [(a.principal, a.key.openssh()) for a in config.admins] == [("alice@example.org", alice)]
    assert (config.max_pushes, config.push_queue) == (6, 0)


# -- sshd --------------------------------------------------------------------------------------


def directives(text: str) -> list[tuple[str, str]]:
    lines = [line.strip() for line in text.splitlines()]
    return [
        (line.split(None, 1)[0], line.split(None, 1)[1])
        for line in lines
        if line and not line.startswith("#")
    ]


def test_sshd_settings_are_the_snippet_sync_writes() -> None:
    rendered = nix_eval(
        f'import {nix_file(NIXOS / "server-sshd.nix")} {{ user = "git"; '
        f'authorizedKeysFile = "/var/lib/gitops-server/authorized_keys"; '
        f'maxStartups = "1000:30:2000"; loginGraceTime = 60; }}'
    )
    from_module = [(key, str(value)) for key, value in sorted(rendered["settings"].items())]
    from_module += directives(rendered["matchBlock"])
    snippet = sshd_snippet(Layout(Path("/var/lib/gitops-server")), "git")
    assert sorted(from_module) == sorted(directives(snippet))


# -- server-sync.sh ----------------------------------------------------------------------------


def run_sync_script(
    action: str, directory: Path, repository: Path, config: Path
) -> subprocess.CompletedProcess[str]:
    bin_dir = Path(sys.executable).parent
    command = f"env PYTHONPATH={REPO} {sys.executable} -m gitops"
    wrapper = directory.parent / "bin"
    wrapper.mkdir(exist_ok=True)
    # `gitops` on PATH, as the package provides it on the unit's PATH.
    (wrapper / "gitops").write_text(f'#!/bin/sh\nexec {command} "$@"\n')
    (wrapper / "gitops").chmod(0o755)
    env = {
        **os.environ,
        "PATH": f"{wrapper}{os.pathsep}{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "GITOPS_SERVER_DIR": str(directory),
        "GITOPS_SERVER_REPOSITORY": str(repository),
        "GITOPS_SERVER_CONFIG": str(config),
        "GITOPS_SERVER_COMMAND": command,
        "GITOPS_SERVER_MIRROR": "1",
    }
    return subprocess.run(
        ["bash", str(NIXOS / "server-sync.sh"), action],
        check=False,
        capture_output=True,
        text=True,
        env=env,
    )


def test_the_units_create_the_server_and_follow_the_forges_main(tmp_path: Path) -> None:
    demo = published_demo(tmp_path / "demo", {"web-1": ["server"], "db-1": ["server"]})
    forge = demo.server
    directory = tmp_path / "srv"
    config = tmp_path / "server.yaml"
    config.write_text(
        json.dumps({"command": ["/opt/gitops"], "main": "mirror", "upstream": str(forge)})
    )

    setup = run_sync_script("setup", directory, forge, config)
    assert setup.returncode == 0, setup.stderr
    layout = Layout(directory)
    assert yaml.safe_load(layout.config_file.read_text())["command"] == ["/opt/gitops"]
    assert "/opt/gitops server serve" in layout.authorized_keys.read_text()  # the module's
    assert sorted(p.name for p in layout.hosts_dir.iterdir()) == ["db-1.git", "web-1.git"]

    again = run_sync_script("setup", directory, forge, config)  # the next boot
    assert again.returncode == 0, again.stderr
    idle = run_sync_script("poll", directory, forge, config)
    assert idle.returncode == 0, idle.stderr
    assert idle.stdout == ""  # main did not move: no sync

    # A pull request on the forge adds a host: the next poll syncs, and it gets a repository.
    host = demo.repo_dir / "hosts" / "web-2"
    host.mkdir()
    key = keys.new_keypair(tmp_path / "web-2", "root@web-2")
    (host / "host.yaml").write_text(f"profiles: [server]\nkey: {key.openssh()}\n")
    head = demo.merge_change({}, "Add web-2")
    polled = run_sync_script("poll", directory, forge, config)
    assert polled.returncode == 0, polled.stderr
    assert "added web-2" in polled.stdout
    fleet = pygit2.Repository(str(layout.fleet))
    assert str(fleet.references["refs/heads/main"].target) == head
    assert layout.host_repo("web-2").is_dir()
    assert "--as host:web-2" in layout.authorized_keys.read_text()


def test_a_forge_without_main_fails_the_poll(tmp_path: Path) -> None:
    demo = published_demo(tmp_path / "demo", {"web-1": ["server"]})
    config = tmp_path / "server.yaml"
    config.write_text(
        json.dumps({"command": ["/opt/gitops"], "main": "mirror", "upstream": str(demo.server)})
    )
    setup = run_sync_script("setup", tmp_path / "srv", demo.server, config)
    assert setup.returncode == 0, setup.stderr
    empty = tmp_path / "empty.git"
    git("init", "-q", "--bare", empty, cwd=tmp_path)
    polled = run_sync_script("poll", tmp_path / "srv", empty, config)
    assert polled.returncode == 1
    assert "has no main branch" in polled.stderr
