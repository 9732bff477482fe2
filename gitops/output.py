"""What the user reads (stdout), kept apart from diagnostics (logging, on stderr).

Commands print results here, progress of long work goes to stderr so that ``--json``
output on stdout stays machine-readable.

Much of what is printed comes from others (file names in an enrolment proposal, commit
subjects from the server, a host's escrowed material, a report's reason): control
characters in it are shown escaped (``\x1b``), so that no input can drive the reader's
terminal (move the cursor, rewrite a line, set the clipboard or the title).
"""

from __future__ import annotations

import json
import logging
import re
import sys
from typing import Any, TextIO

from typing_extensions import override

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


def printable(text: str) -> str:
    """``text`` with every control character but newline and tab escaped."""
    if not _CONTROL.search(text):
        return text
    return _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}", text)


class LogFormatter(logging.Formatter):
    """Bare messages for INFO, ``level: logger:`` prefixes when debugging."""

    @override
    def format(self, record: logging.LogRecord) -> str:
        message = record.getMessage()
        if record.levelno == logging.INFO:
            return printable(message)
        prefix = record.levelname.lower()
        if record.levelno == logging.DEBUG:
            prefix += f": {record.name}"
        text = f"{prefix}: {message}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        return printable(text)


def configure_logging(*, debug: bool, verbose: bool) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LogFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if debug else logging.INFO if verbose else logging.WARNING)


def say(text: str = "", *, stream: TextIO | None = None) -> None:
    print(printable(text), file=stream or sys.stdout, flush=True)


def progress(text: str) -> None:
    """A line of progress on long work; on stderr, so stdout stays clean for scripts."""
    print(printable(text), file=sys.stderr, flush=True)


def emit_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
    sys.stdout.flush()
