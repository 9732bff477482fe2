"""The one place that runs subprocesses (nix, git transport, systemctl, ssh-keygen in tests).

Every call states ``check=``, is logged at debug level, decodes text the same way,
and turns a missing program or a failure into a :class:`GitopsError` whose text is
the user's message.

Each command runs in its own process group, so that a time limit (or Ctrl-C) stops the
whole tree it started, not only the first process: a ``nix build`` that never finishes
is stopped with its builders. Long commands (``nix build``, activation) are streamed
line by line, keeping only a bounded tail for the report.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import os
import selectors
import shlex
import signal
import subprocess
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, NoReturn

from gitops.errors import GitopsError

log = logging.getLogger(__name__)

# How many lines of a failed command's stderr go into the error message.
STDERR_TAIL_LINES = 20
# After SIGTERM, how long a timed-out command's process group gets before SIGKILL.
KILL_GRACE = 5.0
# A streamed line longer than this is cut (in the tail), and so is captured stdout.
MAX_LINE = 4096
MAX_STDOUT = 1 << 20

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


class TimedOutError(GitopsError):
    """A command ran longer than its time limit; its process group was stopped."""

    def __init__(self, argv: Sequence[str], timeout: float, tail: tuple[str, ...] = ()) -> None:
        super().__init__(
            f"{argv[0]}: timed out after {format_seconds(timeout)}: {shlex.join(argv)}"
        )
        self.timeout = timeout
        self.tail = tail  # the last lines it printed (streamed commands)


def format_seconds(seconds: float) -> str:
    """``90s``, ``15m``, ``2h``: a time limit as a person reads it."""
    whole = int(seconds)
    if whole != seconds or whole < 60:
        return f"{seconds:g}s"
    for unit, size in (("h", 3600), ("m", 60)):
        if whole % size == 0:
            return f"{whole // size}{unit}"
    return f"{whole}s"


@contextlib.contextmanager
def _started(argv: list[str], **kwargs: object) -> Iterator[subprocess.Popen[bytes]]:
    """Popen in a new process group; stopped with its group if the caller does not finish."""
    try:
        proc = subprocess.Popen(argv, start_new_session=True, **kwargs)  # type: ignore[call-overload]
    except FileNotFoundError as err:
        raise GitopsError(f"{argv[0]}: command not found; install it or put it on PATH") from err
    except PermissionError as err:
        raise GitopsError(f"{argv[0]}: permission denied; is it executable?") from err
    with proc:
        try:
            yield proc
        except BaseException:
            _stop_group(proc)
            raise


def _stop_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM to the process group (nix then stops its builders), then SIGKILL to
    whatever is left of it once the first process is gone or KILL_GRACE has passed."""
    _signal_group(proc, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(KILL_GRACE)
    _signal_group(proc, signal.SIGKILL)
    proc.wait()


def _signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


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
    log.debug("$ %s%s", _describe_env(env), shlex.join(argv))
    pipe = subprocess.PIPE if capture else None
    with _started(
        argv,
        env={**os.environ, **env} if env is not None else None,
        cwd=cwd,
        stdin=subprocess.PIPE if input is not None else None,
        stdout=pipe,
        stderr=pipe,
    ) as proc:
        try:
            out, err = proc.communicate(
                input.encode("utf-8", "surrogateescape") if input is not None else None,
                timeout=timeout,
            )
        except subprocess.TimeoutExpired:
            raise TimedOutError(argv, timeout or 0) from None  # _started stops the group
    result = subprocess.CompletedProcess(
        argv, proc.returncode, _decode(out) if capture else None, _decode(err) if capture else None
    )
    if check and result.returncode != 0:
        detail = tail(result.stderr or "") if capture else ""
        raise GitopsError(
            f"{argv[0]} failed (exit {result.returncode}): {shlex.join(argv)}"
            + (f"\n{detail}" if detail else "")
        )
    return result


def _decode(data: bytes | None) -> str:
    return (data or b"").decode("utf-8", "surrogateescape")


@dataclass(frozen=True)
class Streamed:
    """A streamed command's exit code, its stdout, and the last lines of its stderr."""

    returncode: int
    stdout: str
    tail: tuple[str, ...]


def stream(
    args: Sequence[str | Path],
    *,
    on_line: Callable[[str], None],
    env: Mapping[str, str] | None = None,
    timeout: float | None = None,
    tail_lines: int = STDERR_TAIL_LINES,
    merge_stdout: bool = False,
) -> Streamed:
    """Run ``args``, handing each stderr line to ``on_line`` as it comes (the journal sees
    a long build as it happens) and keeping only the last ``tail_lines`` of it.

    ``merge_stdout`` treats stdout as log lines too (activation scripts print progress on
    both). A command past ``timeout`` seconds is stopped with its process group and
    raises :class:`TimedOutError`. The caller checks the exit code.
    """
    argv = [str(a) for a in args]
    log.debug("$ %s%s", _describe_env(env), shlex.join(argv))
    deadline = None if timeout is None else time.monotonic() + timeout
    with _started(
        argv,
        env={**os.environ, **env} if env is not None else None,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT if merge_stdout else subprocess.PIPE,
    ) as proc:
        lines = _Lines(on_line, tail_lines)
        pipes = {proc.stdout: lines.feed if merge_stdout else None}
        if not merge_stdout:
            pipes[proc.stderr] = lines.feed
        try:
            stdout = _pump(pipes, deadline)
            proc.wait(_remaining(deadline))
        except subprocess.TimeoutExpired:
            lines.flush()
            raise TimedOutError(argv, timeout or 0, tuple(lines.tail)) from None
        lines.flush()
    return Streamed(proc.returncode, _decode(stdout), tuple(lines.tail))


def _remaining(deadline: float | None) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise subprocess.TimeoutExpired("", 0)
    return left


def _pump(
    pipes: Mapping[IO[bytes] | None, Callable[[bytes], None] | None], deadline: float | None
) -> bytes:
    """Read every pipe until it closes: chunks go to their feeder, or (None) are captured."""
    captured = bytearray()
    with selectors.DefaultSelector() as selector:
        for pipe, feed in pipes.items():
            if pipe is not None:
                selector.register(pipe, selectors.EVENT_READ, feed)
        while selector.get_map():
            for key, _ in selector.select(_remaining(deadline)):
                chunk = os.read(key.fd, 65536)
                if not chunk:
                    selector.unregister(key.fileobj)
                elif key.data is not None:
                    key.data(chunk)
                elif len(captured) < MAX_STDOUT:
                    captured += chunk[: MAX_STDOUT - len(captured)]
    return bytes(captured)


class _Lines:
    """Splits a byte stream into lines for ``on_line``, keeping a bounded tail."""

    def __init__(self, on_line: Callable[[str], None], keep: int) -> None:
        self.on_line = on_line
        self.tail: collections.deque[str] = collections.deque(maxlen=keep)
        self.partial = b""

    def feed(self, chunk: bytes) -> None:
        *complete, self.partial = (self.partial + chunk).split(b"\n")
        if len(self.partial) > MAX_LINE:  # a "line" with no end must not grow without bound
            complete.append(self.partial)
            self.partial = b""
        for line in complete:
            self._line(line)

    def flush(self) -> None:
        if self.partial:
            self._line(self.partial)
            self.partial = b""

    def _line(self, raw: bytes) -> None:
        text = _decode(raw).rstrip("\r")
        self.on_line(text)
        self.tail.append(text[:MAX_LINE])


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
