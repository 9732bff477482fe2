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
from enum import StrEnum
from typing import Any

from gitops.fleet.model import Exemption, Host
from gitops.fleet.policies import Outcome, Policy, evaluate
from gitops.protocol import Report


class Exempt(StrEnum):
    """The answer of a host exempt from a policy (beside the policy's own outcomes)."""

    EXEMPT = "exempt"


Verdict = Outcome | Exempt  # what the site answers for a host and a policy that applies
VERDICTS: tuple[Verdict, ...] = (Outcome.PASS, Outcome.FAIL, Outcome.UNKNOWN, Exempt.EXEMPT)


@dataclass(frozen=True)
class Answer:
    policy: str
    outcome: Verdict  # policies that do not apply to the host are not listed
    exemption: Exemption | None = None
    expired_exemption: Exemption | None = None


@dataclass
class PolicySummary:
    policy: Policy
    counts: dict[Verdict, int] = field(default_factory=lambda: dict.fromkeys(VERDICTS, 0))
    failing: list[str] = field(default_factory=list)
    unknown: list[str] = field(default_factory=list)
    exempt: list[str] = field(default_factory=list)


def context(report: Report, now: datetime, site: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """What a policy's ``fact`` paths look into: the report as status.json has it, plus
    ``report.*`` and ``site``'s roots (``vulns.*``: sitegen/vulnscan.py) the site adds."""
    age = int((now - report.time).total_seconds())
    return {**report.to_dict(), **(site or {}), "report": {"age_seconds": age, "verified": True}}


def applies(policy: Policy, host: Host) -> bool:
    return policy.applies_to.matches(host.name, host.tags, host.profiles)


def answer(
    policies: Iterable[Policy],
    host: Host,
    report: Report | None,
    now: datetime,
    site: Mapping[str, Any] | None = None,
) -> tuple[Answer, ...]:
    """Each policy that applies to ``host``, asked of its newest verified ``report`` with
    the ``site`` facts (unknown to all without a report)."""
    today: date = now.date()
    exemptions = {e.policy: e for e in host.exemptions}
    ctx = context(report, now, site) if report is not None else None
    answers = []
    for policy in policies:
        if not applies(policy, host):
            continue
        exemption = exemptions.get(policy.name)
        if exemption is not None and exemption.expires >= today:
            answers.append(Answer(policy.name, Exempt.EXEMPT, exemption=exemption))
            continue
        outcome = evaluate(policy.condition, ctx) if ctx is not None else Outcome.UNKNOWN
        answers.append(Answer(policy.name, outcome, expired_exemption=exemption))
    return tuple(answers)


def failing(answers: Iterable[Answer]) -> list[str]:
    return [a.policy for a in answers if a.outcome is Outcome.FAIL]


CODES: dict[Verdict, str] = {
    Outcome.PASS: "p",
    Outcome.FAIL: "f",
    Outcome.UNKNOWN: "u",
    Exempt.EXEMPT: "e",
}
OUTCOMES = {code: outcome for outcome, code in CODES.items()}
NOT_APPLICABLE_CODE = "-"


def encode(policies: Sequence[Policy], answers: Iterable[Answer]) -> str:
    """One character per policy, in ``policies`` order: p, f, u, e, or - (does not apply)."""
    found = {a.policy: CODES[a.outcome] for a in answers}
    return "".join(found.get(p.name, NOT_APPLICABLE_CODE) for p in policies)


def decode(policies: Sequence[Policy], codes: str) -> dict[str, Verdict]:
    """policy name -> outcome, for the policies that apply."""
    return {p.name: OUTCOMES[c] for p, c in zip(policies, codes, strict=True) if c != "-"}


def summarize_codes(policies: Sequence[Policy], codes: Mapping[str, str]) -> list[PolicySummary]:
    """Pass/fail/unknown/exempt counts per policy, from the encoded answers the aggregate
    pages keep per host (hosts with the same answers counted together: a fleet has few
    distinct ones)."""
    summaries = [PolicySummary(p) for p in policies]
    alike: dict[str, list[str]] = {}
    for host, answers in codes.items():
        alike.setdefault(answers, []).append(host)
    for answers, hosts in alike.items():
        for summary, code in zip(summaries, answers, strict=True):
            if code == NOT_APPLICABLE_CODE:
                continue
            outcome = OUTCOMES[code]
            summary.counts[outcome] += len(hosts)
            if outcome is Outcome.FAIL:
                summary.failing.extend(hosts)
            elif outcome is Outcome.UNKNOWN:
                summary.unknown.extend(hosts)
            elif outcome is Exempt.EXEMPT:
                summary.exempt.extend(hosts)
    for summary in summaries:
        summary.failing.sort()
        summary.unknown.sort()
        summary.exempt.sort()
    return summaries
