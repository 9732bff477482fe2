"""Substitute mode: the agent realises exactly the system its verified deploy commit pins,
from a real binary cache (``file://`` and HTTP on loopback), checked by Nix 2.8 against
the keys pinned on the host, and evaluates nothing; every refusal leaves the running
system alone, and only ``mode: auto`` builds locally instead.

The "build host" and the "host" share one Nix store here: each test deletes the built
systems from it (testing.cache.forget) so that the agent must really substitute them.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from gitops.agent.config import AgentConfig, Mode, parse_config
from gitops.agent.cycle import Cycle, CycleResult
from gitops.demo.scenario import DemoFleet, InventoryHost
from gitops.errors import GitopsError
from gitops.protocol import TRAILER_SYSTEM_PATH, Result
from gitops.publish import build as central
from gitops.publish import plan as publishing
from gitops.system import nix
from testing.cache import SigningKey, forget, http_cache, signing_key, valid
from testing.env import needs_nix
from testing.helpers import current_system, remote_reports

pytestmark = [needs_nix, pytest.mark.slow]

HOSTS = {"alpha": ["workstation"], "beta": ["server"]}


@dataclass
class Built:
    demo: DemoFleet
    key: SigningKey
    cache: Path
    systems: dict[str, str]  # host -> pinned store path

    def config(self, host: str, url: str, **changes: Any) -> AgentConfig:
        settings: dict[str, Any] = {
            "mode": Mode.SUBSTITUTE,
            "substituters": (url,),
            "trusted_public_keys": (self.key.public,),
        }
        return replace(self.demo.agent_config(host), **{**settings, **changes})

    def narinfo(self, host: str) -> Path:
        return self.cache / f"{Path(self.systems[host]).name.split('-', 1)[0]}.narinfo"

    def nar(self, host: str) -> Path:
        url = next(
            line.split(": ", 1)[1]
            for line in self.narinfo(host).read_text().splitlines()
            if line.startswith("URL: ")
        )
        return self.cache / url


@pytest.fixture
def built(tmp_path: Path) -> Built:
    """Every host built centrally, signed, copied to a file:// cache, published pinned,
    and gone from the local store."""
    inventory = [InventoryHost(name, tuple(p), {"profiles": p}) for name, p in HOSTS.items()]
    demo = DemoFleet(tmp_path / "demo", inventory, say=lambda _: None)
    demo.root.mkdir()
    demo.create()
    key = signing_key(tmp_path / "nix-key")
    cache = tmp_path / "cache"
    systems_file = tmp_path / "systems.json"
    outcome = central.build(
        central.Request(
            repo=demo.repo_dir,
            source="main",
            hosts=(),
            every_host=False,
            signing_key=key.secret_file,
            cache=f"file://{cache}",
            systems=systems_file,
        )
    )
    assert not outcome.failed
    demo.publish(systems=systems_file)
    systems = {b.host: b.system for b in outcome.built}
    for system in systems.values():
        forget(system)
    return Built(demo, key, cache, systems)


@contextlib.contextmanager
def served(built: Built, kind: str) -> Iterator[str]:
    if kind == "file":
        yield f"file://{built.cache}"
        return
    with http_cache(built.cache) as server:
        yield server.url


def run(config: AgentConfig) -> CycleResult:
    return Cycle(config).run()


def no_builds(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: object, **kwargs: object) -> Path:
        raise AssertionError("substitute mode must not evaluate or build")

    monkeypatch.setattr(nix, "build_flake", refuse)


@pytest.mark.parametrize("kind", ["file", "http"])
def test_substitute_mode_realises_exactly_the_pinned_system(
    built: Built, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_builds(monkeypatch)
    pinned = built.systems["alpha"]
    assert not valid(pinned)
    if kind == "http":
        with http_cache(built.cache) as server:
            result = run(built.config("alpha", server.url))
        assert server.bytes_sent > 0
        assert any(path.endswith(".narinfo") for path in server.requests)
    else:
        result = run(built.config("alpha", f"file://{built.cache}"))
    assert result.result == Result.APPLIED, result.reason
    assert str(current_system(built.demo, "alpha")) == pinned
    (report,) = remote_reports(built.demo, "alpha")
    assert report.system.store_path == pinned
    assert "substitute" in report.durations and "build" not in report.durations


def _refused(built: Built, config: AgentConfig, *words: str) -> CycleResult:
    result = run(config)
    assert result.result == Result.SUBSTITUTE_FAILED, result.reason
    for word in words:
        assert word in result.reason, result.reason
    assert current_system(built.demo, config.host) is None, "the running system is untouched"
    assert not valid(built.systems[config.host])
    (report,) = remote_reports(built.demo, config.host)
    assert report.result == Result.SUBSTITUTE_FAILED and report.deploy_applied is None
    return result


@pytest.mark.parametrize("kind", ["file", "http"])
def test_a_path_signed_by_an_unknown_key_is_refused(
    built: Built, kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    no_builds(monkeypatch)
    other = signing_key(tmp_path / "other", "someone-else-1")
    with served(built, kind) as url:
        config = built.config("alpha", url, trusted_public_keys=(other.public,))
        _refused(built, config, "not signed by any of the keys")


@pytest.mark.parametrize("kind", ["file", "http"])
def test_a_cache_serving_another_path_under_the_pinned_name_is_refused(
    built: Built, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """beta's narinfo (signed, by the trusted key) served as alpha's."""
    no_builds(monkeypatch)
    shutil.copyfile(built.narinfo("beta"), built.narinfo("alpha"))
    with served(built, kind) as url:
        _refused(built, built.config("alpha", url), "the caches did not give")


@pytest.mark.parametrize("kind", ["file", "http"])
def test_a_cache_serving_another_nar_is_refused(
    built: Built, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """alpha's signed narinfo, but beta's archive behind it."""
    no_builds(monkeypatch)
    alpha_nar = built.nar("alpha")
    alpha_nar.unlink()
    shutil.copyfile(built.nar("beta"), alpha_nar)
    with served(built, kind) as url:
        _refused(built, built.config("alpha", url), "the caches did not give")


def test_an_empty_cache_is_refused(built: Built, tmp_path: Path) -> None:
    empty = tmp_path / "empty-cache"
    empty.mkdir()
    (empty / "nix-cache-info").write_text("StoreDir: /nix/store\n")
    _refused(built, built.config("alpha", f"file://{empty}"), "no configured cache has it")


def test_a_commit_without_a_pin_or_with_a_bad_one_is_refused(built: Built) -> None:
    demo = built.demo
    repo = demo.repository()
    assert demo.publisher_key is not None
    # A new commit for beta that pins nothing, then one for alpha that pins a non-path.
    demo.merge_change({"hosts/beta/notes.nix": "{ }\n"}, "beta: notes")
    demo.merge_change({"hosts/alpha/notes.nix": "{ }\n"}, "alpha: notes")
    plan = publishing.make_plan(repo, "main")
    published = publishing.write_commits(
        repo, plan, demo.publisher_key, systems={"alpha": "/tmp/../nix/store/evil"}
    )
    assert set(published.commits) == {"alpha", "beta"}
    from gitops.system import transport

    refspecs = [f"refs/heads/deploy/{h}:refs/heads/deploy/{h}" for h in published.commits]
    assert transport.push(Path(repo.path), str(demo.server), refspecs, atomic=True).ok
    url = f"file://{built.cache}"
    _refused(built, built.config("beta", url), f"names no system ({TRAILER_SYSTEM_PATH})")
    _refused(built, built.config("alpha", url), "which is not a store path")


def test_auto_mode_builds_locally_when_the_cache_refuses(built: Built, tmp_path: Path) -> None:
    other = signing_key(tmp_path / "other", "someone-else-1")
    config = built.config(
        "alpha", f"file://{built.cache}", mode=Mode.AUTO, trusted_public_keys=(other.public,)
    )
    result = run(config)
    assert result.result == Result.APPLIED, result.reason
    assert "not signed by any of the keys" in result.reason
    assert "built here instead" in result.reason
    running = current_system(built.demo, "alpha")
    assert running is not None and str(running) != built.systems["alpha"]
    assert not valid(built.systems["alpha"]), "the refused path was not admitted"


def test_build_mode_ignores_the_pin(built: Built) -> None:
    config = replace(built.config("beta", f"file://{built.cache}"), mode=Mode.BUILD)
    result = run(config)
    assert result.result == Result.APPLIED, result.reason
    assert not valid(built.systems["beta"])
    (report,) = remote_reports(built.demo, "beta")
    assert "build" in report.durations and "substitute" not in report.durations


def test_the_configuration_says_what_is_wrong() -> None:
    base = "host: web-1\nremote: /srv/fleet.git\ntrusted_publishers: /etc/gitops/p\n"
    config = parse_config(
        base
        + "mode: substitute\nsubstituters: [https://cache.example.org]\n"
        + "trusted_public_keys: ['fleet-1:"
        + "A" * 43
        + "=']\n",
        "agent.yaml",
    )
    assert config.mode is Mode.SUBSTITUTE and config.substituters == ("https://cache.example.org",)
    assert parse_config(base, "agent.yaml").mode is Mode.AUTO
    with pytest.raises(GitopsError) as err:
        parse_config(base + "mode: substitute\n", "agent.yaml")
    assert "mode: substitute needs substituters and trusted_public_keys" in str(err.value)
    with pytest.raises(GitopsError) as err:
        parse_config(
            base + "mode: fetch\nsubstituters: [cache]\ntrusted_public_keys: [nokey]\n",
            "agent.yaml",
        )
    text = str(err.value)
    assert "mode: 'fetch' is not build, substitute or auto" in text
    assert "substituters[0]: 'cache' is not a binary cache URL" in text
    assert "trusted_public_keys[0]: 'nokey' is not a Nix public key" in text
