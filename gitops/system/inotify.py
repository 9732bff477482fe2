"""Wait for a change to some files or directory trees, asleep until there is one.

Linux inotify through ctypes: the waiting thread blocks in ``poll()`` on the inotify
descriptor until the kernel has an event, the deadline passes, or a stop is asked for. No
timer runs meanwhile (watchfiles, used before, returned to its loop every 50 ms: 20
wakeups a second for an agent that had nothing to do; bench/idle_agent.py).

A stop is a :class:`threading.Event`; to wake the poll when it is set, a helper thread
waits on the event (a futex: asleep too) and writes one byte to a pipe the poll also
watches. Directories are watched with their subdirectories (inotify is not recursive: one
watch per directory, new ones added as they appear). After the first event, events are
gathered until none came for ``settle`` seconds (a git push writes objects, then the
ref), at most ``settle_max``.

:class:`UnavailableError` when inotify cannot be used (not Linux, no watch left): the caller
falls back to polling.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import select
import struct
import threading
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from gitops.errors import GitopsError

IN_MODIFY = 0x002
IN_ATTRIB = 0x004
IN_CLOSE_WRITE = 0x008
IN_MOVED_FROM = 0x040
IN_MOVED_TO = 0x080
IN_CREATE = 0x100
IN_DELETE = 0x200
IN_DELETE_SELF = 0x400
IN_MOVE_SELF = 0x800
IN_Q_OVERFLOW = 0x4000
IN_IGNORED = 0x8000
IN_ISDIR = 0x40000000

FILE_EVENTS = IN_MODIFY | IN_ATTRIB | IN_CLOSE_WRITE | IN_DELETE_SELF | IN_MOVE_SELF
DIR_EVENTS = FILE_EVENTS | IN_MOVED_FROM | IN_MOVED_TO | IN_CREATE | IN_DELETE

_EVENT = struct.Struct("iIII")  # wd, mask, cookie, len; then len bytes of name
_READ_SIZE = 64 * 1024


class UnavailableError(GitopsError):
    """inotify cannot be used here; the message says why."""


def _libc() -> ctypes.CDLL:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.inotify_init1.argtypes = [ctypes.c_int]
        libc.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
    except (OSError, AttributeError) as err:
        raise UnavailableError(f"inotify is not available here ({err})") from err
    return libc


class Watcher:
    """An inotify descriptor watching some paths (directories with their subdirectories)."""

    def __init__(self) -> None:
        self._libc = _libc()
        fd = self._libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
        if fd < 0:
            raise UnavailableError(f"inotify_init1: {os.strerror(ctypes.get_errno())}")
        self.fd: int = fd
        self._watched: dict[int, Path] = {}

    def close(self) -> None:
        os.close(self.fd)

    def add(self, path: Path) -> None:
        """Watch ``path``; a directory with everything below it (links not followed)."""
        if path.is_dir() and not path.is_symlink():
            self._add(path, DIR_EVENTS)
            for top, dirs, _ in os.walk(path):
                for name in dirs:
                    child = Path(top) / name
                    if not child.is_symlink():
                        self._add(child, DIR_EVENTS)
        else:
            self._add(path, FILE_EVENTS)

    def _add(self, path: Path, mask: int) -> None:
        wd = self._libc.inotify_add_watch(self.fd, os.fsencode(path), mask)
        if wd < 0:
            code = ctypes.get_errno()
            if code in (errno.ENOENT, errno.ENOTDIR):
                return  # gone meanwhile: its parent's watch saw that
            raise UnavailableError(f"cannot watch {path}: {os.strerror(code)}")
        self._watched[wd] = path

    def read(self) -> list[Path]:
        """The paths of the events waiting (none if there are none); new directories are
        watched from now on."""
        changed: list[Path] = []
        while True:
            try:
                data = os.read(self.fd, _READ_SIZE)
            except BlockingIOError:
                return changed
            changed.extend(self._parse(data))

    def _parse(self, data: bytes) -> Iterator[Path]:
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            raw = data[offset + _EVENT.size : offset + _EVENT.size + length]
            offset += _EVENT.size + length
            if mask & IN_Q_OVERFLOW:
                yield from self._watched.values()  # events were lost: say everything
                continue
            where = self._watched.get(wd)
            if where is None:
                continue
            if mask & IN_IGNORED:
                del self._watched[wd]
                continue
            name = raw.split(b"\0", 1)[0]
            path = where / os.fsdecode(name) if name else where
            if mask & IN_ISDIR and mask & (IN_CREATE | IN_MOVED_TO):
                self.add(path)
            yield path


def wait_for_change(
    paths: Iterable[Path],
    timeout: float,
    stop: threading.Event,
    *,
    settle: float = 0.2,
    settle_max: float = 2.0,
) -> list[Path]:
    """Block until something under ``paths`` changes (the paths that changed), ``stop``
    is set or ``timeout`` seconds pass (an empty list: look at ``stop``)."""
    deadline = time.monotonic() + timeout
    watcher = Watcher()
    try:
        for path in paths:
            watcher.add(path)
        with _stop_pipe(stop, timeout) as stopped:
            poller = select.poll()
            poller.register(watcher.fd, select.POLLIN)
            poller.register(stopped, select.POLLIN)
            changed: list[Path] = []
            first_at: float | None = None
            settled_by: float | None = None
            while not stop.is_set():
                now = time.monotonic()
                until = deadline if settled_by is None else settled_by
                if now >= until:
                    break
                # One wakeup per event or at the deadline: nothing in between.
                ready = poller.poll(max(1, round((until - now) * 1000)))
                if not ready:
                    continue
                fresh = watcher.read()
                if fresh:
                    changed.extend(fresh)
                    now = time.monotonic()
                    first_at = now if first_at is None else first_at
                    settled_by = min(now + settle, first_at + settle_max)
            return _unique(changed)
    finally:
        watcher.close()


@contextlib.contextmanager
def _stop_pipe(stop: threading.Event, timeout: float) -> Iterator[int]:
    """A descriptor that becomes readable when ``stop`` is set within ``timeout``."""
    read_end, write_end = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)

    def ring() -> None:
        try:
            if stop.wait(timeout):
                with contextlib.suppress(OSError):  # the wait ended already
                    os.write(write_end, b"\0")
        finally:
            os.close(write_end)

    # The helper closes its own end when its wait ends (by ``timeout`` at the latest), so
    # its descriptor is never reused under it.
    threading.Thread(target=ring, name="stop-watch", daemon=True).start()
    try:
        yield read_end
    finally:
        os.close(read_end)


def _unique(paths: list[Path]) -> list[Path]:
    return list(dict.fromkeys(paths))
