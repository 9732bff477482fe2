"""The output directory: pages written into a fresh directory beside ``--out`` (hard-linked
from the cache's page store when unchanged), which then replaces ``--out`` in one step.

A reader sees the old site or the new one, never a mix; a killed build leaves the old site
and a leftover directory the next build sweeps.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

from gitops.errors import GitopsError
from gitops.sitegen.cache import digest_bytes
from gitops.sitegen.derived import PageFile

MARKER = ".gitops-site"  # in every site we build: only such a directory is replaced


def check_out(out: Path) -> None:
    """Refuse an ``--out`` that is not ours to replace."""
    if out.exists() and not out.is_dir():
        raise GitopsError(f"{out}: exists and is not a directory; choose a directory for --out")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).exists():
        raise GitopsError(
            f"{out}: not empty and not a site built by gitops (no {MARKER} file); "
            "refusing to replace it: choose a new or empty directory"
        )


def new_tmp(out: Path) -> Path:
    """The directory this build writes into: ``.<out>.tmp-<pid>`` beside ``out``."""
    tmp = out.with_name(f".{out.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def sweep_leftovers(out: Path) -> None:
    """Delete what killed builds left beside ``out``: their ``.<out>.tmp-<pid>`` directories
    (never swapped in) and ``.<out>.old-<pid>`` ones (swapped out, not yet deleted). Call
    only while holding the cache's lock: then no other build of this site is running."""
    # "[to][ml][pd]" matches "tmp" and "old" (and, harmlessly, "tld", "omp"...): fnmatch has
    # no alternation. Only names beginning with ".<out>." are touched.
    for leftover in out.parent.glob(f".{out.name}.[to][ml][pd]-*"):
        shutil.rmtree(leftover, ignore_errors=True)


class PageStore:
    """Writes pages into the new site, keeping a hard link of each in the cache's page
    store (files named by content digest) so that the next build can link, not render."""

    def __init__(self, tmp: Path, store: Path | None) -> None:
        self.tmp = tmp
        self.store = store

    def write(self, path: str, key: str, data: bytes) -> PageFile:
        digest = digest_bytes(data)
        target = f"{self.tmp}/{path}"
        _write_new(target, data)
        if self.store is not None:
            with contextlib.suppress(FileExistsError, OSError):
                os.link(target, f"{self.store}/{digest}")
        return PageFile(path, key, digest)

    def link(
        self, paths: tuple[str, ...], key: str, old: Mapping[str, PageFile]
    ) -> tuple[PageFile, ...] | None:
        """Hard-link ``paths`` from the page store when the previous build wrote them for
        the same ``key``; None when any of them must be rendered again."""
        if self.store is None:
            return None
        found = []
        for path in paths:
            page = old.get(path)
            if page is None or page.key != key:
                return None
            found.append(page)
        tmp, store = str(self.tmp), str(self.store)
        for page in found:
            try:
                os.link(f"{store}/{page.digest}", f"{tmp}/{page.path}")
            except FileExistsError:
                continue
            except OSError:
                return None
        return tuple(found)


_NEW_FILE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC


def _write_new(path: str, data: bytes) -> None:
    """Create ``path`` holding ``data``: one open, one write, one close (the fresh site
    directory rarely has the file; when it does, it may be a hard link into the page
    store, which is replaced, never written through)."""
    try:
        handle = os.open(path, _NEW_FILE, 0o666)
    except FileExistsError:
        Path(path).unlink()
        handle = os.open(path, _NEW_FILE, 0o666)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(handle, view) :]
    finally:
        os.close(handle)


def swap_into(tmp: Path, out: Path, *, background: bool = False) -> None:
    """Make ``tmp`` the new ``out``: a reader sees the old site or the new, never a mix.
    With ``background``, the old site is deleted by a detached child process (a killed
    one leaves a directory the next build sweeps)."""
    if not out.exists():
        tmp.rename(out)
        return
    if _renameat2_exchange(tmp, out):
        old = tmp
    else:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        out.rename(old)
        tmp.rename(out)
    if background and _delete_in_child(old):
        return
    shutil.rmtree(old, ignore_errors=True)


def _renameat2_exchange(a: Path, b: Path) -> bool:
    """Swap two directories in one step (Linux renameat2 RENAME_EXCHANGE)."""
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        function = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    result = function(at_fdcwd, bytes(a), at_fdcwd, bytes(b), rename_exchange)
    return bool(result == 0)


def _delete_in_child(path: Path) -> bool:
    try:
        pid = os.fork()
    except OSError:
        return False
    if pid != 0:
        return True
    try:  # the child: detach from the caller's pipes, delete, leave without cleanup
        os.setsid()
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        shutil.rmtree(path, ignore_errors=True)
    finally:
        os._exit(0)


def docs_link(settings_docs_url: str, out: Path) -> str:
    """Where the "Handbook" link goes: ``site.docs_url``, else a handbook built beside the
    site's directory, else nowhere."""
    if settings_docs_url:
        return settings_docs_url
    handbook = out.parent / "handbook" / "index.html"
    return "../handbook/index.html" if handbook.is_file() else ""
