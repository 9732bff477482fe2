"""``gitops agent run``: a cycle on a timer (with jitter), on request, or on a change.

Between cycles it sleeps on inotify (gitops.system.inotify) until the trigger file
(``gitops agent trigger``, the local socket: see gitops.agent.trigger) or a configured
``watch`` path (a local mirror a central server pushes to) changes, so a request is served
at once instead of at the next poll, and an idle agent wakes only for its timer.
"""

from __future__ import annotations

import errno
import logging
import os
import random
import signal
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from types import FrameType

import pygit2
from typing_extensions import override

from gitops.agent.config import AgentConfig
from gitops.agent.cycle import Cycle, CycleResult
from gitops.errors import GitopsError
from gitops.system import inotify

log = logging.getLogger(__name__)


def run_cycle(
    config: AgentConfig, *, force_report: bool = False, retry: bool = False
) -> CycleResult:
    """One cycle, with the errors a host can cause (not root, a read-only or full state
    directory) said in one line instead of a traceback."""
    check_can_run(config)
    try:
        return Cycle(config, force_report=force_report, retry=retry).run()
    except OSError as err:
        raise GitopsError(describe_os_error(err, config)) from err
    except pygit2.GitError as err:  # libgit2 reports a full or read-only disk as text only
        if _errno(err) is None:
            raise
        raise GitopsError(describe_os_error(OSError(_errno(err), str(err)), config)) from err


def check_can_run(config: AgentConfig) -> None:
    """Root, or (tests, a stand-in system) a user who may write the agent's paths."""
    if os.geteuid() == 0:
        return
    for path in (config.state_dir, config.system_profile.parent):
        # The nearest ancestor this user can see (a 0700 directory hides what is below).
        existing = next((p for p in (path, *path.parents) if os.access(p, os.F_OK)), Path("/"))
        if not os.access(existing, os.W_OK):
            raise GitopsError(
                "gitops agent must run as root (the agent manages the system profile): "
                f"{existing} is not writable by this user; run it with sudo, or let the "
                "gitops-agent service run it"
            )


def describe_os_error(err: OSError, config: AgentConfig) -> str:
    """One line: which file, what is wrong, what to do."""
    where = f"{err.filename}: " if err.filename else ""
    state = f"the agent keeps its state in {config.state_dir}"
    match _errno(err):
        case errno.EROFS:
            return f"{where}read-only file system; {state}: make it writable (or set state_dir)"
        case errno.ENOSPC | errno.EDQUOT:
            return f"{where}no space left on the device; {state}: free some space there"
        case errno.EACCES | errno.EPERM if os.geteuid() != 0:
            return (
                f"{where}permission denied: gitops agent must run as root (the agent "
                "manages the system profile); run it with sudo"
            )
        case errno.EACCES | errno.EPERM:
            return f"{where}permission denied; check its owner and mode ({state})"
    return f"{where}{err.strerror or err}"


def _errno(err: OSError | pygit2.GitError) -> int | None:
    """The error number; libgit2's errors (through pygit2) carry it only in their text."""
    if isinstance(err, OSError) and err.errno is not None:
        return err.errno
    text = str(err)
    known = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)
    return next((code for code in known if os.strerror(code) in text), None)


class Wake(StrEnum):
    """Why a cycle starts."""

    START = "start"  # the loop just started
    TIMER = "timer"  # poll_interval (+ jitter) passed
    TRIGGER = "trigger"  # the trigger file or a watched path changed
    STOPPED = "stopped"  # stop was asked for while waiting


@dataclass(frozen=True)
class Wakeup:
    why: Wake
    detail: str = ""  # for a trigger: the names of the paths that changed

    @override
    def __str__(self) -> str:
        return f"{self.why}: {self.detail}" if self.detail else str(self.why)


def wait_for_trigger(paths: list[Path], timeout: float, stop: threading.Event) -> Wakeup:
    """Block until a watched path changes, ``stop`` is set, or ``timeout`` passes: asleep
    meanwhile (inotify, gitops.system.inotify), polling only where inotify is unavailable."""
    existing = [p for p in paths if p.exists()]
    if not existing:
        stop.wait(timeout)
        return Wakeup(Wake.STOPPED if stop.is_set() else Wake.TIMER)
    try:
        changed = inotify.wait_for_change(existing, timeout, stop)
    except inotify.UnavailableError as err:
        log.warning("%s: watching by polling", err)
        return _poll_for_trigger(existing, timeout, stop)
    if changed:
        return Wakeup(Wake.TRIGGER, ", ".join(sorted({p.name for p in changed})))
    return Wakeup(Wake.STOPPED if stop.is_set() else Wake.TIMER)


def _poll_for_trigger(existing: list[Path], timeout: float, stop: threading.Event) -> Wakeup:
    """watchfiles, which polls every 50 ms: only where inotify cannot be used."""
    import watchfiles  # only here: an idle agent does not load it

    deadline = time.monotonic() + timeout
    for changes in watchfiles.watch(
        *existing,
        stop_event=stop,
        rust_timeout=int(max(0.05, min(timeout, 1.0)) * 1000),
        yield_on_timeout=True,
        debounce=200,
        raise_interrupt=False,
    ):
        if changes:
            return Wakeup(Wake.TRIGGER, ", ".join(sorted({Path(p).name for _, p in changes})))
        if stop.is_set() or time.monotonic() >= deadline:
            return Wakeup(Wake.TIMER)
    return Wakeup(Wake.STOPPED)


def run_forever(
    config: AgentConfig,
    *,
    stop: threading.Event | None = None,
    max_cycles: int | None = None,
    on_cycle: Callable[[CycleResult | None, Wakeup], None] | None = None,
) -> int:
    """Cycle until SIGTERM/SIGINT (or ``stop``); a failed cycle is logged, not fatal."""
    stop = stop or threading.Event()

    def _stop(signum: int, _frame: FrameType | None) -> None:
        log.info("received signal %d: stopping after this cycle", signum)
        stop.set()

    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _stop)
        signal.signal(signal.SIGINT, _stop)
    config.state_dir.mkdir(parents=True, exist_ok=True)
    config.trigger_file.touch()
    cycles = 0
    reason = Wakeup(Wake.START)
    while not stop.is_set():
        log.info("cycle (%s)", reason)
        result: CycleResult | None = None
        try:
            # A trigger asks for a check, not for a report: reports follow changes of
            # state and report_interval, so a page reloaded in a loop cannot flood the server.
            result = run_cycle(config)
        except GitopsError as err:
            log.error("cycle failed: %s", err)
        if on_cycle is not None:
            on_cycle(result, reason)
        cycles += 1
        if max_cycles is not None and cycles >= max_cycles:
            break
        delay = config.poll_interval + random.uniform(0, config.poll_jitter)
        reason = wait_for_trigger([config.trigger_file, *config.watch], delay, stop)
    return 0
