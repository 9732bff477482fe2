"""A ref update as git's receive hooks read it (``<old> <new> <ref>``).

Kept apart from the checks so that the post-receive hook, which only moves branches,
imports no more than it needs (every push starts it as a new process).
"""

from __future__ import annotations

from dataclasses import dataclass

import pygit2

from gitops.protocol import DEPLOY_PREFIX, branch_name, is_host_name

ZERO = "0" * 40


@dataclass(frozen=True)
class Update:
    """One line of a pre-/post-receive hook's input: ``<old> <new> <ref>``."""

    old: pygit2.Oid | None  # None: the ref is created
    new: pygit2.Oid | None  # None: the ref is deleted
    ref: str

    @property
    def branch(self) -> str:
        return branch_name(self.ref)

    @classmethod
    def parse(cls, line: str) -> Update:
        old, new, ref = line.split(" ", 2)
        return cls(
            None if old == ZERO else pygit2.Oid(hex=old),
            None if new == ZERO else pygit2.Oid(hex=new),
            ref.strip(),
        )


def parse_updates(text: str) -> list[Update]:
    return [Update.parse(line) for line in text.splitlines() if line.strip()]


def deploy_host(ref: str) -> str | None:
    """``refs/heads/deploy/web-1`` → ``web-1``; None for any other ref."""
    if not ref.startswith(DEPLOY_PREFIX):
        return None
    host = ref.removeprefix(DEPLOY_PREFIX)
    return host if is_host_name(host) else None
