"""``gitops plan``: what publishing a main commit would change, for a terminal, a
script (``--format json``) or a pull-request comment (``--format markdown``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

from gitops import output
from gitops.publish import review as reviewing
from gitops.publish.review import HostReview, Review, Verdict
from gitops.trust import commits

log = logging.getLogger(__name__)

MARKER = "<!-- gitops-plan -->"  # lets a CI job find (and replace) its earlier comment
LISTED_PATHS = 8


class Format(StrEnum):
    TEXT = "text"
    JSON = "json"
    MARKDOWN = "markdown"


def plan(
    repo: Path,
    source: str,
    hosts: Sequence[str],
    *,
    fmt: Format,
    remote: str | None = None,
) -> int:
    repository = commits.open_repository(repo)
    result = reviewing.review(repository, source, only=hosts, remote=remote, progress=log.info)
    match fmt:
        case Format.JSON:
            output.emit_json(plan_json(result))
        case Format.MARKDOWN:
            output.say(markdown(result), stream=None)
        case Format.TEXT:
            for line in text_lines(result):
                output.say(line)
    return 0


def plan_json(result: Review) -> dict[str, object]:
    return {
        "source": str(result.plan.source.id),
        "heads_from": result.heads_from,
        "nix_normalised": result.normalised,
        "note": result.fetch_hint,
        "hosts": [
            {
                "host": h.host,
                "changed": h.plan.changed,
                "why": str(h.plan.why),
                "verdict": str(h.verdict),
                "changes_system": h.verdict.changes_system,
                "previous": str(h.plan.old_head) if h.plan.old_head else None,
                "paths": list(h.plan.changed_paths),
                "formatting_only_paths": list(h.cosmetic),
            }
            for h in result.hosts
        ],
    }


def _listed(paths: Sequence[str], limit: int = LISTED_PATHS) -> str:
    more = len(paths) - limit
    return ", ".join(paths[:limit]) + (f", and {more} more" if more > 0 else "")


def text_lines(result: Review) -> list[str]:
    changed = [h for h in result.hosts if h.plan.changed]
    formatting = result.by_verdict(Verdict.FORMATTING)
    summary = (
        f"main {result.plan.source.short_id}: {len(changed)} of {len(result.hosts)} hosts "
        "would get a new deploy commit"
    )
    if formatting:
        summary += f", {len(formatting)} of them for comments or formatting only"
    if result.heads_from != reviewing.LOCAL_HEADS:
        summary += f" (deploy heads from {result.heads_from})"
    lines = [summary]
    for host in changed:
        if host.verdict is Verdict.FORMATTING:
            lines.append(
                f"  {host.host} ({host.verdict}): {_listed(host.cosmetic)}; "
                "same parsed .nix, so the same system"
            )
        else:
            lines.append(f"  {host.host} ({host.verdict}): {_listed(host.plan.changed_paths)}")
    if result.fetch_hint is not None:
        lines.append(f"note: {result.fetch_hint}")
    return lines


# -- markdown, for a pull-request comment ------------------------------------------------

_SECTIONS = (
    (Verdict.CHANGED, "Changed", "the deploy tree changes in a way that can change the system"),
    (Verdict.NEW, "New", "no deploy branch yet: the first deploy commit"),
    (Verdict.RECOVER, "Recovery", "supersedes a commit the server lost"),
    (
        Verdict.FORMATTING,
        "Comments or formatting only",
        "only comments or layout of .nix files changed (the same parsed expression); "
        "publish writes a deploy commit that builds the same system",
    ),
    (Verdict.RENEW, "Renews expiry", "nothing changed; a heartbeat commit renews the expiry"),
)


def _code(text: str) -> str:
    return "`" + text.replace("`", "'") + "`"


def _groups(hosts: Sequence[HostReview]) -> list[tuple[tuple[str, ...], list[str]]]:
    """Hosts grouped by the same list of paths, biggest group first."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for host in hosts:
        paths = host.cosmetic if host.verdict is Verdict.FORMATTING else host.plan.changed_paths
        groups.setdefault(paths, []).append(host.host)
    return sorted(groups.items(), key=lambda item: (-len(item[1]), item[1]))


def _plural(count: int, word: str) -> str:
    return f"{count} {word}{'' if count == 1 else 's'}"


def markdown(result: Review) -> str:
    source = result.plan.source
    subject = source.message.strip().splitlines()[0] if source.message.strip() else ""
    changing = [h for h in result.hosts if h.verdict.changes_system]
    heads = (
        "this clone's deploy branches"
        if result.heads_from == reviewing.LOCAL_HEADS
        else f"the deploy branches on {_code(result.heads_from)}"
    )
    lines = [
        MARKER,
        "### gitops plan",
        "",
        f"**{len(changing)} of {_plural(len(result.hosts), 'host')} change** with "
        f"{_code(source.short_id)}"
        + (f" ({subject.replace('|', '/')})" if subject else "")
        + f", compared with {heads}.",
        "",
    ]
    if result.fetch_hint is not None:
        lines += [f"> **Note:** {result.fetch_hint}", ""]
    lines += ["| | hosts |", "| --- | ---: |"]
    for verdict, title, _ in (*_SECTIONS, (Verdict.UNCHANGED, "Unchanged", "")):
        count = len(result.by_verdict(verdict))
        if count or verdict in (Verdict.CHANGED, Verdict.NEW, Verdict.UNCHANGED):
            lines.append(f"| {title.lower()} | {count} |")
    lines.append("")
    for verdict, title, why in _SECTIONS:
        hosts = result.by_verdict(verdict)
        if not hosts:
            continue
        lines += [f"#### {title}: {_plural(len(hosts), 'host')}", "", f"_{why}_", ""]
        for paths, names in _groups(hosts):
            summary = ", ".join(f"<b>{name}</b>" for name in names[:20])
            if len(names) > 20:
                summary += f" and {len(names) - 20} more"
            lines += [
                f"<details><summary>{summary}: {_plural(len(paths), 'file')}</summary>",
                "",
                *(f"- {_code(path)}" for path in paths[:200]),
                *([f"- and {len(paths) - 200} more"] if len(paths) > 200 else []),
                "",
                "</details>",
                "",
            ]
    unchanged = result.by_verdict(Verdict.UNCHANGED)
    if unchanged:
        lines += [
            f"<details><summary>Unchanged: {_plural(len(unchanged), 'host')}</summary>",
            "",
            ", ".join(h.host for h in unchanged),
            "",
            "</details>",
            "",
        ]
    lines.append(
        "<sub>Deploy trees compared"
        + (
            "; .nix files compared as parsed (nix-instantiate --parse)"
            if result.normalised
            else "; .nix files compared byte for byte (nix-instantiate not found)"
        )
        + ". Built systems are not compared here.</sub>"
    )
    return "\n".join(lines)
