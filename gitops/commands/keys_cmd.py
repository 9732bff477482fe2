"""``gitops keys``."""

from __future__ import annotations

from pathlib import Path

from gitops import output
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource, Source, TreeSource
from gitops.trust import commits
from gitops.trust.keys import new_keypair


def new(path: Path, comment: str) -> int:
    key = new_keypair(path, comment)
    output.say(f"wrote {path} (private, 0600) and {path}.pub")
    output.say(f"{key.openssh()} {comment}".strip())
    output.say(f"fingerprint {key.fingerprint}")
    return 0


def allowed_signers(repo: Path, rev: str | None) -> int:
    source: Source
    if rev is None:
        source = DirSource(repo)
    else:
        repository = commits.open_repository(repo)
        commit = commits.resolve_commit(repository, rev)
        source = TreeSource(repository, commit.tree, commit.short_id)
    problems = Problems()
    fleet = load_fleet(source, problems)
    problems.raise_if_any("fleet.yaml is invalid")
    output.say(fleet.settings.publisher_trust().text().rstrip("\n"))
    return 0
