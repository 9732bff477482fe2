"""Is the system healthy after a switch (or after the reboot into a new generation)?

Two kinds of answer, because they call for different decisions:

* **unhealthy**: *newly* failed systemd units (units already failed before the switch are
  not this deploy's fault), or one of the admin's commands failing. The new system is
  bad: the cycle goes back and remembers the commit.
* **unreachable**: the git remote cannot be reached. A switch that breaks the network
  would strand the host (Bento's connectivity check guards against the same), but so
  does a Wi-Fi blip. The remote is retried every few seconds for ``remote_grace``
  seconds; only a remote that stays unreachable counts, and the caller decides what it
  means (see gitops.agent.activate).
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

REMOTE_RETRY_INTERVAL = 5  # seconds between two tries of an unreachable remote


@dataclass(frozen=True)
class HealthResult:
    problems: tuple[str, ...] = ()  # the system is unhealthy
    unreachable: str | None = None  # the git remote stayed unreachable: why
    skipped: tuple[str, ...] = ()

    @property
    def healthy(self) -> bool:
        return not self.problems and self.unreachable is None


@dataclass(frozen=True)
class Remote:
    """The git remote whose reachability is checked, and how to reach it."""

    url: str
    host: str
    credentials: transport.Credentials


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
    remote: Remote,
    failed_before: set[str] | None,
    sleep: Callable[[float], None],
) -> HealthResult:
    if config.grace and _settling_matters(config, root):
        sleep(config.grace)
    problems: list[str] = []
    skipped: list[str] = []
    if config.failed_units:
        after = failed_units(root)
        if after is None:
            skipped.append("failed units (systemd is not running here)")
        else:
            new = sorted(after - (failed_before or set()))
            if new:
                problems.append(f"units failed after the switch: {', '.join(new)}")
    problems += [p for command in config.commands if (p := _run_command(command, config.timeout))]
    unreachable = unreachable_for(config.remote_grace, remote, sleep) if config.remote else None
    for item in skipped:
        log.info("health check skipped: %s", item)
    return HealthResult(tuple(problems), unreachable, tuple(skipped))


def unreachable_for(grace: int, remote: Remote, sleep: Callable[[float], None]) -> str | None:
    """Why the remote stayed unreachable for ``grace`` seconds of retries; None once it
    answers."""
    tries = 1 + grace // REMOTE_RETRY_INTERVAL
    error = ""
    for attempt in range(tries):
        if attempt:
            sleep(REMOTE_RETRY_INTERVAL)
        try:
            transport.remote_head(remote.url, deploy_ref(remote.host), env=remote.credentials.env())
        except GitopsError as err:
            error = str(err)
            log.info("the git remote is unreachable (try %d of %d): %s", attempt + 1, tries, err)
            continue
        return None
    return error


def _run_command(command: tuple[str, ...], timeout: int) -> str | None:
    """What is wrong according to one of the admin's health commands, if anything."""
    label = shlex.join(command)
    label = label if len(label) <= 60 else label[:57] + "..."
    try:
        result = process.run(list(command), check=False, timeout=timeout)
    except GitopsError as err:
        return f"health command {label}: {err}"
    if result.returncode == 0:
        return None
    detail = process.tail(result.stderr or result.stdout or "", 3).replace("\n", " / ")
    if detail:
        return f"health check failed (exit {result.returncode}): {detail}"
    return f"health command {label} exited {result.returncode}"
