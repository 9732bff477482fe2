"""HTTP requests out (webhooks, forge APIs): the one place that opens them, with the
standard library's urllib. A failure is a GitopsError naming the URL's scheme and host and
the answer, never its path, query or user (a webhook URL may carry a token there), nor a
header (they carry tokens)."""

from __future__ import annotations

import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass

from gitops.errors import GitopsError

TIMEOUT = 10.0  # seconds for one request
MAX_ANSWER = 200  # characters of an error answer kept in the message


@dataclass(frozen=True)
class Answer:
    status: int
    body: bytes


def public(url: str) -> str:
    """``url`` as it may be logged: scheme, host and port (``https://hooks.example.org/…``)."""
    try:
        parts = urllib.parse.urlsplit(url)
        host = parts.hostname or "?"
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "(an invalid URL)"
    rest = "/…" if parts.path.strip("/") or parts.query else ""
    return f"{parts.scheme}://{host}{port}{rest}"


def post_json(
    url: str, body: bytes, headers: Mapping[str, str], *, timeout: float = TIMEOUT
) -> Answer:
    """POST ``body`` (JSON) to ``url``; GitopsError unless the answer is 2xx."""
    request = urllib.request.Request(
        url,
        data=body,
        method="POST",
        headers={"Content-Type": "application/json", "User-Agent": "gitops", **headers},
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return Answer(response.status, response.read())
    except urllib.error.HTTPError as err:
        text = err.read(MAX_ANSWER).decode("utf-8", "replace").strip()
        raise GitopsError(f"POST {public(url)}: HTTP {err.code} {err.reason}: {text}") from err
    except (urllib.error.URLError, OSError, ValueError) as err:
        reason = getattr(err, "reason", err)
        raise GitopsError(f"POST {public(url)}: {reason}") from err
