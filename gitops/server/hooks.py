"""git's pre-receive and post-receive hooks of every server repository.

pre-receive decides: each ref update is checked (gitops/server/checks.py) for the
identity that ``serve`` put in the environment; if any is refused, git updates nothing
and the pusher reads one ``remote: gitops: <branch>: <reason>`` line per refusal.

post-receive moves what was accepted: a report pushed to ``hosts/<host>.git`` is fanned
into fleet.git (for the site and the publisher); a deploy branch pushed to fleet.git is
handed to its host's repository; a new main is followed by a sync (new hosts get a
repository and a key, removed hosts lose both).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import MAIN_REF, deploy_ref, reports_ref
from gitops.server.layout import IDENTITY_ENV, Identity, Layout, RepoName, Role
from gitops.server.transfer import Move, fast_forward
from gitops.server.updates import Update, deploy_host

# The checks (signatures, YAML, the fleet model) are imported where they are used: a
# report's post-receive, a new process on every push, needs none of them.

Rule = Callable[[Update], str | None]
_QUARANTINE_ENV = "GIT_QUARANTINE_PATH"  # where receive-pack keeps the pushed objects


def _open_pushed(git_dir: Path, environ: Mapping[str, str]) -> pygit2.Repository:
    """The repository with the pushed objects, which wait in quarantine until accepted."""
    repo = pygit2.Repository(str(git_dir))
    quarantine = environ.get(_QUARANTINE_ENV)
    if quarantine:
        repo.odb.add_disk_alternate(quarantine)
    return repo


def _host_rule(
    layout: Layout, repo: pygit2.Repository, name: RepoName, who: Identity, now: datetime
) -> Rule:
    from gitops.server import checks
    from gitops.server.mainview import MainView

    host = name.host
    assert host is not None
    if who != Identity(Role.HOST, host):
        return lambda _: f"only host {host} pushes to {name}"
    key = MainView.open(pygit2.Repository(str(layout.fleet))).host_key(host)
    return lambda update: checks.check_report_update(repo, update, host=host, key=key, now=now)


def _fleet_rule(layout: Layout, repo: pygit2.Repository, who: Identity, now: datetime) -> Rule:
    from gitops.server import checks
    from gitops.server.config import ServerConfig
    from gitops.server.mainview import MainView

    match who.role:
        case Role.HOST:
            return lambda _: f"host {who.name} pushes its reports to hosts/{who.name}.git"
        case Role.PUBLISHER:
            trust = MainView.open(repo).publisher_trust()
            return lambda update: checks.check_deploy_update(repo, update, trust=trust, now=now)
        case Role.ADMIN:
            config = ServerConfig.load(layout.config_file)
            return lambda update: checks.check_main_update(repo, update, config=config, now=now)


def _rule(layout: Layout, git_dir: Path, environ: Mapping[str, str], now: datetime) -> Rule:
    name = layout.name_of(git_dir)
    if name is None:
        raise GitopsError(f"{git_dir} is not a repository of the gitops server in {layout.root}")
    identity = environ.get(IDENTITY_ENV)
    if not identity:
        raise GitopsError(
            "pushes are accepted only through sshd's forced command (gitops server serve)"
        )
    who = Identity.parse(identity)
    repo = _open_pushed(git_dir, environ)
    if name.host is not None:
        return _host_rule(layout, repo, name, who, now)
    return _fleet_rule(layout, repo, who, now)


def pre_receive(
    layout: Layout,
    git_dir: Path,
    environ: Mapping[str, str],
    updates: list[Update],
    now: datetime | None = None,
) -> list[str]:
    """One line per refused update; an empty list accepts the push."""
    from gitops.server.checks import archive_refusal, enrolment_refusal, refusal_lines

    try:
        rule = _rule(layout, git_dir, environ, now or datetime.now(UTC))
        refused = [
            (update, reason)
            for update in updates
            if (reason := archive_refusal(update) or enrolment_refusal(update) or rule(update))
        ]
    except GitopsError as err:
        refused = [(update, str(err)) for update in updates]
    return refusal_lines(refused)


# -- post-receive ----------------------------------------------------------------------


def _fan_in(layout: Layout, host: str, updates: list[Update]) -> list[str]:
    pushed = [u for u in updates if u.ref == reports_ref(host) and u.new is not None]
    if not pushed:
        return []
    assert pushed[-1].new is not None
    source = pygit2.Repository(str(layout.host_repo(host)))
    fleet = pygit2.Repository(str(layout.fleet))
    moved = fast_forward(source, fleet, reports_ref(host), pushed[-1].new)
    if moved is Move.DIVERGED:
        return [
            f"gitops: warning: reports/{host} in fleet.git has diverged; "
            "an admin runs 'gitops server sync' to see why"
        ]
    return []


def _hand_over(layout: Layout, updates: list[Update]) -> list[str]:
    fleet = pygit2.Repository(str(layout.fleet))
    handed: list[str] = []
    waiting: list[str] = []
    diverged: list[str] = []
    for update in updates:
        host = deploy_host(update.ref)
        if host is None or update.new is None:
            continue
        path = layout.host_repo(host)
        if not path.is_dir():
            waiting.append(host)
            continue
        moved = fast_forward(fleet, pygit2.Repository(str(path)), deploy_ref(host), update.new)
        if moved is Move.UPDATED:
            handed.append(host)
        elif moved is Move.DIVERGED:
            diverged.append(host)
    lines = []
    if handed:
        lines.append(f"gitops: {len(handed)} deploy branches handed to their hosts' repositories")
    if diverged:
        lines.append(
            f"gitops: warning: deploy/ of {', '.join(diverged)} differs from the host's "
            "repository and neither descends from the other: not handed over; an admin "
            "runs 'gitops server sync' to see why"
        )
    if waiting:
        lines.append(
            f"gitops: no repository yet for {', '.join(waiting)}: 'gitops server sync' "
            "creates one when the host is in main"
        )
    return lines


def post_receive(layout: Layout, git_dir: Path, updates: list[Update]) -> list[str]:
    """What was accepted goes where it is read; the lines tell the pusher."""
    name = layout.name_of(git_dir)
    if name is None:
        return []
    if name.host is not None:
        return _fan_in(layout, name.host, updates)
    lines = _hand_over(layout, updates)
    if any(u.ref == MAIN_REF and u.new is not None for u in updates):
        from gitops.server import sync

        result = sync.sync(layout, fetch=False)
        lines += [f"gitops: {line}" for line in result.lines()]
    return lines
