"""``gitops agent once|run|trigger|status``."""

from __future__ import annotations

import argparse
import functools
import os
from pathlib import Path

from gitops import output
from gitops.agent import config as agent_config
from gitops.agent import status as agent_status
from gitops.agent import trigger as local_trigger
from gitops.agent.config import AgentConfig, load_config, parse_config
from gitops.agent.loop import run_cycle, run_forever
from gitops.agent.mirror import Mirror
from gitops.agent.reporter import pending_reports
from gitops.agent.state import StateStore
from gitops.errors import GitopsError
from gitops.protocol import Result

# Results after which `agent once` exits non-zero, so systemd shows the unit as failed.
FAILING_RESULTS = {
    Result.REJECTED,
    Result.BUILD_FAILED,
    Result.SUBSTITUTE_FAILED,
    Result.SWITCH_FAILED,
    Result.ROLLED_BACK,
    Result.FETCH_FAILED,
    Result.STALE_PUBLISHER,
    Result.DEPLOY_MISSING,
    Result.MISCONFIGURED,
}


OVERRIDES = (
    "host",
    "remote",
    "trusted_publishers",
    "signing_key",
    "state_dir",
    "system_profile",
    "action",
)


def _config(path: Path | None, overrides: dict[str, object] | None = None) -> AgentConfig:
    """The configuration file, with flags on top; flags alone suffice when there is no
    file (and none was asked for)."""
    given = {k: v for k, v in (overrides or {}).items() if v is not None}
    if path is None and given and not agent_config.DEFAULT_CONFIG.exists():
        return parse_config("", "command-line flags", given)
    return load_config(path or agent_config.DEFAULT_CONFIG, given)


def dispatch(args: argparse.Namespace) -> int:
    overrides = {name: getattr(args, name, None) for name in OVERRIDES}

    def config() -> AgentConfig:
        return _config(args.config, overrides)

    match args.agent_command:
        case "once":
            return once(config(), report=args.report, retry=args.retry, as_json=args.json)
        case "run":
            return run_forever(config())
        case "trigger":
            return trigger(config(), http=args.http, start_unit=args.start_unit)
        case "status":
            return status(config(), as_json=args.json)
    raise AssertionError(args.agent_command)


def once(config: AgentConfig, *, report: bool, retry: bool, as_json: bool) -> int:
    result = run_cycle(config, force_report=report, retry=retry)
    if as_json:
        output.emit_json(
            {
                "host": config.host,
                "result": str(result.result),
                "reason": result.reason,
                "deploy_seen": result.deploy_seen,
                "reported": result.report is not None,
                "pushed": None if result.push is None else result.push.pushed,
                "pending_reports": 0 if result.push is None else result.push.pending,
            }
        )
    else:
        output.say(f"{config.host}: {result.result}: {result.reason}")
        if result.push is not None and not result.push.pushed:
            output.say(f"  {result.push.pending} report(s) not pushed yet: {result.push.message}")
    return 1 if result.result in FAILING_RESULTS else 0


def trigger(config: AgentConfig, *, http: bool, start_unit: str | None) -> int:
    if http:
        fire = functools.partial(
            local_trigger.request_cycle,
            config.trigger_file,
            start_unit,
            min_interval=local_trigger.MIN_INTERVAL,
        )
        return 0 if local_trigger.answer_on_stdin(fire) else 1
    local_trigger.request_cycle(config.trigger_file, start_unit)
    output.say(local_trigger.ACCEPTED)
    return 0


def status(config: AgentConfig, *, as_json: bool) -> int:
    summary = agent_status.read(config.status_file) or _status_from_state(config)
    if as_json:
        output.emit_json(summary.to_dict())
        return 0
    if summary.result is None:
        output.say(f"{config.host}: no cycle has run yet (state dir {config.state_dir})")
    else:
        output.say(f"{config.host}: {summary.result}: {summary.reason}")
    for key, value in summary.to_dict().items():
        if key not in ("host", "result", "reason", "schema"):
            output.say(f"{key.replace('_', ' ')}: {value if value not in (None, []) else '-'}")
    return 0


def _status_from_state(config: AgentConfig) -> agent_status.Status:
    """Before the first summary: what root can read from the state itself."""
    store = StateStore(config.state_dir)
    hidden = not os.access(config.state_dir, os.X_OK) or (
        store.exists() and not os.access(store.path, os.R_OK)
    )
    if config.state_dir.exists() and hidden:
        raise GitopsError(
            f"{config.status_file}: no status summary yet, and the agent's state is "
            "readable by root only; it is written after the next cycle, or run "
            "'sudo gitops agent status'"
        )
    state = store.load(config.host)
    pending = 0
    if (config.state_dir / "repo.git").exists():
        pending = len(pending_reports(Mirror(config.state_dir, config.host)))
    return agent_status.Status.of_state(state, config.host, pending)
