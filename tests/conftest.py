"""Shared test set-up: a hermetic git and nix environment, keys, and guards against
writing to the real system (the system profile, /var/lib, /etc)."""

from __future__ import annotations

from pathlib import Path

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.agent import config as agent_config
from testing.env import HERMETIC_GIT_ENV, NIX_CONFIG


@pytest.fixture(autouse=True)
def _hermetic_env(
    tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path_factory.mktemp("home")
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("XDG_CACHE_HOME", str(home / ".cache"))
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", str(home / ".gitconfig"))
    for name, value in HERMETIC_GIT_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("NIX_CONFIG", NIX_CONFIG)
    # pygit2 reads the global config from its own search path, not from $HOME at call time.
    for level in (
        pygit2.enums.ConfigLevel.GLOBAL,
        pygit2.enums.ConfigLevel.XDG,
        pygit2.enums.ConfigLevel.SYSTEM,
    ):
        pygit2.settings.search_path[level] = str(home)


@pytest.fixture(autouse=True)
def _no_real_system_state(monkeypatch: pytest.MonkeyPatch) -> None:
    """A test that forgets to choose a temporary state dir or profile fails loudly."""
    forbidden = Path("/nonexistent/test-forgot-to-choose-a-path")
    monkeypatch.setattr(agent_config, "DEFAULT_STATE_DIR", forbidden)
    monkeypatch.setattr(agent_config, "DEFAULT_PROFILE", forbidden / "profile")
    monkeypatch.setattr(agent_config, "DEFAULT_SECRETS_DIR", forbidden / "secrets")


@pytest.fixture
def ed25519_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()
