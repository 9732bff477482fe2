"""``gitops build``."""

from __future__ import annotations

from gitops import output
from gitops.errors import ProblemsError
from gitops.publish import build as central


def build(request: central.Request, *, as_json: bool) -> int:
    outcome = central.build(request, progress=output.progress)
    if as_json:
        data = outcome.systems()
        data["failed"] = [
            {"host": f.host, "tree": f.tree, "error": f.error, "log_tail": f.log_tail}
            for f in outcome.failed
        ]
        data["unchanged"] = list(outcome.skipped)
        data["signed"] = outcome.signed
        data["durations"] = outcome.durations
        output.emit_json(data)
    else:
        for built in outcome.built:
            output.say(f"  {built.host}: {built.system} ({built.seconds:.1f}s)")
        where = f", signed and copied to {outcome.cache}" if outcome.cache else ""
        if outcome.signed and not outcome.cache:
            where = ", signed"
        output.say(
            f"main {outcome.source[:8]}: built {len(outcome.built)} systems{where}; "
            f"{len(outcome.skipped)} hosts unchanged"
            + (f"; systems file {request.systems}" if request.systems else "")
        )
    if outcome.failed:
        count = len(outcome.failed)
        raise ProblemsError(
            f"{count} host{'s' if count != 1 else ''} failed to build:",
            [f"{f.host}: {f.error}" for f in outcome.failed],
        )
    return 0
