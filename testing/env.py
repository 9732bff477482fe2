"""The hermetic environment every test runs in, and markers for what a test needs."""

from __future__ import annotations

import os
import shutil

import pytest

NIX_CONFIG = "\n".join(
    [
        "build-users-group =",
        "sandbox = false",
        "substituters =",
        "experimental-features = nix-command flakes",
    ]
)

HERMETIC_GIT_ENV = {
    "GIT_CONFIG_NOSYSTEM": "1",
    "GIT_AUTHOR_NAME": "Test Author",
    "GIT_AUTHOR_EMAIL": "author@example.org",
    "GIT_COMMITTER_NAME": "Test Committer",
    "GIT_COMMITTER_EMAIL": "committer@example.org",
    "GIT_TERMINAL_PROMPT": "0",
    "GIT_ALLOW_PROTOCOL": "file:ssh:http:https:git",
}


def have(program: str) -> bool:
    return shutil.which(program) is not None


needs_nix = pytest.mark.skipif(
    not have("nix") and not os.environ.get("CI"), reason="nix is not installed (CI installs it)"
)
