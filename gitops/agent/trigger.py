"""The local "update my machine now" trigger: one HTTP request on a socket systemd passes.

The NixOS module listens on ``127.0.0.1:51337`` with a socket unit (``Accept=yes``): each
connection starts ``gitops agent trigger --http`` with the connected socket as its stdin.
The request is parsed by http.server's handler, not by hand. A request only asks for a
cycle (it starts the agent's unit, or writes the trigger file ``agent run`` watches);
what gets applied is still only what a publisher signed.

Only the user can pull it, not a web page the user happens to open:

* ``GET /`` shows a small page with a button; it never triggers anything, so an
  ``<img src="http://127.0.0.1:51337/">`` on some web page does nothing. The page may not
  be framed (no clickjacking).
* ``POST /`` triggers when it comes from that page (``Sec-Fetch-Site: same-origin`` and a
  matching ``Origin``; browsers without Fetch Metadata still send ``Origin``) or from a
  script that sends ``X-Gitops-Trigger: 1``, a header no cross-site page can send
  without a CORS preflight, which is never granted. Anything marked cross-site or
  same-site, with a foreign or ``null`` Origin, or a Host that is not this machine's
  loopback name (DNS rebinding), is refused.
* At most one trigger per ``MIN_INTERVAL`` seconds; more are answered 429.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import html
import io
import logging
import os
import socket
import socketserver
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from enum import Enum
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar, cast

from typing_extensions import override

from gitops.errors import GitopsError
from gitops.system import process

log = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds a client may take to send its request
MIN_INTERVAL = 30.0  # seconds between two accepted triggers
SCRIPT_HEADER = "X-Gitops-Trigger"
ACCEPTED = "update requested: the agent will fetch, verify and apply now"
LOOPBACK_NAMES = frozenset({"localhost", "127.0.0.1", "[::1]"})
SECURITY_HEADERS = (
    ("Cache-Control", "no-store"),
    ("X-Content-Type-Options", "nosniff"),
    ("X-Frame-Options", "DENY"),
    (
        "Content-Security-Policy",
        "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; "
        "frame-ancestors 'none'; base-uri 'none'",
    ),
    # Not no-referrer: with it, Chromium sends "Origin: null" on the page's own form.
    ("Referrer-Policy", "same-origin"),
)


# -- asking for a cycle -------------------------------------------------------------------


def request_cycle(
    trigger_file: Path,
    unit: str | None,
    *,
    min_interval: float = 0,
    now: Callable[[], float] = time.time,
) -> float:
    """Ask for a cycle now: note the time in ``trigger_file`` (``agent run`` watches it)
    and, with ``unit``, start that systemd unit. 0 when asked; else, within
    ``min_interval`` of the last request, nothing is done and the seconds to wait."""
    with _locked(trigger_file) as fd:
        moment = now()
        last = _read_stamp(fd)
        if last is not None and 0 <= moment - last < min_interval:
            return min_interval - (moment - last)
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{moment:.3f}\n".encode(), 0)
    if unit:
        process.run(["systemctl", "start", "--no-block", unit], check=True)
    return 0.0


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[int]:
    """The trigger file, open and locked: concurrent requests are judged one at a time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield fd
    finally:
        os.close(fd)


def _read_stamp(fd: int) -> float | None:
    try:
        return float(os.pread(fd, 64, 0).decode().strip())
    except ValueError:
        return None  # empty (only created) or not ours: no request on record


# -- judging a request --------------------------------------------------------------------


class Verdict(Enum):
    PAGE = HTTPStatus.OK  # show the page with the button
    FIRE = HTTPStatus.ACCEPTED  # ask for a cycle
    FORBIDDEN = HTTPStatus.FORBIDDEN
    NOT_FOUND = HTTPStatus.NOT_FOUND
    METHOD = HTTPStatus.METHOD_NOT_ALLOWED


@dataclass(frozen=True)
class Request:
    """What the decision reads from an HTTP request (header values, or None)."""

    method: str
    path: str
    host: str | None
    origin: str | None
    fetch_site: str | None  # Sec-Fetch-Site
    fetch_dest: str | None  # Sec-Fetch-Dest
    script: str | None  # X-Gitops-Trigger


@dataclass(frozen=True)
class Decision:
    verdict: Verdict
    why: str = ""


def judge(request: Request, local_hosts: frozenset[str]) -> Decision:
    """Whether this request may see the page or pull the trigger (see the module's
    docstring); ``local_hosts`` are the Host names this socket answers to."""
    if request.method not in ("GET", "HEAD", "POST"):
        return Decision(Verdict.METHOD, "use POST to ask for an update")
    if request.path.split("?", 1)[0] != "/":
        return Decision(Verdict.NOT_FOUND, "the trigger page is /")
    if request.host is None or _host_name(request.host) not in local_hosts:
        return Decision(Verdict.FORBIDDEN, "only requests to this machine's own address")
    if request.fetch_site not in (None, "same-origin", "none"):
        return Decision(Verdict.FORBIDDEN, f"a {request.fetch_site} request is refused")
    if request.origin is not None and request.origin != f"http://{request.host}":
        return Decision(Verdict.FORBIDDEN, f"a request from {request.origin} is refused")
    if request.fetch_dest in ("iframe", "frame", "embed", "object"):
        return Decision(Verdict.FORBIDDEN, "the trigger cannot be framed")
    if request.method != "POST":
        return Decision(Verdict.PAGE)
    if request.script == "1":
        return Decision(Verdict.FIRE)
    if request.origin is not None:  # a form on the page itself (checked above)
        return Decision(Verdict.FIRE)
    return Decision(
        Verdict.FORBIDDEN, f"use the button on the page, or send the header {SCRIPT_HEADER}: 1"
    )


def _host_name(host: str) -> str:
    """``127.0.0.1:51337`` → ``127.0.0.1``; ``[::1]:51337`` → ``[::1]``."""
    name, colon, port = host.rpartition(":")
    return name.lower() if colon and port.isdigit() and not name.endswith(":") else host.lower()


def local_hosts(sock: socket.socket) -> frozenset[str]:
    """Host names a request to this socket may carry: loopback names and its own address."""
    try:
        address = str(sock.getsockname()[0])
    except (OSError, IndexError, TypeError):
        return LOOPBACK_NAMES
    return LOOPBACK_NAMES | {f"[{address}]" if ":" in address else address}


# -- answering ----------------------------------------------------------------------------

PAGE = """<!doctype html>
<html lang="en">
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Update this machine</title>
<style>
body {{ font: 16px/1.5 system-ui, sans-serif; max-width: 34em; margin: 3em auto; padding: 0 1em; }}
button {{ font-size: 1.1em; padding: .6em 1.4em; }}
.note {{ padding: .6em 1em; background: #eef; border-radius: .3em; }}
</style>
<h1>Update this machine</h1>
<p>Ask the gitops agent to fetch, verify and apply this machine's configuration now.
Only what a publisher signed is ever applied.</p>
{note}<form method="post" action="/"><button type="submit">Update now</button></form>
</html>
"""


class TriggerHandler(BaseHTTPRequestHandler):
    """Answers one request on one connection; ``fired`` says whether it asked for a cycle."""

    timeout: ClassVar[float | None] = TIMEOUT

    def __init__(
        self,
        sock: socket.socket | None,
        fire: Callable[[], float],
        pipes: tuple[io.BufferedIOBase, io.BufferedIOBase] | None = None,
    ) -> None:
        self.fire = fire  # asks for a cycle; 0, or the seconds to wait (rate limit)
        self.fired = False
        self.pipes = pipes  # (in, out) when the connection is a pair of pipes (inetd style)
        self.hosts = local_hosts(sock) if sock is not None else LOOPBACK_NAMES
        # Handling happens in the constructor (socketserver's design); the server object
        # is only a holder, nothing listens on it.
        super().__init__(
            cast(socket.socket, sock),  # None with pipes: setup() then does not read it
            _peer(sock) if sock is not None else ("", 0),
            socketserver.BaseServer(("", 0), BaseHTTPRequestHandler),
        )

    @override
    def setup(self) -> None:
        if self.pipes is None:
            super().setup()
        else:
            self.rfile, self.wfile = self.pipes

    @override
    def finish(self) -> None:
        if self.pipes is None:
            super().finish()
        else:
            self.wfile.flush()

    def do_GET(self) -> None:
        self._handle()

    def do_HEAD(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_OPTIONS(self) -> None:
        self._handle()  # no CORS preflight is ever granted

    def _request(self) -> Request:
        header = self.headers.get
        return Request(
            method=self.command,
            path=self.path,
            host=header("Host"),
            origin=header("Origin"),
            fetch_site=header("Sec-Fetch-Site"),
            fetch_dest=header("Sec-Fetch-Dest"),
            script=header(SCRIPT_HEADER),
        )

    def _handle(self) -> None:
        request = self._request()
        decision = judge(request, self.hosts)
        if decision.verdict == Verdict.PAGE:
            self._page(HTTPStatus.OK, "")
        elif decision.verdict == Verdict.FIRE:
            self._fire(request)
        else:
            log.warning("trigger refused: %s %s: %s", request.method, request.path, decision.why)
            self._answer(HTTPStatus(decision.verdict.value), f"refused: {decision.why}\n")

    def _fire(self, request: Request) -> None:
        try:
            wait = self.fire()
        except GitopsError as err:
            log.error("trigger: %s", err)
            self._answer(HTTPStatus.SERVICE_UNAVAILABLE, "the agent could not be started\n")
            return
        if wait:
            message = f"an update was requested less than {MIN_INTERVAL:g} s ago; try again in {wait:.0f} s"
            extra = (("Retry-After", str(max(1, round(wait)))),)
            if request.script is None:
                self._page(HTTPStatus.TOO_MANY_REQUESTS, message, extra)
            else:
                self._answer(HTTPStatus.TOO_MANY_REQUESTS, message + "\n", extra)
            return
        self.fired = True
        if request.script is None:
            self._page(HTTPStatus.OK, ACCEPTED)
        else:
            self._answer(HTTPStatus.OK, ACCEPTED + "\n")

    def _page(self, status: HTTPStatus, note: str, extra: tuple[tuple[str, str], ...] = ()) -> None:
        shown = f'<p class="note" role="status">{html.escape(note)}</p>\n' if note else ""
        self._send(status, "text/html; charset=utf-8", PAGE.format(note=shown), extra)

    def _answer(
        self, status: HTTPStatus, text: str, extra: tuple[tuple[str, str], ...] = ()
    ) -> None:
        allow = (("Allow", "GET, HEAD, POST"),) if status == HTTPStatus.METHOD_NOT_ALLOWED else ()
        self._send(status, "text/plain; charset=utf-8", text, extra + allow)

    def _send(
        self, status: HTTPStatus, kind: str, text: str, extra: tuple[tuple[str, str], ...]
    ) -> None:
        body = text.encode()
        self.send_response(status)
        for name, value in (("Content-Type", kind), *SECURITY_HEADERS, *extra):
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    @override
    def log_message(self, format: str, *args: object) -> None:
        log.info("trigger: %s", format % args)


def _peer(sock: socket.socket) -> tuple[str, int]:
    try:
        peer = sock.getpeername()
    except OSError:
        return ("", 0)
    return (str(peer[0]), int(peer[1])) if isinstance(peer, tuple) else (str(peer), 0)


def answer_on_stdin(fire: Callable[[], float]) -> bool:
    """Answer the HTTP request on the connection systemd passed as stdin (a socket, or
    stdin and stdout as pipes, inetd style); whether it fired."""
    fd = os.dup(0)
    try:
        sock = socket.socket(fileno=fd)
    except OSError as err:
        os.close(fd)
        if err.errno != errno.ENOTSOCK:
            raise GitopsError(
                f"gitops agent trigger --http: cannot use stdin as a connection ({err.strerror})"
            ) from err
        with open(0, "rb", closefd=False) as rfile, open(1, "wb", closefd=False) as wfile:
            return TriggerHandler(None, fire, (rfile, wfile)).fired
    with sock:
        return TriggerHandler(sock, fire).fired
