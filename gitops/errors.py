"""The one error type users see. Its text is the whole message: what, where, how to fix."""

from __future__ import annotations

from typing_extensions import override


class GitopsError(Exception):
    """An expected failure. ``str(error)`` is the one-line message for the user."""

    def __init__(self, message: str, *, exit_code: int = 1) -> None:
        super().__init__(message)
        self.message = message
        self.exit_code = exit_code

    @override
    def __str__(self) -> str:
        return self.message


class ProblemsError(GitopsError):
    """Several problems found at once (a fleet check): each is one line."""

    def __init__(self, summary: str, problems: list[str]) -> None:
        super().__init__(summary + "\n" + "\n".join(f"  {p}" for p in problems))
        self.problems = problems
