"""The day-to-day work around a cycle's report: signed commands (:mod:`.commands`) and
reboots when needed and allowed (:mod:`.reboot`). The cycle calls :meth:`Chores.start`
after the deploy step, puts :meth:`Chores.acks` and :attr:`Chores.reboot_needed_since`
into its report, and calls :meth:`Chores.after_report` once the report was pushed.
:attr:`Chores.system` is the running system, read once after commands ran; the report and
the metrics of the cycle use it too."""

from __future__ import annotations

import logging
from datetime import datetime

import pygit2

from gitops.agent import facts, reboot
from gitops.agent.activate import Outcome
from gitops.agent.commands import Commands, read_control
from gitops.agent.config import AgentConfig
from gitops.agent.mirror import Mirror
from gitops.agent.reporter import PushOutcome
from gitops.agent.state import AgentState
from gitops.errors import GitopsError
from gitops.protocol import CommandAck, CommandName, Report, Result, SystemInfo
from gitops.system import host as system_host

log = logging.getLogger(__name__)

# Results whose deploy head passed verification (its commands may run even when its
# build failed); for the others, the applied commit's tree is used.
_VERIFIED = frozenset(
    {
        Result.APPLIED,
        Result.UNCHANGED,
        Result.BUILD_FAILED,
        Result.SWITCH_FAILED,
        Result.ROLLED_BACK,
    }
)


def verified_tree(mirror: Mirror, state: AgentState, outcome: Outcome) -> pygit2.Tree | None:
    """The tree commands and settings are read from: the verified head, else the applied commit."""
    candidates = []
    if outcome.seen is not None and outcome.result in _VERIFIED:
        candidates.append(str(outcome.seen))
    if state.applied is not None:
        candidates.append(state.applied)
    for oid in candidates:
        try:
            commit = mirror.repo.get(oid)
            if isinstance(commit, pygit2.Commit):
                return commit.tree
        except (KeyError, ValueError, pygit2.GitError):
            continue
    return None


class Chores:
    def __init__(
        self,
        config: AgentConfig,
        host: system_host.Host,
        commands: Commands,
        system: SystemInfo,
        assessment: reboot.Assessment,
    ) -> None:
        self.config = config
        self.host = host
        self.commands = commands
        self.system = system
        self.assessment = assessment

    @classmethod
    def start(
        cls, config: AgentConfig, mirror: Mirror, state: AgentState, outcome: Outcome, now: datetime
    ) -> Chores:
        host = system_host.for_root(config.root)
        tree = verified_tree(mirror, state, outcome)
        control = read_control(tree)
        commands = Commands(config, host, now)
        commands.run(tree, control)
        # Read once, after the commands ran; the report and the metrics use it too.
        system = facts.collect_system(config.root, config.system_profile)
        assessment = reboot.assess(config, system, state.applied_store_path, control, host, now)
        if assessment.needed_since is not None and not assessment.due:
            log.info("reboot needed (%s), not now: %s", assessment.why_needed, assessment.why_not)
        return cls(config, host, commands, system, assessment)

    @property
    def must_report(self) -> bool:
        return bool(self.commands.acks()) or self.assessment.due

    def acks(self) -> tuple[CommandAck, ...]:
        return self.commands.acks()

    @property
    def reboot_needed_since(self) -> datetime | None:
        return self.assessment.needed_since

    def reported(self, report: Report) -> None:
        self.commands.reported(report.commands)

    def after_report(self, push: PushOutcome | None) -> None:
        """Reboot or power off, now that the report saying so is on the server."""
        if push is None or not push.pushed:
            if self.commands.power_pending or self.assessment.due:
                log.warning("not rebooting: the report saying so is not pushed yet")
            return
        power = self.commands.take_power()
        try:
            if power is not None:
                self.host.wall(
                    f"gitops: {self.config.host}: {power.name} requested by signed command "
                    f"{power.command_id}. Save your work."
                )
                if power.name is CommandName.POWEROFF:
                    self.host.poweroff()
                else:
                    self.host.reboot()
            elif self.assessment.due:
                self.host.wall(reboot.notice(self.config.host, self.assessment.why_needed))
                self.host.reboot()
        except GitopsError as err:
            log.error("reboot failed: %s", err)
