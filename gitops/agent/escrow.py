"""Key escrow: recovery material (a LUKS recovery key, a copy of the host key) encrypted to
the admins' age recipients and committed in the host's reports branch as
``escrow/<name>.age`` (docs/secrets.md#key-escrow).

A file goes into a report only when its content or the recipients changed since the last
report that carried it; the state keeps a salted SHA-256 of each (the material is random
key material, so its hash reveals nothing usable). Only ciphertext leaves this module.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, replace
from typing import Final

from gitops.agent.config import AgentConfig
from gitops.agent.state import AgentState
from gitops.trust import age

log = logging.getLogger(__name__)

STATE_KEY: Final = "escrow"
_SALT: Final = b"gitops-escrow-v1\0"


@dataclass(frozen=True)
class Escrowed:
    ciphertext: dict[str, bytes]  # name -> age file, for the report commit
    digests: dict[str, str]  # name -> what the state remembers


def _digest(recipients: list[age.Recipient], data: bytes) -> str:
    names = "\n".join(sorted(r.text for r in recipients)).encode()
    return hashlib.sha256(_SALT + names + b"\0" + data).hexdigest()


def escrow_if_changed(config: AgentConfig, state: AgentState) -> Escrowed | None:
    """The escrow files to add to this report: those new or changed since the last one."""
    if not config.escrow:
        return None
    try:
        recipients = [age.parse_recipient(text) for text in config.escrow_recipients]
    except ValueError as err:
        log.warning("escrow: an escrow recipient is unusable (%s); nothing escrowed", err)
        return None
    remembered = state.extra.get(STATE_KEY)
    known = remembered if isinstance(remembered, dict) else {}
    ciphertext, digests = {}, {}
    for name, path in config.escrow:
        try:
            data = path.read_bytes()
        except OSError as err:
            log.warning("escrow %s: cannot read %s (%s)", name, path, err.strerror)
            continue
        digest = _digest(recipients, data)
        digests[name] = digest
        if known.get(name) != digest:
            ciphertext[name] = age.encrypt(data, recipients)
            log.info("escrow %s: %s encrypted to %d admin key(s)", name, path, len(recipients))
    if not ciphertext:
        return None
    return Escrowed(ciphertext, digests)


def files(escrowed: Escrowed | None) -> dict[str, bytes] | None:
    return escrowed.ciphertext if escrowed is not None else None


def remember(state: AgentState, escrowed: Escrowed | None) -> AgentState:
    """The state after a report carrying ``escrowed`` was committed."""
    if escrowed is None:
        return state
    known = state.extra.get(STATE_KEY)
    merged = {**(known if isinstance(known, dict) else {}), **escrowed.digests}
    return replace(state, extra={**state.extra, STATE_KEY: merged})
