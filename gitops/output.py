"""What the user reads (stdout), kept apart from diagnostics (logging, on stderr).

Commands print results here, progress of long work goes to stderr so that ``--json``
output on stdout stays machine-readable.
"""

from __future__ import annotations

import json
import logging
import sys
from typing import Any, TextIO

from typing_extensions import override


class LogFormatter(logging.Formatter):
    """Bare messages for INFO, ``level: logger:`` prefixes when debugging."""

    @override
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno == logging.INFO:
            return message
        prefix = record.levelname.lower()
        if record.levelno == logging.DEBUG:
            prefix += f": {record.name}"
        text = f"{prefix}: {message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return text


def configure_logging(*, debug: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)


def say(text: str = "", *, stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)


def progress(text: str) -> None:
    """A line of progress on long work; on stderr, so stdout stays clean for scripts."""
    print(text, file=sys.stderr, flush=True)


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
