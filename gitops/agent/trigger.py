"""The local "update my machine now" trigger: one HTTP request on a socket systemd passes.

The NixOS module listens on ``127.0.0.1:51337`` with a socket unit (``Accept=yes``): each
connection starts ``gitops agent trigger --http`` with the connected socket as its stdin.
The request is parsed by http.server's handler, not by hand. A request only asks for a
cycle (it starts the agent's unit, or touches the trigger file ``agent run`` watches);
what gets applied is still only what a publisher signed.
"""

from __future__ import annotations

import logging
import socket
import socketserver
from collections.abc import Callable
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler
from pathlib import Path
from typing import ClassVar

from typing_extensions import override

from gitops.errors import GitopsError
from gitops.system import process

log = logging.getLogger(__name__)

TIMEOUT = 5.0  # seconds a client may take to send its request
ACCEPTED = "update requested: the agent will fetch, verify and apply now\n"


def start_unit(unit: str) -> None:
    """Ask for a cycle now by starting the agent's systemd unit (``agent once``)."""
    process.run(["systemctl", "start", "--no-block", unit], check=True)


def touch(trigger_file: Path) -> None:
    """Ask ``agent run`` for a cycle now: it watches this file."""
    trigger_file.parent.mkdir(parents=True, exist_ok=True)
    trigger_file.touch()


class TriggerHandler(BaseHTTPRequestHandler):
    """Answers one request on one connection; ``fired`` says whether it asked for a cycle."""

    timeout: ClassVar[float | None] = TIMEOUT

    def __init__(self, sock: socket.socket, fire: Callable[[], None]) -> None:
        self.fire = fire
        self.fired = False
        # Handling happens in the constructor (socketserver's design); the server object
        # is only a holder, nothing listens on it.
        super().__init__(
            sock, _peer(sock), socketserver.BaseServer(("", 0), BaseHTTPRequestHandler)
        )

    def do_GET(self) -> None:
        self._trigger()

    def do_HEAD(self) -> None:
        self._trigger()

    def do_POST(self) -> None:
        self._trigger()

    def do_PUT(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, "")

    def do_DELETE(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, "")

    def do_PATCH(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, "")

    def do_OPTIONS(self) -> None:
        self._answer(HTTPStatus.METHOD_NOT_ALLOWED, "")

    def _trigger(self) -> None:
        self.fire()
        self.fired = True
        self._answer(HTTPStatus.OK, ACCEPTED)

    def _answer(self, status: HTTPStatus, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
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


def answer_on_stdin(fire: Callable[[], None]) -> bool:
    """Answer the HTTP request on the connection systemd passed as stdin; whether it fired."""
    try:
        sock = socket.socket(fileno=0)
    except OSError as err:
        raise GitopsError(
            "gitops agent trigger --http answers a connection passed as its stdin "
            f"({err.strerror}); run it from a socket unit with Accept=yes and "
            "StandardInput=socket, as the NixOS module does"
        ) from err
    with sock:
        return TriggerHandler(sock, fire).fired
