"""Serve a built site on localhost, for a look (``site build --serve``, ``demo --serve``);
production uses any web server."""

from __future__ import annotations

import functools
from pathlib import Path

from typing_extensions import override

from gitops import output
from gitops.errors import GitopsError


def serve_site(out: Path, port: int) -> None:
    import http.server  # only when serving: keeps "site build" quick to start

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        @override
        def log_message(self, format: str, *args: object) -> None:
            output.progress(f"site: {self.address_string()} {format % args}")

    handler = functools.partial(QuietHandler, directory=str(out))
    try:
        server = http.server.ThreadingHTTPServer(("127.0.0.1", port), handler)
    except OSError as err:
        raise GitopsError(f"cannot serve on 127.0.0.1:{port}: {err.strerror}; try --port") from err
    output.say(f"serving {out} on http://127.0.0.1:{server.server_address[1]}/ (Ctrl-C stops)")
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
