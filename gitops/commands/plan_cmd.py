"""``gitops plan``: what publishing a main commit would change, for a terminal, a
script (``--format json``) or a pull-request comment (``--format markdown``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from enum import StrEnum
from pathlib import Path

from gitops import output
from gitops.publish import build as central
from gitops.publish import closures
from gitops.publish import review as reviewing
from gitops.publish.closures import SystemChange
from gitops.publish.review import HostReview, Review, Verdict
from gitops.system.closure_diff import ClosureDiff, PackageChange, format_size
from gitops.trust import commits

log = logging.getLogger(__name__)

MARKER = "<!-- gitops-plan -->"  # lets a CI job find (and replace) its earlier comment
LISTED_PATHS = 8
LISTED_PACKAGES = 40  # per host in text, per group in markdown
LISTED_NOTES = 50


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
    systems: Path | None = None,
) -> int:
    built = central.read_systems(systems) if systems is not None else None
    repository = commits.open_repository(repo)
    result = reviewing.review(
        repository,
        source,
        only=hosts,
        remote=remote,
        progress=log.info,
        systems=built,
        systems_file=str(systems) if systems is not None else None,
    )
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
        "systems_file": result.systems_file,
        "closure_totals": _totals_json(result) if result.systems_file is not None else None,
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
                "system": _system_json(h.system) if h.system is not None else None,
            }
            for h in result.hosts
        ],
    }


def _change_json(change: PackageChange) -> dict[str, object]:
    return {
        "package": change.package,
        "kind": str(change.kind),
        "old": list(change.old),
        "new": list(change.new),
        "size_delta": change.size_delta,
    }


def _system_json(system: SystemChange) -> dict[str, object]:
    return {
        "previous": system.old,
        "new": system.new,
        "same": system.same,
        "note": system.note,
        "summary": system.diff.summary() if system.diff is not None else None,
        "size_delta": system.diff.size_delta if system.diff is not None else None,
        "changes": (
            [_change_json(c) for c in system.diff.changes] if system.diff is not None else None
        ),
    }


def _system_changes(result: Review) -> dict[str, SystemChange]:
    return {h.host: h.system for h in result.hosts if h.system is not None}


def _totals_json(result: Review) -> dict[str, int]:
    totals = closures.totals(_system_changes(result))
    return {
        "hosts_diffed": totals.diffed,
        "hosts_same_system": totals.same,
        "hosts_without_diff": totals.without,
        "added": totals.added,
        "removed": totals.removed,
        "version_changes": totals.versions,
        "size_changes": totals.sizes,
        "size_delta": totals.size_delta,
    }


def totals_line(result: Review) -> str:
    """``built systems: 2 hosts diffed (3 added, 1 version change, +1.2 MiB), 1 same
    system, 1 without a closure diff``."""
    totals = closures.totals(_system_changes(result))
    packages = ClosureDiff(
        tuple(
            change
            for h in result.hosts
            if h.system is not None and h.system.diff is not None
            for change in h.system.diff.changes
        )
    )
    parts = [f"{_plural(totals.diffed, 'host')} diffed ({packages.summary()})"]
    if totals.same:
        parts.append(f"{totals.same} same system")
    if totals.without:
        parts.append(f"{totals.without} without a closure diff")
    return "built systems: " + ", ".join(parts)


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
    same = result.by_verdict(Verdict.SAME_SYSTEM)
    if same:
        summary += f", {len(same)} of them with the system already published"
    if result.heads_from != reviewing.LOCAL_HEADS:
        summary += f" (deploy heads from {result.heads_from})"
    lines = [summary]
    for host in changed:
        if host.verdict is Verdict.FORMATTING:
            lines.append(
                f"  {host.host} ({host.verdict}): {_listed(host.cosmetic)}; "
                "same parsed .nix, so the same system"
            )
        elif host.verdict is Verdict.SAME_SYSTEM:
            lines.append(
                f"  {host.host} ({host.verdict}): {_listed(host.plan.changed_paths)}; "
                "builds the system already published"
            )
        else:
            lines.append(f"  {host.host} ({host.verdict}): {_listed(host.plan.changed_paths)}")
        lines += _system_lines(host.system)
    if result.systems_file is not None:
        lines.append(totals_line(result))
    if result.fetch_hint is not None:
        lines.append(f"note: {result.fetch_hint}")
    return lines


def _system_lines(system: SystemChange | None) -> list[str]:
    if system is None or system.same:
        return []
    if system.diff is None:
        return [f"    {system.note}"] if system.note else []
    changes = system.diff.changes
    lines = [f"    system: {system.diff.summary()}"]
    lines += [f"      {change.describe()}" for change in changes[:LISTED_PACKAGES]]
    if len(changes) > LISTED_PACKAGES:
        lines.append(f"      and {len(changes) - LISTED_PACKAGES} more")
    return lines


# -- markdown, for a pull-request comment ------------------------------------------------

_SECTIONS = (
    (Verdict.CHANGED, "Changed", "the deploy tree changes in a way that can change the system"),
    (Verdict.NEW, "New", "no deploy branch yet: the first deploy commit"),
    (Verdict.RECOVER, "Recovery", "supersedes a commit the server lost"),
    (
        Verdict.SAME_SYSTEM,
        "Same system",
        "the deploy tree changes, but the system built from it is the one already "
        "published (the built toplevels are the same store path); nothing to switch",
    ),
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


def _names(names: list[str]) -> str:
    """The first 20 host names, in bold, and how many more."""
    summary = ", ".join(f"<b>{name}</b>" for name in names[:20])
    return summary + (f" and {len(names) - 20} more" if len(names) > 20 else "")


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
            summary = _names(names)
            lines += [
                f"<details><summary>{summary}: {_plural(len(paths), 'file')}</summary>",
                "",
                *(f"- {_code(path)}" for path in paths[:200]),
                *([f"- and {len(paths) - 200} more"] if len(paths) > 200 else []),
                "",
                "</details>",
                "",
            ]
    if result.systems_file is not None:
        lines += _closures_markdown(result)
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
        + (
            f"; built systems compared from {_code(result.systems_file)} "
            "(nix store diff-closures).</sub>"
            if result.systems_file is not None
            else ". Built systems are not compared here.</sub>"
        )
    )
    return "\n".join(lines)


def _closures_markdown(result: Review) -> list[str]:
    """Per host, what changes in its system: hosts with the same package changes share
    one collapsible block with a table; the hosts with no diff are listed with why."""
    lines = ["#### What changes in each system", "", _capitalised(totals_line(result)), ""]
    groups: dict[tuple[PackageChange, ...], list[str]] = {}
    notes: list[str] = []
    for host in result.hosts:
        system = host.system
        if system is None or system.same:
            continue
        if system.diff is not None:
            groups.setdefault(system.diff.changes, []).append(host.host)
        elif system.note is not None:
            notes.append(f"- **{host.host}**: {system.note.replace('|', '/')}")
    for changes, names in sorted(groups.items(), key=lambda item: (-len(item[1]), item[1])):
        summary = _names(names)
        lines += [
            f"<details><summary>{summary}: {ClosureDiff(changes).summary()}</summary>",
            "",
        ]
        if changes:
            lines += ["| package | before | after | size |", "| --- | --- | --- | ---: |"]
            lines += [
                f"| {_code(c.package)} | {_versions(c.old, c)} | {_versions(c.new, c)} | "
                f"{format_size(c.size_delta)} |"
                for c in changes[:LISTED_PACKAGES]
            ]
            if len(changes) > LISTED_PACKAGES:
                lines.append(f"| and {len(changes) - LISTED_PACKAGES} more | | | |")
        lines += ["", "</details>", ""]
    if notes:
        lines += notes[:LISTED_NOTES]
        if len(notes) > LISTED_NOTES:
            lines.append(f"- and {len(notes) - LISTED_NOTES} more hosts with no closure diff")
        lines.append("")
    return lines


def _capitalised(text: str) -> str:
    return text[:1].upper() + text[1:]


def _versions(versions: tuple[str, ...], change: PackageChange) -> str:
    if not versions:
        return "" if not change.old and not change.new else "∅"
    return ", ".join(v or "ε" for v in versions)
