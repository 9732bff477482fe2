"""Policies × hosts: each policy asked of each host's newest *verified* report.

A host with no verified report answers ``unknown`` to everything (unverified data never
counts as compliant). An exemption in host.yaml turns a policy into ``exempt`` for that
host until its ``expires`` date has passed; an expired exemption is shown, but no longer
applies.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from gitops.fleet.model import Exemption, Host
from gitops.fleet.policies import Outcome, Policy, evaluate

EXEMPT = "exempt"


@dataclass(frozen=True)
class Answer:
    policy: str
    outcome: str  # pass, fail, unknown, exempt (n/a answers are not listed)
    exemption: Exemption | None = None
    expired_exemption: Exemption | None = None


@dataclass
class PolicySummary:
    policy: Policy
    counts: dict[str, int] = field(
        default_factory=lambda: {"pass": 0, "fail": 0, "unknown": 0, EXEMPT: 0}
    )
    failing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)


def context(status: Mapping[str, Any], report_time: datetime, now: datetime) -> dict[str, Any]:
    """What a policy's ``fact`` paths look into: the report, plus ``report.*`` the site adds."""
    return {
        **status,
        "report": {"age_seconds": int((now - report_time).total_seconds()), "verified": True},
    }


def applies(policy: Policy, host: Host) -> bool:
    return policy.applies_to.matches(host.name, host.tags, host.profiles)


def answer(
    policies: Iterable[Policy],
    host: Host,
    status: Mapping[str, Any] | None,
    report_time: datetime | None,
    now: datetime,
) -> tuple[Answer, ...]:
    today: date = now.date()
    exemptions = {e.policy: e for e in host.exemptions}
    ctx = context(status, report_time, now) if status is not None and report_time else None
    answers = []
    for policy in policies:
        if not applies(policy, host):
            continue
        exemption = exemptions.get(policy.name)
        if exemption is not None and exemption.expires >= today:
            answers.append(Answer(policy.name, EXEMPT, exemption=exemption))
            continue
        outcome = str(evaluate(policy.condition, ctx)) if ctx is not None else str(Outcome.UNKNOWN)
        answers.append(Answer(policy.name, outcome, expired_exemption=exemption))
    return tuple(answers)


def failing(answers: Iterable[Answer]) -> list[str]:
    return [a.policy for a in answers if a.outcome == str(Outcome.FAIL)]


CODES = {"pass": "p", "fail": "f", "unknown": "u", EXEMPT: "e"}
OUTCOMES = {code: outcome for outcome, code in CODES.items()}
NOT_APPLICABLE_CODE = "-"


def encode(policies: Sequence[Policy], answers: Iterable[Answer]) -> str:
    """One character per policy, in ``policies`` order: p, f, u, e, or - (does not apply)."""
    found = {a.policy: CODES[a.outcome] for a in answers}
    return "".join(found.get(p.name, NOT_APPLICABLE_CODE) for p in policies)


def decode(policies: Sequence[Policy], codes: str) -> dict[str, str]:
    """policy name -> outcome, for the policies that apply."""
    return {p.name: OUTCOMES[c] for p, c in zip(policies, codes, strict=True) if c != "-"}


def summarize_codes(policies: Sequence[Policy], codes: Mapping[str, str]) -> list[PolicySummary]:
    """Pass/fail/unknown/exempt counts per policy, from the encoded answers the aggregate
    pages keep per host."""
    summaries = [PolicySummary(p) for p in policies]
    for host in sorted(codes):
        for summary, code in zip(summaries, codes[host], strict=True):
            if code == NOT_APPLICABLE_CODE:
                continue
            outcome = OUTCOMES[code]
            summary.counts[outcome] += 1
            if code == "f":
                summary.failing.append(host)
            elif code == "u":
                summary.unknown.append(host)
            elif code == "e":
                summary.exempt.append(host)
    return summaries
