"""sshd's forced command: one key, one identity, one repository, one git service.

Every key in the generated authorized_keys runs ``gitops server serve --as ROLE:NAME``
whatever the client asked for; the request is in ``SSH_ORIGINAL_COMMAND``
(``git-upload-pack '/hosts/web-1.git'``). Anything but git's two services on the one
repository this identity may use is refused with one line; otherwise this process
becomes ``git upload-pack`` / ``git receive-pack`` (no Python left in the data path), with
the identity in the environment for the hooks, which check what is pushed.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shlex
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import NoReturn

from gitops.errors import GitopsError
from gitops.server.layout import (
    FLEET,
    IDENTITY_ENV,
    QUEUE_PREFIX,
    SLOT_PREFIX,
    Identity,
    Layout,
    RepoName,
    Role,
)
from gitops.server.layout import parse_repo_name as parse_repo
from gitops.system import process

QUEUE_WAIT = 60.0  # seconds a queued push waits for a slot before it is refused
QUEUE_POLL = 0.05  # how often a queued push looks for a free slot

# git's own configuration files play no part: each repository's config says everything.
_HERMETIC_GIT = {"GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}


class Service(StrEnum):
    UPLOAD = "git-upload-pack"  # fetch, ls-remote
    RECEIVE = "git-receive-pack"  # push


class RefusedError(GitopsError):
    """The request is not one this identity may make; the text says what it may do."""


class BusyError(GitopsError):
    """Every push slot is taken. The agent treats "the gitops server is busy" as a
    transient failure and tries again after a jittered wait."""


@dataclass(frozen=True)
class Request:
    service: Service
    repo: RepoName


def parse_request(command: str | None) -> Request:
    """``git-upload-pack '/hosts/web-1.git'`` (or ``git upload-pack ...``) → a Request."""
    if not command:
        raise RefusedError("this key only serves git (fetch and push); no shell is offered")
    try:
        words = shlex.split(command)
    except ValueError:
        words = []
    if len(words) == 3 and words[0] == "git":
        words = [f"git-{words[1]}", words[2]]
    if len(words) != 2 or words[0] not in set(Service):
        shown = command if len(command) <= 80 else command[:77] + "..."
        raise RefusedError(f"only git-upload-pack and git-receive-pack are served, not {shown!r}")
    repo = parse_repo(words[1])
    if repo is None:
        raise RefusedError(f"no repository {words[1]!r} here; use fleet.git or hosts/<host>.git")
    return Request(Service(words[0]), repo)


def allowed_repo(identity: Identity) -> RepoName:
    """The one repository an identity may fetch from and push to."""
    return RepoName(identity.name) if identity.role is Role.HOST else FLEET


def authorize(identity: Identity, request: Request) -> None:
    mine = allowed_repo(identity)
    if request.repo != mine:
        raise RefusedError(f"{identity} may use only {mine}, not {request.repo}")


def git_command(layout: Layout, request: Request) -> list[str]:
    path = str(layout.path_of(request.repo))
    if request.service is Service.UPLOAD:
        return ["git", "upload-pack", "--strict", path]
    return ["git", "receive-pack", path]


def git_environment(environ: Mapping[str, str], identity: Identity) -> dict[str, str]:
    return {**environ, **_HERMETIC_GIT, IDENTITY_ENV: str(identity)}


def _open_slots(layout: Layout, prefix: str) -> list[int]:
    try:
        names = sorted(p for p in layout.slots_dir.iterdir() if p.name.startswith(prefix))
    except OSError:
        return []
    fds = []
    for name in names:
        with contextlib.suppress(OSError):  # removed by a sync that lowered the count
            fds.append(os.open(name, os.O_RDWR))
    return fds


def _lock_one(fds: list[int]) -> int | None:
    for fd in fds:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            continue
        return fd
    return None


def _close_except(fds: list[int], keep: int | None) -> None:
    for fd in fds:
        if fd != keep:
            os.close(fd)


def take_push_slot(
    layout: Layout, *, wait: float = QUEUE_WAIT, clock: Callable[[], float] = time.monotonic
) -> int:
    """Lock one of the ``push-*`` slot files and return its descriptor, which git and
    its hooks inherit: the slot is free again when the last of them exits. A push costs
    two Python hooks (about 40 MB each); the slots bound how many run at once, whatever
    sshd lets in.

    When every slot is taken, the push waits for one (up to ``wait`` seconds) if it can
    take a place in the queue (the ``queue-*`` files): a connection that waits costs a
    little memory and no CPU, where one sent away makes the agent come back through a
    whole new ssh handshake. With the queue full too, or after the wait, it is refused.
    """
    slots = _open_slots(layout, SLOT_PREFIX)
    if not slots:
        return -1  # no slots made (a server from before they existed): no limit
    taken = _lock_one(slots)
    if taken is None:
        taken = _wait_in_queue(layout, slots, wait, clock)
    _close_except(slots, taken)
    if taken is None:
        raise BusyError(
            f"the gitops server is busy (all {len(slots)} push slots in use); try again shortly"
        )
    os.set_inheritable(taken, True)
    return taken


def _wait_in_queue(
    layout: Layout, slots: list[int], wait: float, clock: Callable[[], float]
) -> int | None:
    places = _open_slots(layout, QUEUE_PREFIX)
    place = _lock_one(places)
    try:
        if place is None:
            return None
        deadline = clock() + wait
        while clock() < deadline:
            time.sleep(QUEUE_POLL)
            taken = _lock_one(slots)
            if taken is not None:
                return taken
        return None
    finally:
        _close_except(places, None)  # closing the place's descriptor frees it


def serve(
    layout: Layout, identity: Identity, command: str | None, environ: Mapping[str, str]
) -> NoReturn:
    request = parse_request(command)
    authorize(identity, request)
    if not layout.path_of(request.repo).is_dir():
        raise RefusedError(
            f"{request.repo} does not exist on this server; it is created by "
            "'gitops server sync' once the host is in main"
        )
    slot = take_push_slot(layout) if request.service is Service.RECEIVE else -1
    try:
        process.replace_process(
            git_command(layout, request), env=git_environment(environ, identity)
        )
    finally:  # only if exec failed
        if slot >= 0:
            with contextlib.suppress(OSError):
                os.close(slot)
