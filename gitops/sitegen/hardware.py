"""A host's hardware in one line, for the inventory (which filters on it): vendor, model,
memory and the root disk's encryption, from its counted report's facts
(gitops/agent/facts/hardware.py, compliance.py); "unknown" where the host could not tell."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

UNKNOWN = "unknown"


@dataclass(frozen=True)
class Hardware:
    vendor: str
    model: str
    memory_bytes: int | None
    encryption: str  # facts.disk_encryption: luks, none, ... or unknown

    @classmethod
    def of(cls, facts: Mapping[str, Any] | None) -> Hardware:
        facts = facts or {}
        memory = facts.get("memory_total_bytes")
        return cls(
            vendor=_text(facts.get("hardware_vendor")),
            model=_text(facts.get("hardware_model")),
            memory_bytes=memory
            if isinstance(memory, int) and not isinstance(memory, bool)
            else None,
            encryption=_text(facts.get("disk_encryption")),
        )

    @property
    def memory_gib(self) -> str:
        """Memory in GiB, to one decimal ("" when unknown): what ``memory>=16`` compares."""
        return f"{self.memory_bytes / (1 << 30):.1f}" if self.memory_bytes is not None else ""


def _text(value: object) -> str:
    return value.strip()[:200] if isinstance(value, str) and value.strip() else UNKNOWN
