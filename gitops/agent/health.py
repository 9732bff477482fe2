"""Is the system healthy after a switch? If not, the cycle goes back to the previous one.

Checks: no *newly* failed systemd units (units already failed before the switch are not
this deploy's fault), the git remote still reachable (a switch that breaks the network
would otherwise strand the host, as Bento's connectivity check guards against), and the
admin's own commands, each of which must exit 0.
"""

from __future__ import annotations

import logging
import shlex
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gitops.agent.config import HealthConfig
from gitops.errors import GitopsError
from gitops.protocol import deploy_ref
from gitops.system import process, transport

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class HealthResult:
    healthy: bool
    problems: tuple[str, ...] = ()
    skipped: tuple[str, ...] = ()


def systemd_running(root: Path) -> bool:
    """systemd manages this machine (not a container without it, not a fake root)."""
    if root != Path("/") or not Path("/run/systemd/system").is_dir():
        return False
    result = process.run(["systemctl", "is-system-running"], check=False)
    return result.stdout.strip() not in ("offline", "unknown", "")


def failed_units(root: Path) -> set[str] | None:
    """Names of failed units, or None when systemd does not run here."""
    if not systemd_running(root):
        return None
    result = process.run(
        ["systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"],
        check=False,
    )
    if result.returncode != 0:
        return None
    return {line.split()[0] for line in result.stdout.splitlines() if line.strip()}


def _settling_matters(config: HealthConfig, root: Path) -> bool:
    """The grace period lets units settle: it is waited only when a check looks at them
    (failed units under systemd, or the admin's commands)."""
    return bool(config.commands) or (config.failed_units and systemd_running(root))


def check(
    config: HealthConfig,
    *,
    root: Path,
    remote: str,
    host: str,
    credentials: transport.Credentials,
    failed_before: set[str] | None,
    sleep: Callable[[float], None],
) -> HealthResult:
    problems: list[str] = []
    skipped: list[str] = []
    if config.grace and _settling_matters(config, root):
        sleep(config.grace)
    if config.failed_units:
        after = failed_units(root)
        if after is None:
            skipped.append("failed units (systemd is not running here)")
        else:
            new = sorted(after - (failed_before or set()))
            if new:
                problems.append(f"units failed after the switch: {', '.join(new)}")
    if config.remote:
        try:
            transport.remote_head(remote, deploy_ref(host), env=credentials.env())
        except GitopsError as err:
            problems.append(f"the git remote is unreachable after the switch: {err}")
    for command in config.commands:
        label = shlex.join(command)
        label = label if len(label) <= 60 else label[:57] + "..."
        try:
            result = process.run(list(command), check=False, timeout=config.timeout)
        except GitopsError as err:
            problems.append(f"health command {label}: {err}")
            continue
        if result.returncode != 0:
            detail = process.tail(result.stderr or result.stdout or "", 3).replace("\n", " / ")
            problems.append(
                f"health check failed (exit {result.returncode}): {detail}"
                if detail
                else f"health command {label} exited {result.returncode}"
            )
    for item in skipped:
        log.info("health check skipped: %s", item)
    return HealthResult(not problems, tuple(problems), tuple(skipped))
