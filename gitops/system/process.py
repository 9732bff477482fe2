"""The one place that runs subprocesses (nix, git transport, systemctl, ssh-keygen in tests).

Every call states ``check=``, is logged at debug level, decodes text the same way,
and turns a missing program or a failure into a :class:`GitopsError` whose text is
the user's message.
"""

from __future__ import annotations

import logging
import os
import shlex
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NoReturn

from gitops.errors import GitopsError

log = logging.getLogger(__name__)

# How many lines of a failed command's stderr go into the error message.
STDERR_TAIL_LINES = 20

# Environment variables that could leak secrets into debug logs.
_SECRET_ENV_MARKERS = ("TOKEN", "PASSWORD", "SECRET", "KEY")


def _is_secret(name: str, value: str) -> bool:
    upper = name.upper()
    return (
        any(marker in upper for marker in _SECRET_ENV_MARKERS)
        or upper.startswith("GIT_CONFIG_VALUE_")  # git configuration passed by environment
        or "authorization" in value.lower()
    )


def _describe_env(env: Mapping[str, str] | None) -> str:
    if not env:
        return ""
    shown = {
        name: ("***" if _is_secret(name, value) else value)
        for name, value in env.items()
        if name != "PATH"
    }
    return " ".join(f"{k}={shlex.quote(v)}" for k, v in sorted(shown.items())) + " "


def tail(text: str, lines: int = STDERR_TAIL_LINES) -> str:
    return "\n".join(text.rstrip("\n").splitlines()[-lines:])


def run(
    args: Sequence[str | Path],
    *,
    check: bool,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    cwd: Path | None = None,
    timeout: float | None = None,
    capture: bool = True,
) -> subprocess.CompletedProcess[str]:
    """Run ``args``; ``env`` is added to the inherited environment.

    With ``check=True`` a non-zero exit raises GitopsError naming the command and
    the tail of its stderr; callers that expect failures pass ``check=False``.
    """
    argv = [str(a) for a in args]
    full_env = {**os.environ, **env} if env is not None else None
    log.debug("$ %s%s", _describe_env(env), shlex.join(argv))
    try:
        result = subprocess.run(
            argv,
            check=False,
            env=full_env,
            input=input,
            cwd=cwd,
            timeout=timeout,
            text=True,
            errors="surrogateescape",
            stdout=subprocess.PIPE if capture else None,
            stderr=subprocess.PIPE if capture else None,
        )
    except FileNotFoundError as err:
        raise GitopsError(f"{argv[0]}: command not found; install it or put it on PATH") from err
    except subprocess.TimeoutExpired as err:
        raise GitopsError(f"{argv[0]}: timed out after {timeout:g}s: {shlex.join(argv)}") from err
    if check and result.returncode != 0:
        detail = tail(result.stderr or "") if capture else ""
        raise GitopsError(
            f"{argv[0]} failed (exit {result.returncode}): {shlex.join(argv)}"
            + (f"\n{detail}" if detail else "")
        )
    return result


def replace_process(args: Sequence[str | Path], *, env: Mapping[str, str]) -> NoReturn:
    """Replace this process with ``args`` (``execvpe``), whose environment is exactly ``env``.

    For sshd's forced command (``gitops server serve``): once the request is authorized,
    git itself must own stdin and stdout, with no Python process in between.
    """
    argv = [str(a) for a in args]
    log.debug("exec %s%s", _describe_env(env), shlex.join(argv))
    try:
        os.execvpe(argv[0], argv, dict(env))
    except FileNotFoundError as err:
        raise GitopsError(f"{argv[0]}: command not found; install it or put it on PATH") from err
    except OSError as err:
        raise GitopsError(f"{argv[0]}: cannot run it ({err.strerror})") from err
