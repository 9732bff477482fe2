"""``gitops site build``: render the fleet dashboard from the repository alone; ``--serve``
then serves it on localhost (for a look, not for production: use any web server)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

from gitops import output
from gitops.sitegen import build as site_build
from gitops.sitegen.serve import serve_site

log = logging.getLogger(__name__)


def build(
    repo: Path,
    out: Path,
    *,
    serve: bool,
    port: int,
    as_json: bool = False,
    send_alerts: bool = True,
    history_hosts: int | None = None,
) -> int:
    stats = site_build.build(
        repo,
        out,
        background_cleanup=True,
        send_alerts=send_alerts,
        history_hosts=site_build.HISTORY_HOSTS if history_hosts is None else history_hosts,
        progress=output.progress,
    )
    output.progress(stats.summary())
    log.info("site: phases (s): %s", json.dumps(stats.phases))
    index = (out / "index.html").absolute()
    if as_json:
        output.emit_json({"site": str(index), **stats.to_json()})
    else:
        output.say(str(index))
    if serve:
        serve_site(out, port)
    return 0
