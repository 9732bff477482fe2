"""``gitops plan`` and ``gitops publish``."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pygit2

from gitops import output
from gitops.errors import GitopsError
from gitops.protocol import DEPLOY_PREFIX
from gitops.publish import plan as publishing
from gitops.system import transport
from gitops.trust import commits, keys
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import SignatureError


def _plan_json(plan: publishing.Plan) -> dict[str, object]:
    return {
        "source": str(plan.source.id),
        "hosts": [
            {
                "host": h.host,
                "changed": h.changed,
                "previous": str(h.old_head) if h.old_head else None,
                "paths": list(h.changed_paths),
            }
            for h in plan.hosts
        ],
    }


def _print_plan(plan: publishing.Plan) -> None:
    changed = plan.changed
    output.say(
        f"main {plan.source.short_id}: {len(changed)} of {len(plan.hosts)} hosts would get a new deploy commit"
    )
    for host_plan in changed:
        listed = ", ".join(host_plan.changed_paths[:8])
        more = len(host_plan.changed_paths) - 8
        note = "new branch" if host_plan.old_head is None else "changed"
        output.say(
            f"  {host_plan.host} ({note}): {listed}" + (f", and {more} more" if more > 0 else "")
        )


def plan(repo: Path, source: str, hosts: list[str], *, as_json: bool) -> int:
    repository = commits.open_repository(repo)
    result = publishing.make_plan(repository, source, only=hosts)
    if as_json:
        output.emit_json(_plan_json(result))
    else:
        _print_plan(result)
    return 0


def _sync_from_remote(repository: pygit2.Repository, remote: str, trust: AllowedSigners) -> None:
    """Start from the remote's deploy heads, refusing any that were rewound or that a
    publisher did not sign (someone pushed to a deploy branch by hand)."""
    tracking = f"refs/gitops/publish/{hashlib.sha256(remote.encode()).hexdigest()[:16]}/"
    output.progress(f"fetching deploy branches from {remote}")
    transport.fetch(Path(repository.path), remote, [f"+{DEPLOY_PREFIX}*:{tracking}*"])
    updates: dict[str, tuple[pygit2.Oid | None, pygit2.Oid]] = {}
    for name in list(repository.references):
        if not name.startswith(tracking):
            continue
        local_name = DEPLOY_PREFIX + name.removeprefix(tracking)
        remote_head = commits.ref_target(repository, name)
        local_head = commits.ref_target(repository, local_name)
        assert remote_head is not None
        if local_head == remote_head:
            continue
        try:
            commits.verify_commit(repository, remote_head, trust)
        except SignatureError as err:
            raise GitopsError(
                f"{local_name} on {remote} has a head {str(remote_head)[:8]} that no publisher "
                f"signed ({err}): someone pushed to it by hand. Investigate, then put the last "
                f"good commit back with 'git push --force {remote} <good>:{local_name}'"
            ) from err
        if local_head is not None and not repository.descendant_of(remote_head, local_head):
            raise GitopsError(
                f"{local_name} on {remote} does not descend from the local one "
                f"({str(remote_head)[:8]} vs {str(local_head)[:8]}): it was rewound or rewritten; "
                "hosts will refuse it. Investigate before publishing"
            )
        updates[local_name] = (local_head, remote_head)
    commits.update_refs(repository, updates, message=f"gitops publish: sync from {remote}")


def publish_command_result(published: publishing.Published) -> dict[str, object]:
    data = _plan_json(published.plan)
    data["commits"] = {host: str(oid) for host, oid in published.commits.items()}
    return data


def publish(
    repo: Path,
    source: str,
    hosts: list[str],
    *,
    key_path: Path,
    push: bool,
    remote: str,
    as_json: bool,
) -> int:
    key = keys.load_signer(key_path)
    repository = commits.open_repository(repo)
    fleet = publishing.load_fleet_at(repository, commits.resolve_commit(repository, source))
    if push:
        _sync_from_remote(repository, remote, fleet.settings.publisher_trust())
    result = publishing.make_plan(repository, source, only=hosts, fleet=fleet)
    if not as_json:
        _print_plan(result)
    published = publishing.write_commits(repository, result, key, progress=output.progress)
    if push and published.commits:
        refspecs = [f"{published.commits[h]}:{DEPLOY_PREFIX}{h}" for h in sorted(published.commits)]
        output.progress(f"pushing {len(refspecs)} deploy branches to {remote} (atomic)")
        try:
            pushed = transport.push(Path(repository.path), remote, refspecs, atomic=True)
        except GitopsError:
            publishing.rollback_refs(repository, published)
            raise
        if not pushed.ok:
            publishing.rollback_refs(repository, published)
            refused = pushed.refused()
            details = "; ".join(f"{s.ref}: {s.summary}" for s in refused[:5]) or pushed.message
            raise GitopsError(
                f"{remote} refused the push, so nothing was published (local refs rolled back): {details}"
            )
    if as_json:
        output.emit_json(publish_command_result(published))
    else:
        where = f" and pushed to {remote}" if push and published.commits else ""
        output.say(f"published {len(published.commits)} deploy commits{where}")
    return 0
