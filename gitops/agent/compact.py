"""Keep the agent's state directory small: drop pushed report history, pack the rest.

Every report is a signed commit, a tree and a ``status.json`` blob on ``reports/<host>``
in the mirror. Nothing used to pack or prune them: a year of 15-minute reports left
105,125 loose objects, 431 MB, on every host (bench/host_growth.py: 0.6 MB with this).

What the agent needs from its mirror, and keeps:

- the deploy chain: ``refs/gitops/applied`` (with state.json's ``applied``, the
  anti-rollback floor), its tree (``flake.lock``, the tree written to ``trees/``) and its
  history (a new head is verified down to the applied commit; renewals add one small
  commit each, so it stays small);
- the reports not yet pushed: ``reports/<host>`` above ``refs/gitops/remote-reports``;
- the last pushed report, the next report's parent (it must be the server's tip).

What it does not need: the history *below* the last pushed report, which the server holds.
When compaction is due, the mirror is made shallow at that commit (git's ``shallow``
file: the commit stays, its parents are no longer looked for), then ``git gc
--prune=now`` packs what the refs reach into one pack and deletes everything else. git
pushes from a shallow repository to a server that has the shallow commit (it does: it was
pushed), and fetches ``reports/<host>`` down to it, so the reporter's rebase works as
before. Unpushed reports are never cut: they descend from the shallow commit. A last
pushed report that is not an ancestor of the local branch cuts nothing.

Due when the loose objects reach :data:`LOOSE_LIMIT` (about 100 reports) or the packs
:data:`PACK_LIMIT`: a host that cannot push for days still packs its pending reports.
The check is a directory listing; the work (tens of milliseconds at this size) happens
once in about 100 reports. It runs inside the cycle, under the cycle's lock.
"""

from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

import pygit2

from gitops.agent.mirror import REMOTE_REPORTS_REF, Mirror
from gitops.errors import GitopsError
from gitops.protocol import STATUS_FILE
from gitops.system import atomic, transport
from gitops.trust import commits
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PrivateKeyTypes, PublicKey

log = logging.getLogger(__name__)

LOOSE_LIMIT = 300  # about 100 reports (commit, tree, status.json)
PACK_LIMIT = 10
SHALLOW_FILE = "shallow"

_FANOUT = re.compile(r"^[0-9a-f]{2}$")


@dataclass(frozen=True)
class Compaction:
    loose: int  # loose objects before
    packs: int  # packs before
    cut_at: str | None  # the pushed report the history was cut below, if any


def loose_objects(git_dir: Path, limit: int | None = None) -> int:
    """Loose objects in ``git_dir`` (counting stops at ``limit``)."""
    objects = git_dir / "objects"
    count = 0
    with os.scandir(objects) as entries:
        fanout = sorted(e.name for e in entries if e.is_dir() and _FANOUT.match(e.name))
    for name in fanout:
        with os.scandir(objects / name) as files:
            count += sum(1 for f in files if f.is_file())
        if limit is not None and count >= limit:
            break
    return count


def packs(git_dir: Path) -> int:
    directory = git_dir / "objects" / "pack"
    if not directory.is_dir():
        return 0
    return sum(1 for p in directory.iterdir() if p.suffix == ".pack")


def compact_if_due(mirror: Mirror, key: PrivateKeyTypes) -> Compaction | None:
    """Compact the mirror when enough has piled up; None when it was not due. A failure
    is logged, not raised: the cycle's work is done, and the next cycle tries again."""
    loose = loose_objects(mirror.path, LOOSE_LIMIT)
    pack_count = packs(mirror.path)
    if loose < LOOSE_LIMIT and pack_count < PACK_LIMIT:
        return None
    try:
        return compact(mirror, key, loose=loose, pack_count=pack_count)
    except (GitopsError, OSError, pygit2.GitError) as err:
        log.warning("could not compact %s (tried again next cycle): %s", mirror.path, err)
        return None


def compact(
    mirror: Mirror, key: PrivateKeyTypes, *, loose: int = 0, pack_count: int = 0
) -> Compaction:
    """Cut the pushed report history (see the module's text), then pack and prune.
    ``key``: this host's key, which signed every report it may cut at."""
    trust = AllowedSigners.of([(mirror.host, PublicKey.from_crypto(key.public_key()))])
    cut = pushed_tip(mirror)
    if cut is not None and not _own_report(mirror, cut, trust):
        log.warning(
            "the server's reports/%s head %s is not a report this host signed: history not cut",
            mirror.host,
            str(cut)[:8],
        )
        cut = None
    shallow = mirror.path / SHALLOW_FILE
    listed = set(shallow.read_text(encoding="ascii").split()) if shallow.exists() else set()
    # git prune drops the lines of commits that are gone (the previous cut).
    kept = {c for c in listed if _own_report(mirror, c, trust)}
    wanted = kept | ({str(cut)} if cut is not None else set())
    if wanted != listed:
        if wanted:
            atomic.write_text(shallow, "".join(f"{c}\n" for c in sorted(wanted)))
        else:
            shallow.unlink()
    transport.prune(mirror.path)
    # libgit2 reads the new pack and the shallow file on a fresh handle.
    mirror.repo = pygit2.Repository(str(mirror.path))
    log.info(
        "compacted %s: %d loose objects and %d packs into one pack%s",
        mirror.path,
        loose,
        pack_count,
        f", report history cut below {str(cut)[:8]} (on the server)" if cut else "",
    )
    return Compaction(loose, pack_count, str(cut) if cut else None)


def _own_report(mirror: Mirror, oid: pygit2.Oid | str, trust: AllowedSigners) -> bool:
    """Whether ``oid`` is a report commit signed by this host's key."""
    try:
        commit = mirror.repo.get(str(oid))
    except ValueError:
        return False
    if not isinstance(commit, pygit2.Commit) or STATUS_FILE not in commit.tree:
        return False
    try:
        commits.verify_commit(mirror.repo, commit.id, trust)
    except GitopsError:
        return False
    return True


def pushed_tip(mirror: Mirror) -> pygit2.Oid | None:
    """The last report known to be on the server, if the local branch descends from it."""
    pushed = mirror.target(REMOTE_REPORTS_REF)
    local = mirror.target(mirror.local_reports_ref)
    if pushed is None or local is None or mirror.repo.get(pushed) is None:
        return None
    if pushed == local or mirror.repo.descendant_of(local, pushed):
        return pushed
    return None
