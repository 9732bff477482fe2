"""What machine a benchmark ran on, printed at the top of every script's output."""

from __future__ import annotations

import os
import platform
import subprocess
from collections.abc import Sequence
from importlib import metadata
from pathlib import Path


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def describe(tools: Sequence[Sequence[str]] = (), packages: Sequence[str] = ()) -> str:
    """``2 CPUs (AMD EPYC), Python 3.11.7`` and the versions of ``tools`` and ``packages``."""
    parts = [f"{os.cpu_count()} CPUs ({cpu_model()})", f"Python {platform.python_version()}"]
    for command in tools:
        result = subprocess.run(list(command), check=True, capture_output=True, text=True)
        parts.append((result.stdout or result.stderr).strip().splitlines()[0])
    parts += [f"{name} {metadata.version(name)}" for name in packages]
    return ", ".join(parts)
