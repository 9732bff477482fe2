"""Waiting for a trigger without polling (gitops.system.inotify, agent/loop.py): a change
wakes the wait at once, a stop too, and in between the waiting thread sleeps."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from gitops.agent.loop import Wake, Wakeup, wait_for_trigger
from gitops.system import inotify


def switches(tid: int) -> int:
    """Voluntary and involuntary context switches of one thread of this process so far."""
    counts = 0
    with open(f"/proc/self/task/{tid}/status", encoding="ascii") as status:
        for line in status:
            if line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                counts += int(line.split()[1])
    return counts


def in_thread(work: Callable[[], Wakeup]) -> tuple[threading.Thread, list[Wakeup], list[int]]:
    result: list[Wakeup] = []
    tid: list[int] = []

    def body() -> None:
        tid.append(threading.get_native_id())
        result.append(work())

    thread = threading.Thread(target=body)
    thread.start()
    return thread, result, tid


def test_a_change_to_the_trigger_file_wakes_the_wait(tmp_path: Path) -> None:
    trigger = tmp_path / "trigger"
    trigger.touch()
    stop = threading.Event()
    started = time.monotonic()
    thread, result, _ = in_thread(lambda: wait_for_trigger([trigger], 60, stop))
    time.sleep(0.3)  # the watch is set up
    trigger.write_text("1\n")
    thread.join(10)
    assert not thread.is_alive()
    assert result[0].why == Wake.TRIGGER and result[0].detail == "trigger"
    assert time.monotonic() - started < 10, "at once, not at the 60 s timer"


def test_a_new_subdirectory_is_watched_too(tmp_path: Path) -> None:
    mirror = tmp_path / "mirror.git"
    mirror.mkdir()
    stop = threading.Event()
    watcher = inotify.Watcher()
    try:
        watcher.add(mirror)
        (mirror / "refs" / "heads").mkdir(parents=True)
        assert watcher.read(), "the new directory is an event"
        (mirror / "refs" / "heads" / "deploy").write_text("x")
        changed = watcher.read()
        assert mirror / "refs" / "heads" / "deploy" in changed
    finally:
        watcher.close()
    assert not stop.is_set()


def test_stop_wakes_the_wait(tmp_path: Path) -> None:
    trigger = tmp_path / "trigger"
    trigger.touch()
    stop = threading.Event()
    thread, result, _ = in_thread(lambda: wait_for_trigger([trigger], 60, stop))
    time.sleep(0.3)
    stop.set()
    thread.join(10)
    assert not thread.is_alive() and result[0].why == Wake.STOPPED


def test_the_timer_ends_the_wait(tmp_path: Path) -> None:
    trigger = tmp_path / "trigger"
    trigger.touch()
    started = time.monotonic()
    assert wait_for_trigger([trigger], 0.5, threading.Event()).why == Wake.TIMER
    assert 0.4 < time.monotonic() - started < 5


@pytest.mark.skipif(not os.path.isdir("/proc/self/task"), reason="needs Linux /proc")
def test_an_idle_wait_sleeps(tmp_path: Path) -> None:
    """Two seconds with nothing to do: the waiting thread is woken a handful of times at
    most (watchfiles woke it 20 times a second)."""
    trigger = tmp_path / "trigger"
    trigger.touch()
    stop = threading.Event()
    thread, result, tid = in_thread(lambda: wait_for_trigger([trigger], 2.0, stop))
    while not tid:
        time.sleep(0.01)
    before = switches(tid[0])
    time.sleep(1.5)
    during = switches(tid[0]) - before
    thread.join(10)
    assert result[0].why == Wake.TIMER
    # A loaded machine adds a few (signals, GC); watchfiles made about 30.
    assert during <= 8, f"{during} context switches in 1.5 s of waiting"
