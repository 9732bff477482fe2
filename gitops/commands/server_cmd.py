"""``gitops server init|sync|serve|hook|maintain|archive``."""

from __future__ import annotations

import os
import shlex
import sys
from pathlib import Path

from gitops import output
from gitops.errors import GitopsError
from gitops.server.layout import Identity, Layout


def default_command() -> tuple[str, ...]:
    """How sshd and git's hooks run this gitops: its ``gitops`` program, or the Python
    running now with ``-m gitops``."""
    import shutil  # here: sshd starts ``serve`` for every connection, and it needs none

    found = shutil.which("gitops")
    if found:
        return (str(Path(found).resolve()),)
    return (sys.executable, "-m", "gitops")


def _admin(spec: str) -> tuple[str, str]:
    principal, sep, path = spec.partition("=")
    if not sep or not principal or not path:
        raise GitopsError(
            f"--admin {spec!r}: write PRINCIPAL=PATH.pub (e.g. alice@example.org=alice.pub)"
        )
    try:
        return principal, Path(path).read_text(encoding="utf-8")
    except OSError as err:
        raise GitopsError(f"--admin {spec!r}: cannot read {path} ({err.strerror})") from err


def init(
    directory: Path, repo: str, *, mirror: bool, admins: list[str], command: str | None
) -> int:
    from gitops.server import sync
    from gitops.server.config import Admin, MainPolicy, ServerConfig
    from gitops.trust.sshsig import PublicKey

    entries = []
    for spec in admins:
        principal, text = _admin(spec)
        try:
            entries.append(Admin(principal, PublicKey.parse(text)))
        except ValueError as err:
            raise GitopsError(f"--admin {spec!r}: not an ssh public key ({err})") from err
    config = ServerConfig.parse(
        ServerConfig(
            command=tuple(shlex.split(command)) if command else default_command(),
            main=MainPolicy.MIRROR if mirror else MainPolicy.SIGNED,
            upstream=repo if mirror else None,
            admins=tuple(entries),
        ).to_yaml(),
        "the server settings",
    )  # parsed back: the same checks as a hand-edited server.yaml
    layout = Layout(directory.absolute())
    result = sync.init(layout, repo, config, progress=output.progress)
    for line in result.lines():
        output.say(line)
    output.say(f"server ready in {layout.root}; sshd settings to add: {layout.sshd_snippet}")
    return 0


def sync_server(directory: Path, *, fetch: bool) -> int:
    from gitops.server import sync

    result = sync.sync(Layout(directory.absolute()), fetch=fetch, progress=output.progress)
    for line in result.lines():
        output.say(line)
    return 0


def maintain(directory: Path, *, jobs: int | None, min_loose: int) -> int:
    from gitops.server import maintain as maintaining

    result = maintaining.maintain(
        Layout(directory.absolute()), jobs=jobs, min_loose=min_loose, progress=output.progress
    )
    for line in result.lines():
        output.say(line)
    return 1 if result.problems else 0


def archive(directory: Path, *, before: str | None, months: int | None) -> int:
    from datetime import UTC, datetime

    from gitops.server import archive as archiving

    if before is None:
        assert months is not None
        if months < 0:
            raise GitopsError(f"--months {months}: give 0 or more")
        before = archiving.months_ago(datetime.now(UTC), months)
    result = archiving.archive(
        Layout(directory.absolute()), archiving.parse_month(before), progress=output.progress
    )
    for line in result.lines():
        output.say(line)
    return 0


def serve(directory: Path, identity: str) -> int:
    from gitops.server import serve as serving

    serving.serve(
        Layout(directory.absolute()),
        Identity.parse(identity),
        os.environ.get("SSH_ORIGINAL_COMMAND"),
        os.environ,
    )


def hook(name: str, directory: Path) -> int:
    from gitops.server import hooks
    from gitops.server.updates import parse_updates

    layout = Layout(directory.absolute())
    git_dir = Path(os.environ.get("GIT_DIR", "."))
    updates = parse_updates(sys.stdin.read())
    if name == "pre-receive":
        lines = hooks.pre_receive(layout, git_dir, os.environ, updates)
    else:
        lines = hooks.post_receive(layout, git_dir, updates)
    for line in lines:
        print(line, file=sys.stderr, flush=True)
    return 1 if name == "pre-receive" and lines else 0
