"""``gitops plan`` and ``gitops publish``."""

from __future__ import annotations

from pathlib import Path

from gitops import output
from gitops.publish import plan as publishing
from gitops.publish import run
from gitops.trust import commits


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


def publish_command_result(published: publishing.Published) -> dict[str, object]:
    data = _plan_json(published.plan)
    data["commits"] = {host: str(oid) for host, oid in published.commits.items()}
    return data


def publish(request: run.Request, *, as_json: bool) -> int:
    published = run.publish(request, progress=output.progress)
    if as_json:
        output.emit_json(publish_command_result(published))
        return 0
    _print_plan(published.plan)
    where = f" and pushed to {request.remote}" if request.push and published.commits else ""
    output.say(f"published {len(published.commits)} deploy commits{where}")
    return 0
