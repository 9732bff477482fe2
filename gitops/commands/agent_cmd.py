"""``gitops agent once|run|trigger|status``."""

from __future__ import annotations

import argparse
import select
import sys
from collections.abc import Callable
from pathlib import Path

from gitops import output
from gitops.agent import config as agent_config
from gitops.agent.config import AgentConfig, load_config, parse_config
from gitops.agent.cycle import Cycle
from gitops.agent.loop import run_forever
from gitops.agent.mirror import Mirror
from gitops.agent.reporter import pending_reports
from gitops.agent.state import StateStore
from gitops.protocol import Result, format_time
from gitops.system import process

# Results after which `agent once` exits non-zero, so systemd shows the unit as failed.
FAILING_RESULTS = {
    Result.REJECTED,
    Result.BUILD_FAILED,
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
            return trigger(config, http=args.http, start_unit=args.start_unit)
        case "status":
            return status(config(), as_json=args.json)
    raise AssertionError(args.agent_command)


def once(config: AgentConfig, *, report: bool, retry: bool, as_json: bool) -> int:
    result = Cycle(config, force_report=report, retry=retry).run()
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


def _read_http_request() -> str:
    """The request line of an HTTP request on stdin (socket activation); '' if none."""
    ready, _, _ = select.select([sys.stdin], [], [], 5.0)
    if not ready:
        return ""
    line = sys.stdin.readline(8192)
    while True:  # drain the headers, up to the blank line
        ready, _, _ = select.select([sys.stdin], [], [], 1.0)
        header = sys.stdin.readline(8192) if ready else ""
        if not header.strip():
            break
    return line.strip()


def _http_response(status: bytes, body: bytes) -> None:
    """A minimal HTTP/1.0 answer on the socket (stdout under socket activation)."""
    head = (
        b"HTTP/1.0 " + status + b"\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nCache-Control: no-store\r\n\r\n"
    )
    sys.stdout.buffer.write(head + body)
    sys.stdout.buffer.flush()


def trigger(config: Callable[[], AgentConfig], *, http: bool, start_unit: str | None) -> int:
    if http:
        request = _read_http_request()
        method = request.split(" ", 1)[0] if request else ""
        if method not in ("GET", "POST", "HEAD"):
            _http_response(b"405 Method Not Allowed", b"")
            return 1
    if start_unit:
        process.run(["systemctl", "start", "--no-block", start_unit], check=True)
    else:
        settings = config()
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        settings.trigger_file.touch()
    message = "update requested: the agent will fetch, verify and apply now\n"
    if http:
        _http_response(b"200 OK", message.encode())
    else:
        output.say(message.strip())
    return 0


def status(config: AgentConfig, *, as_json: bool) -> int:
    state = StateStore(config.state_dir).load(config.host)
    pending = 0
    if (config.state_dir / "repo.git").exists():
        mirror = Mirror(config.state_dir, config.host)
        pending = len(pending_reports(mirror))
    data = {
        "host": config.host,
        "applied": state.applied if state else None,
        "applied_source": state.applied_source if state else None,
        "applied_store_path": state.applied_store_path if state else None,
        "last_report_time": format_time(state.last_report_time)
        if state and state.last_report_time
        else None,
        "last_result": state.last_report_key.split("|")[0]
        if state and state.last_report_key
        else None,
        "bad_commits": list(state.bad_commits) if state else [],
        "pending_reports": pending,
    }
    if as_json:
        output.emit_json(data)
        return 0
    if state is None:
        output.say(f"{config.host}: no cycle has run yet (state dir {config.state_dir})")
        return 0
    for key, value in data.items():
        output.say(f"{key.replace('_', ' ')}: {value if value not in (None, []) else '-'}")
    return 0
