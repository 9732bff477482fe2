"""Memory-backed file systems: where plaintext secrets may be written for a moment."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Final

from gitops.errors import GitopsError

MEMORY_FILE_SYSTEMS: Final = frozenset({"tmpfs", "ramfs"})
MOUNTS: Final = Path("/proc/self/mounts")


def file_system_of(path: Path) -> str | None:
    """The type of the file system ``path`` is on (its longest mount point), or None."""
    try:
        mounts = MOUNTS.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    target = str(path.resolve())
    best, kind = "", None
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) < 3:
            continue
        point = fields[1].replace("\\040", " ")
        inside = target == point or target.startswith(point.rstrip("/") + "/")
        if inside and len(point) >= len(best):
            best, kind = point, fields[2]
    return kind


def in_memory(path: Path) -> bool:
    return file_system_of(path) in MEMORY_FILE_SYSTEMS


def memory_dir(environ: Mapping[str, str] | None = None) -> Path:
    """A directory on a tmpfs for a short-lived plaintext file: $XDG_RUNTIME_DIR, else
    /dev/shm. Refuses when neither is memory-backed."""
    env = os.environ if environ is None else environ
    candidates = [Path(env["XDG_RUNTIME_DIR"])] if env.get("XDG_RUNTIME_DIR") else []
    candidates.append(Path("/dev/shm"))
    for candidate in candidates:
        if candidate.is_dir() and in_memory(candidate):
            return candidate
    raise GitopsError(
        "no tmpfs to edit the secret in ($XDG_RUNTIME_DIR and /dev/shm are missing or on "
        "disk): a plaintext copy must never reach a disk; mount a tmpfs or set XDG_RUNTIME_DIR"
    )


@contextlib.contextmanager
def private_dir(environ: Mapping[str, str] | None = None) -> Iterator[Path]:
    """A 0700 directory on a tmpfs, emptied (files overwritten with zeros) and removed after."""
    directory = Path(tempfile.mkdtemp(prefix="gitops-secret-", dir=memory_dir(environ)))
    try:
        yield directory
    finally:
        for file in directory.iterdir():
            with contextlib.suppress(OSError):
                if file.is_file() and not file.is_symlink():
                    size = file.stat().st_size
                    with file.open("r+b") as handle:
                        handle.write(b"\0" * size)
        shutil.rmtree(directory, ignore_errors=True)
