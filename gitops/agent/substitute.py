"""Substitute mode: realise the system a verified deploy commit pins, evaluate nothing.

A deploy commit built centrally (``gitops build``, then ``gitops publish --systems``)
names its system in a ``System-Path`` trailer, under the publisher's signature. Here the
agent asks Nix to make exactly that store path valid from the host's own caches
(``substituters``), accepting only narinfos signed by the host's own
``trusted_public_keys``, and never building (``nix-store --realise`` of an output path,
``max-jobs 0``). Nix checks that the narinfo is for that path and signed by a trusted
key, and that the NAR is the one the signed narinfo describes; so a cache can serve only
what a publisher pinned, and nothing else is ever activated.

What happens when that fails depends on the host's ``mode`` (agent/config.py): ``auto``
builds the verified tree here instead (and says why), ``substitute`` reports
``substitute-failed`` and leaves the running system alone.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import pygit2

from gitops.agent.config import AgentConfig, Mode
from gitops.protocol import TRAILER_SYSTEM_PATH
from gitops.system import nix
from gitops.trust import commits

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Fetched:
    system: Path


@dataclass(frozen=True)
class Refused:
    """The pinned system could not be had from the caches; ``fallback``: build here instead."""

    reason: str
    log_tail: str
    fallback: bool


def pinned_system(repo: pygit2.Repository, head: pygit2.Oid) -> str | None:
    """The head's ``System-Path`` trailer, as written (checked by :func:`fetch`)."""
    commit = repo.get(head)
    if not isinstance(commit, pygit2.Commit):
        return None
    return commits.trailers(commit.message).get(TRAILER_SYSTEM_PATH)


def fetch(
    config: AgentConfig, repo: pygit2.Repository, head: pygit2.Oid
) -> Fetched | Refused | None:
    """The pinned system, realised; a refusal; or None: build it here as before."""
    if config.mode is Mode.BUILD:
        return None
    short = str(head)[:8]
    fallback = config.mode is Mode.AUTO
    pinned = pinned_system(repo, head)
    if pinned is None:
        if fallback:
            return None
        return Refused(
            f"deploy {short} names no system ({TRAILER_SYSTEM_PATH}) and this host may not "
            "build (mode: substitute); publish it with 'gitops publish --systems' after "
            "'gitops build', or set mode: auto",
            "",
            fallback=False,
        )
    if not nix.is_store_path(pinned):
        return Refused(
            f"deploy {short} names {pinned[:120]!r} as its system, which is not a store path",
            "",
            fallback,
        )
    if not config.substituters and not nix.is_valid(pinned):
        return Refused(
            f"deploy {short} pins {pinned}, which is not here, and no substituters are configured",
            "",
            fallback,
        )
    log.info("fetching the pinned system %s", pinned)
    try:
        system = nix.realise_from(
            pinned,
            config.substituters,
            config.trusted_public_keys,
            timeout=config.build_timeout,
        )
    except nix.SubstituteError as err:
        return Refused(
            f"deploy {short}: the caches did not give {pinned}: {err}", err.log_tail, fallback
        )
    return Fetched(system)
