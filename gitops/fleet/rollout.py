"""``rollout:`` in fleet.yaml: staged rollouts (docs/rollout.md).

A new main commit goes to the first wave only; it moves to the next wave when enough of
the current wave applied it and stayed healthy for the soak time, and halts when so many
failed that the threshold cannot be met. This module holds the settings, which hosts are
in which wave, and the pure judgement of a wave from what each host's reports say
(:func:`judge_wave`); reading the reports and the rollout record is in
:mod:`gitops.fleet.rollout_record`.
"""

from __future__ import annotations

import hashlib
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Final

from gitops.fleet.schema import Reader
from gitops.protocol import Result, is_host_name

DEFAULT_THRESHOLD: Final = 0.9
DEFAULT_SOAK: Final = 30 * 60
_WAVE_NAME: Final = re.compile(r"^[a-z0-9]([a-z0-9_-]{0,38}[a-z0-9])?$", re.ASCII)
# What a host's report says when the change broke it: the build, the switch, or health.
FAILURES: Final = frozenset({Result.BUILD_FAILED, Result.SWITCH_FAILED, Result.ROLLED_BACK})
HEALTHY: Final = frozenset({Result.APPLIED, Result.UNCHANGED})


@dataclass(frozen=True)
class Wave:
    """One wave: hosts with one of ``tags``, the ``hosts`` named, ``percent`` of the
    fleet, or (none of them) every host no earlier wave took."""

    name: str
    tags: tuple[str, ...] = ()
    hosts: tuple[str, ...] = ()
    percent: float | None = None

    @property
    def everyone(self) -> bool:
        return not self.tags and not self.hosts and self.percent is None

    def describe(self) -> str:
        if self.tags:
            return "tags " + ", ".join(self.tags)
        if self.hosts:
            return "hosts " + ", ".join(self.hosts)
        if self.percent is not None:
            return f"{self.percent:g} % of the fleet"
        return "every other host"


@dataclass(frozen=True)
class RolloutSettings:
    waves: tuple[Wave, ...]
    success_threshold: float = DEFAULT_THRESHOLD  # fraction of a wave applied and healthy
    soak: int = DEFAULT_SOAK  # seconds each host must stay healthy on the change


def parse_rollout(top: Reader) -> RolloutSettings | None:
    """``rollout:`` from fleet.yaml's top-level reader; None when there is none."""
    if top.get("rollout") is None:
        return None
    section = top.mapping("rollout")
    waves = _parse_waves(section)
    threshold = _parse_threshold(section)
    soak = section.duration("soak", DEFAULT_SOAK)
    section.finish()
    if not waves:
        return None
    return RolloutSettings(waves, threshold, soak)


def _parse_threshold(section: Reader) -> float:
    value = section.get("success_threshold")
    if value is None:
        return DEFAULT_THRESHOLD
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        section.problem(
            "success_threshold",
            f"{str(value)[:40]!r} is not a fraction between 0 and 1",
            "write e.g. 0.9 (90 % of a wave applied and healthy)",
        )
        return DEFAULT_THRESHOLD
    return float(value)


def _parse_waves(section: Reader) -> tuple[Wave, ...]:
    items = section.items("waves")
    if not items:
        section.problem(
            "waves",
            "is missing or empty",
            "list the waves, e.g. waves: [{name: canary, tags: [canary]}, {name: everyone}]",
        )
        return ()
    waves: list[Wave] = []
    for index, item in enumerate(items):
        wave = _parse_wave(item)
        last = index == len(items) - 1
        if wave is None:
            continue
        if any(w.name == wave.name for w in waves):
            item.problem("name", f"wave {wave.name!r} is declared twice", "name each wave once")
            continue
        if last and not wave.everyone:
            item.problem(
                "name",
                f"the last wave ({wave.name!r}) must take every remaining host",
                "remove its tags, hosts or percent, or add a last wave {name: everyone}",
            )
        if not last and wave.everyone:
            item.problem(
                "name",
                f"wave {wave.name!r} takes every remaining host, so the waves after it get none",
                "give it tags, hosts or percent, or make it the last wave",
            )
        waves.append(wave)
    return tuple(waves)


def _parse_wave(item: Reader) -> Wave | None:
    name = item.string("name", required=True)
    tags = item.strings("tags")
    hosts = item.strings("hosts", check=lambda h: None if is_host_name(h) else "not a host name")
    percent = _parse_percent(item)
    item.finish()
    chosen = [key for key, value in (("tags", tags), ("hosts", hosts)) if value]
    if percent is not None:
        chosen.append("percent")
    if len(chosen) > 1:
        item.problem(
            chosen[1],
            f"a wave selects by one of tags, hosts or percent, not {' and '.join(chosen)}",
        )
        return None
    if not name:
        return None
    if not _WAVE_NAME.match(name):
        item.problem(
            "name", f"{name[:40]!r} is not a wave name", "use lower-case letters, digits, - and _"
        )
        return None
    return Wave(name, tags, hosts, percent)


def _parse_percent(item: Reader) -> float | None:
    value = item.get("percent")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 100:
        item.problem("percent", f"{str(value)[:40]!r} is not a percentage", "write e.g. 10")
        return None
    return float(value)


def unknown_hosts(settings: RolloutSettings, known: Iterable[str]) -> list[tuple[int, str]]:
    """(wave index, host) for each host a wave names that is not in hosts/."""
    names = set(known)
    return [
        (index, host)
        for index, wave in enumerate(settings.waves)
        for host in wave.hosts
        if host not in names
    ]


def _spread(host: str) -> bytes:
    """A stable pseudo-random order for percentage waves: the same hosts every time."""
    return hashlib.sha256(host.encode()).digest()


def assign(
    settings: RolloutSettings, hosts: Mapping[str, Sequence[str]]
) -> tuple[tuple[str, ...], ...]:
    """Each wave's hosts (``hosts``: name -> tags), sorted; a host is in the first wave
    that selects it. ``percent`` counts the whole fleet, rounded up, taken from the hosts
    no earlier wave took, in an order fixed by each name's hash."""
    left = set(hosts)
    total = len(hosts)
    result: list[tuple[str, ...]] = []
    for wave in settings.waves:
        if wave.tags:
            wanted = set(wave.tags)
            chosen = {h for h in left if wanted.intersection(hosts[h])}
        elif wave.hosts:
            chosen = left.intersection(wave.hosts)
        elif wave.percent is not None:
            count = math.ceil(wave.percent * total / 100)
            chosen = set(sorted(left, key=_spread)[:count])
        else:
            chosen = set(left)
        left -= chosen
        result.append(tuple(sorted(chosen)))
    return tuple(result)


# -- judging a wave -----------------------------------------------------------------------


class Progress(StrEnum):
    """Where one host of a wave is with the change."""

    PENDING = "pending"  # not applied yet (or no report since it was published)
    SOAKING = "soaking"  # applied and healthy, for less than the soak time
    HEALTHY = "healthy"  # applied and healthy for at least the soak time
    FAILED = "failed"  # build-failed, switch-failed or rolled back on it
    STALE = "stale"  # no report for longer than stale_after


@dataclass(frozen=True)
class Observation:
    host: str
    progress: Progress
    since: datetime | None = None  # applied (healthy) since, or failed since
    detail: str = ""


class Decision(StrEnum):
    WAIT = "wait"
    PASS = "pass"
    HALT = "halt"


@dataclass(frozen=True)
class WaveVerdict:
    size: int
    needed: int  # hosts that must be healthy for the wave to pass
    counts: Mapping[Progress, int]
    decision: Decision
    reason: str

    def count(self, progress: Progress) -> int:
        return self.counts.get(progress, 0)


def needed_of(size: int, threshold: float) -> int:
    # A small epsilon: 0.9 * 10 is 9.000000000000002 in floating point.
    return min(size, math.ceil(threshold * size - 1e-9))


def judge_wave(
    name: str, observations: Sequence[Observation], threshold: float, soak: int
) -> WaveVerdict:
    """Whether wave ``name`` passes (enough hosts healthy for the soak time), halts (so
    many failed that the threshold cannot be met), or waits."""
    size = len(observations)
    needed = needed_of(size, threshold)
    counts = {p: sum(1 for o in observations if o.progress is p) for p in Progress}
    failed = [o for o in observations if o.progress is Progress.FAILED]
    healthy = counts[Progress.HEALTHY]
    allowed = size - needed
    if failed and len(failed) > allowed:
        named = ", ".join(f"{o.host} ({o.detail})" for o in failed[:5])
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        reason = (
            f"wave {name}: {len(failed)} of {size} hosts failed ({named}{more}); at most "
            f"{allowed} may fail for a success threshold of {threshold:g}"
        )
        return WaveVerdict(size, needed, counts, Decision.HALT, reason)
    if healthy >= needed:
        reason = (
            f"wave {name}: {healthy} of {size} hosts applied and healthy for "
            f"{_duration(soak)} ({needed} needed)"
        )
        return WaveVerdict(size, needed, counts, Decision.PASS, reason)
    reason = (
        f"wave {name}: {healthy} of {size} hosts healthy for {_duration(soak)}, {needed} needed "
        f"({counts[Progress.SOAKING]} soaking, {counts[Progress.PENDING]} pending, "
        f"{len(failed)} failed, {counts[Progress.STALE]} stale)"
    )
    return WaveVerdict(size, needed, counts, Decision.WAIT, reason)


def _duration(seconds: int) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"
