"""``gitops status``: the fleet at a glance in the terminal, from the repository alone,
judged as the site judges it (gitops.sitegen.fleetstatus); ``--package NAME[@VERSION]``
answers "which hosts run it", as the site's software page does."""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Sequence
from pathlib import Path

from gitops import output
from gitops.errors import GitopsError
from gitops.inventory.sbom import PackageQuery
from gitops.sitegen import fleetstatus
from gitops.sitegen.model import State

CLEAR = "\x1b[H\x1b[2J"  # cursor home, clear the screen


def parse_state(text: str) -> State:
    """A state as the site spells it ("rolled back"), with dashes ("rolled-back"), or its
    first word ("never")."""
    spelled = text.strip().lower().replace("-", " ").replace("_", " ")
    for state in State:
        if spelled in (str(state), str(state).split()[0]):
            return state
    names = ", ".join(str(s).replace(" ", "-") for s in State)
    raise GitopsError(f"--state {text!r}: no such state; use one of {names}")


def parse_package(text: str) -> PackageQuery:
    try:
        return PackageQuery.parse(text)
    except ValueError as err:
        raise GitopsError(f"--package {err}, e.g. --package openssl@3.0.13") from err


def status(
    repo: Path,
    *,
    states: Sequence[str] = (),
    tags: Sequence[str] = (),
    package: str | None = None,
    as_json: bool = False,
    watch: bool = False,
    stop: threading.Event | None = None,
) -> int:
    wanted = [parse_state(s) for s in states]
    query = parse_package(package) if package is not None else None

    def show(found: fleetstatus.FleetStatus) -> None:
        known = {t for row in found.rows for t in row.host.tags}
        unknown = sorted(set(tags) - known)
        if unknown:  # a typo would otherwise show an empty, reassuring table
            raise GitopsError(
                f"--tag {unknown[0]!r}: no host in main has this tag; "
                f"known tags: {', '.join(sorted(known)) or 'none'}"
            )
        selected = found.select(states=wanted, tags=tags, package=query)
        if as_json:
            output.emit_json(selected.to_json())
            return
        if watch and sys.stdout.isatty():
            sys.stdout.write(CLEAR)
        output.say(fleetstatus.table(selected))

    if not watch:
        show(fleetstatus.read_status(repo, software=query is not None))
        return 0

    def fail(err: GitopsError) -> None:
        output.progress(f"gitops: {err} (watching on)")

    with contextlib.suppress(KeyboardInterrupt):  # the usual way to leave --watch
        fleetstatus.watch(
            repo, show, stop or threading.Event(), fail=fail, software=query is not None
        )
    return 0
