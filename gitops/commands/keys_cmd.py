"""``gitops keys``."""

from __future__ import annotations

from pathlib import Path

from gitops import output
from gitops.fleet.model import load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource, Source, TreeSource
from gitops.trust import commits
from gitops.trust.keys import new_keypair


def new(path: Path, comment: str, *, as_json: bool = False) -> int:
    key = new_keypair(path, comment)
    if as_json:
        output.emit_json(
            {
                "private_key": str(path),
                "public_key": f"{path}.pub",
                "key_type": key.key_type,
                "key": key.openssh(),
                "fingerprint": key.fingerprint,
                "comment": comment,
            }
        )
        return 0
    output.say(f"wrote {path} (private, 0600) and {path}.pub")
    output.say(f"{key.openssh()} {comment}".strip())
    output.say(f"fingerprint {key.fingerprint}")
    return 0


def allowed_signers(repo: Path, rev: str | None, *, as_json: bool = False) -> int:
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
    trust = fleet.settings.publisher_trust()
    if as_json:
        output.emit_json({"signers": trust.to_json()})
    else:
        output.say(trust.text().rstrip("\n"))
    return 0
