"""``gitops plan`` and ``gitops publish``."""

from __future__ import annotations

from gitops import output
from gitops.errors import ProblemsError
from gitops.protocol import branch_name, deploy_ref
from gitops.publish import plan as publishing
from gitops.publish import recover as recovery
from gitops.publish import run
from gitops.publish.checks import Refusal


def _plan_json(plan: publishing.Plan) -> dict[str, object]:
    return {
        "source": str(plan.source.id),
        "hosts": [
            {
                "host": h.host,
                "changed": h.changed,
                "why": str(h.why),
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
        output.say(
            f"  {host_plan.host} ({host_plan.why}): {listed}"
            + (f", and {more} more" if more > 0 else "")
        )


def publish_command_result(outcome: run.Outcome) -> dict[str, object]:
    data = _plan_json(outcome.published.plan)
    data["commits"] = {host: str(oid) for host, oid in outcome.published.commits.items()}
    data["refused"] = [{"hosts": list(r.hosts), "reason": r.text} for r in outcome.refused]
    return data


def publish(request: run.Request, *, as_json: bool) -> int:
    outcome = run.publish(request, progress=output.progress)
    published = outcome.published
    if as_json:
        output.emit_json(publish_command_result(outcome))
    else:
        _print_plan(published.plan)
        where = f" and pushed to {request.remote}" if request.push and published.commits else ""
        output.say(f"published {len(published.commits)} deploy commits{where}")
    raise_if_refused(outcome.refused)
    return 0


def raise_if_refused(refused: tuple[Refusal, ...]) -> None:
    if not refused:
        return
    hosts = sorted(host for refusal in refused for host in refusal.hosts)
    shown = ", ".join(hosts[:10]) + (f" and {len(hosts) - 10} more" if len(hosts) > 10 else "")
    raise ProblemsError(
        f"{len(hosts)} host{'s' if len(hosts) != 1 else ''} not published ({shown}):",
        [refusal.text for refusal in refused],
    )


def recover(request: recovery.Request, *, as_json: bool) -> int:
    done = recovery.recover(request, progress=output.progress)
    if as_json:
        output.emit_json(
            {
                "host": request.host,
                "commit": str(done.commit),
                "recovers": done.supersedes,
                "parent": str(done.on_top_of) if done.on_top_of else None,
            }
        )
        return 0
    base = str(done.on_top_of)[:8] if done.on_top_of else "nothing (a new branch)"
    output.say(
        f"recovery commit {str(done.commit)[:8]} pushed to "
        f"{branch_name(deploy_ref(request.host))} on "
        f"{request.remote}, on top of {base}: it supersedes {done.supersedes[:8]}, which "
        f"{request.host} applied"
    )
    return 0
