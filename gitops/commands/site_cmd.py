"""``gitops site build``: render the fleet dashboard from the repository alone; ``--serve``
then serves it on localhost (for a look, not for production: use any web server)."""

from __future__ import annotations

import functools
import json
import logging
from pathlib import Path

from typing_extensions import override

from gitops import output
from gitops.errors import GitopsError
from gitops.sitegen import build as site_build

log = logging.getLogger(__name__)


def build(repo: Path, out: Path, *, serve: bool, port: int) -> int:
    stats = site_build.build(repo, out, background_cleanup=True, progress=output.progress)
    output.progress(
        f"site: {stats.hosts} hosts ({stats.hosts_read} read from git, "
        f"{stats.verified_now} signatures checked) in {stats.seconds:.1f} s"
    )
    log.info("site: phases (s): %s", json.dumps(stats.phases))
    output.say(str((out / "index.html").absolute()))
    if serve:
        serve_site(out, port)
    return 0


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


def serve(out: Path, port: int) -> int:
    """Serve an already built site (``gitops demo --serve``)."""
    serve_site(out, port)
    return 0
