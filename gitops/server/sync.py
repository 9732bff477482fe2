"""``gitops server init`` and ``gitops server sync``: the server directory, made from main.

``sync`` reads main's ``fleet.yaml`` and ``hosts/*/host.yaml`` in fleet.git and makes the
directory agree with them: one repository per host (new hosts get one, removed hosts'
repositories move to ``retired/``), each host's ``deploy/<host>`` handed over and its
``reports/<host>`` fanned in, the hooks, and ``authorized_keys`` (a host key, a publisher
key from fleet.yaml, an admin key from server.yaml: each with its forced command). Run
it again and nothing changes; every file is replaced atomically; a second sync waits for
the first. Keys are revoked before a repository is retired and granted after one is made.
"""

from __future__ import annotations

import contextlib
import fcntl
import getpass
import os
import re
import shutil
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pygit2

from gitops.errors import GitopsError
from gitops.fleet.schema import Problems
from gitops.protocol import MAIN_REF, deploy_ref, reports_ref
from gitops.server.config import MainPolicy, ServerConfig
from gitops.server.layout import (
    QUEUE_PREFIX,
    SLOT_PREFIX,
    Identity,
    Layout,
    Role,
    is_principal,
)
from gitops.server.mainview import MainView
from gitops.server.transfer import Move, fast_forward
from gitops.system import atomic, transport
from gitops.trust import commits
from gitops.trust.sshsig import PublicKey

HOOKS = ("pre-receive", "post-receive")
_AUTHORIZED = re.compile(r'^command="[^"]* --as (\S+)",restrict (\S+) (\S+)')


# -- what sync reports -------------------------------------------------------------------


@dataclass
class SyncResult:
    main: str = ""
    hosts: int = 0
    added: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)
    rekeyed: list[str] = field(default_factory=list)  # identities whose key changed
    keys_written: bool = False
    moved: list[str] = field(default_factory=list)  # branches handed over or fanned in
    problems: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        changed = [
            f"{label} {', '.join(names)}"
            for label, names in (
                ("added", self.added),
                ("removed", self.removed),
                ("new key for", self.rekeyed),
            )
            if names
        ]
        lines = [
            f"main {self.main}: {self.hosts} hosts"
            + (f"; {'; '.join(changed)}" if changed else "; no host added, removed or rekeyed")
        ]
        if self.keys_written:
            lines.append("authorized_keys rewritten")
        if self.moved:
            lines.append(f"{len(self.moved)} branches brought up to date: {few_names(self.moved)}")
        lines += [f"warning: {problem}" for problem in self.problems]
        return lines


def few_names(names: list[str], shown: int = 5) -> str:
    more = len(names) - shown
    return ", ".join(names[:shown]) + (f" and {more} more" if more > 0 else "")


# -- files -------------------------------------------------------------------------------


def _write_if_changed(path: Path, text: str, *, mode: int) -> bool:
    try:
        if path.read_text(encoding="utf-8") == text and (path.stat().st_mode & 0o777) == mode:
            return False
    except (OSError, UnicodeDecodeError):
        pass
    atomic.write_text(path, text, mode=mode)
    return True


def _quote_config(value: str) -> str:
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def repo_config(layout: Layout) -> str:
    """Every server repository's ``config``: the server owns it (sync rewrites it)."""
    return (
        "# Written by 'gitops server sync': changes here are overwritten.\n"
        "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
        f"\thooksPath = {_quote_config(str(layout.hooks_dir))}\n"
        "\tlogAllRefUpdates = false\n"
        # Our hooks refuse first, with a clearer message; git's own checks stay as a floor.
        "[receive]\n\tdenyDeletes = true\n\tdenyNonFastForwards = true\n\tfsckObjects = true\n"
        "[uploadpack]\n\tallowAnySHA1InWant = false\n\tallowReachableSHA1InWant = false\n"
        "\tallowTipSHA1InWant = false\n" + MAINTENANCE_CONFIG
    )


# How objects are kept (docs/server.md#maintenance). A report push of a few objects is
# exploded into loose objects (receive.unpackLimit), and fanned-in reports are written
# loose by libgit2, which never runs git's automatic gc: 'gitops server maintain', on a
# timer, packs them. git's own gc after a push stays as a floor for a server without the
# timer. Packs marked .keep (the archive pack of 'gitops server archive') are never
# rewritten: not by maintain's geometric repack, nor by a full repack (bitmaps would pack
# kept objects again, so none are written). refs/archive/ is the server's own: no client
# sees it in an advertisement or may push to it.
MAINTENANCE_CONFIG = (
    "[receive]\n\tunpackLimit = 100\n\tautogc = true\n"
    "[gc]\n\tauto = 6700\n\tautoPackLimit = 50\n\twriteCommitGraph = true\n"
    "[repack]\n\tpackKeptObjects = false\n\twriteBitmaps = false\n"
    "[core]\n\tcommitGraph = true\n"
    "[fetch]\n\twriteCommitGraph = true\n"
    "[transfer]\n\thideRefs = refs/archive/\n"
)


def hook_script(config: ServerConfig, layout: Layout, hook: str) -> str:
    command = config.command_line("server", "hook", hook, "--dir", str(layout.root))
    return (
        "#!/bin/sh\n"
        "# Written by 'gitops server sync': changes here are overwritten.\n"
        f"exec {command}\n"
    )


def authorized_line(config: ServerConfig, layout: Layout, who: Identity, key: PublicKey) -> str:
    command = config.command_line("server", "serve", "--dir", str(layout.root), "--as", str(who))
    return f'command="{command}",restrict {key.openssh()} gitops {who}'


def sshd_snippet(layout: Layout, user: str) -> str:
    return SSHD_SNIPPET.format(user=user, authorized_keys=layout.authorized_keys)


# Sized for a fleet of about 10,000 hosts that report at random moments (agents add
# jitter), and for 1,000 connecting at once (bench/report_push.py, docs/server.md).
SSHD_SNIPPET = """\
# gitops server: put these lines at the END of /etc/ssh/sshd_config (the first two
# are global; everything after "Match" applies to the git user only).
# At most this many connections may be authenticating at once (start:rate:full): beyond
# 1000, new ones are dropped with a probability rising to 100% at 2000. Agents retry
# with jittered backoff. Stock sshd uses 10:30:100, which refuses a busy fleet at connect.
MaxStartups 1000:30:2000
LoginGraceTime 60
# OpenSSH 9.8 and later: many hosts behind one NAT must not be penalised as one source.
# PerSourcePenalties no
# PerSourceMaxStartups none

Match User {user}
    AuthorizedKeysFile {authorized_keys}
    AuthenticationMethods publickey
    PasswordAuthentication no
    KbdInteractiveAuthentication no
    # git over ssh asks for protocol v2 through this variable: a fetch then receives
    # only the refs it asks for.
    AcceptEnv GIT_PROTOCOL
    DisableForwarding yes
    PermitTTY no
    PermitUserRC no
    MaxSessions 1
"""


# -- repositories ------------------------------------------------------------------------


def _configure(layout: Layout, git_dir: Path) -> None:
    _write_if_changed(git_dir / "config", repo_config(layout), mode=0o644)


def create_repo(layout: Layout, git_dir: Path, head: str) -> None:
    """A bare repository at ``git_dir``, made beside it and renamed into place: it
    appears whole or not at all. (Its files are not fsynced one by one, as git's own
    ``init`` does not; the caller syncs the directory that holds the new names.)"""
    staging = git_dir.with_name(f".{git_dir.name}.new-{os.getpid()}")
    shutil.rmtree(staging, ignore_errors=True)
    pygit2.init_repository(str(staging), bare=True, initial_head=head)
    (staging / "description").unlink(missing_ok=True)
    (staging / "config").write_text(repo_config(layout), encoding="utf-8")
    staging.rename(git_dir)


def _open(path: Path) -> pygit2.Repository:
    return pygit2.Repository(str(path))


def _reconcile(
    fleet: pygit2.Repository, host_repo: pygit2.Repository, host: str, result: SyncResult
) -> None:
    """deploy/<host>: fleet.git → the host's repository; reports/<host>: both ways (a
    migrated or restored server may hold reports the other side lacks)."""
    pairs = (
        (fleet, host_repo, deploy_ref(host), f"{host}.git"),
        (host_repo, fleet, reports_ref(host), "fleet.git"),
        (fleet, host_repo, reports_ref(host), f"{host}.git"),
    )
    for source, target, ref, label in pairs:
        head = commits.ref_target(source, ref)
        if head is None:
            continue
        moved = fast_forward(source, target, ref, head)
        if moved is Move.UPDATED:
            result.moved.append(f"{ref.removeprefix('refs/heads/')} → {label}")
        elif moved is Move.DIVERGED:
            result.problems.append(
                f"{ref.removeprefix('refs/heads/')} differs between fleet.git and "
                f"hosts/{host}.git and neither descends from the other; left alone"
            )


def _retire(layout: Layout, fleet: pygit2.Repository, host: str, result: SyncResult) -> None:
    path = layout.host_repo(host)
    _reconcile(fleet, _open(path), host, result)  # keep every report it received
    layout.retired_dir.mkdir(exist_ok=True)
    target = layout.retired_dir / path.name
    suffix = 1
    while target.exists():
        suffix += 1
        target = layout.retired_dir / f"{host}.{suffix}.git"
    path.rename(target)
    result.removed.append(host)


def _existing_hosts(layout: Layout) -> set[str]:
    if not layout.hosts_dir.is_dir():
        return set()
    return {
        entry.name.removesuffix(".git")
        for entry in layout.hosts_dir.iterdir()
        if entry.name.endswith(".git") and not entry.name.startswith(".")
    }


# -- keys --------------------------------------------------------------------------------


def _identities(
    config: ServerConfig, view: MainView, problems: Problems, hosts: list[str]
) -> list[tuple[Identity, PublicKey]]:
    fleet = view.fleet(problems)
    wanted: list[tuple[Identity, PublicKey]] = [
        (Identity(Role.ADMIN, a.principal), a.key) for a in config.admins
    ]
    for publisher in fleet.settings.publishers:
        if not is_principal(publisher.principal):
            problems.add(
                "fleet.yaml: publishers",
                f"principal {publisher.principal!r} cannot log in to the gitops server",
                "use letters, digits and . _ @ + - (e.g. ci@example.org)",
            )
            continue
        wanted.append((Identity(Role.PUBLISHER, publisher.principal), publisher.key))
    for host in hosts:
        found = fleet.hosts.get(host)
        if found is not None and found.key is not None:
            wanted.append((Identity(Role.HOST, host), found.key))
    return wanted


def _unique(
    wanted: list[tuple[Identity, PublicKey]], result: SyncResult
) -> list[tuple[Identity, PublicKey]]:
    """One identity per key: sshd would take the first line for a key listed twice."""
    seen: dict[bytes, Identity] = {}
    kept = []
    for who, key in wanted:
        first = seen.setdefault(key.blob, who)
        if first != who:
            result.problems.append(f"{who} has the same key as {first}; only {first} may use it")
            continue
        kept.append((who, key))
    return kept


def _previous_keys(path: Path) -> dict[str, str]:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        match = _AUTHORIZED.match(line)
        if match is not None:
            found[match.group(1)] = f"{match.group(2)} {match.group(3)}"
    return found


def _write_keys(
    config: ServerConfig,
    layout: Layout,
    main: str,
    granted: list[tuple[Identity, PublicKey]],
    result: SyncResult,
) -> None:
    before = _previous_keys(layout.authorized_keys)
    result.rekeyed = sorted(
        str(who) for who, key in granted if before.get(str(who), key.openssh()) != key.openssh()
    )
    header = f"# Written by 'gitops server sync' from main {main}: changes here are overwritten.\n"
    body = "".join(authorized_line(config, layout, who, key) + "\n" for who, key in granted)
    # The header names main's commit: compare without it, or every sync would rewrite.
    if _body(layout.authorized_keys) != body:
        atomic.write_text(layout.authorized_keys, header + body, mode=0o600)
        result.keys_written = True


def _body(path: Path) -> str | None:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError:
        return None
    return "".join(line for line in text.splitlines(keepends=True) if not line.startswith("#"))


# -- sync ------------------------------------------------------------------------------


@contextlib.contextmanager
def _locked(layout: Layout) -> Iterator[None]:
    with layout.lock_file.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _fetch_upstream(layout: Layout, config: ServerConfig) -> None:
    assert config.upstream is not None
    try:
        transport.fetch(layout.fleet, config.upstream, [f"{MAIN_REF}:{MAIN_REF}"])
    except GitopsError as err:
        raise GitopsError(
            f"cannot mirror main from {config.upstream}: {err} (a main that does not descend "
            "from the one here is refused: history on this server is never rewritten)"
        ) from err


def _write_slots(config: ServerConfig, layout: Layout) -> None:
    """``max_pushes`` slot files and ``push_queue`` queue files (serve locks one per
    push that runs or waits); extra ones go."""
    layout.slots_dir.mkdir(exist_ok=True)
    wanted = {f"{SLOT_PREFIX}{n:03d}.lock" for n in range(config.push_slots())}
    wanted |= {f"{QUEUE_PREFIX}{n:03d}.lock" for n in range(config.queue_places())}
    for name in sorted(wanted):
        slot = layout.slots_dir / name
        if not slot.exists():
            slot.touch()
    for extra in layout.slots_dir.iterdir():
        if extra.name not in wanted:
            extra.unlink()


def write_support_files(config: ServerConfig, layout: Layout) -> None:
    _write_slots(config, layout)
    layout.hooks_dir.mkdir(exist_ok=True)
    for hook in HOOKS:
        _write_if_changed(layout.hooks_dir / hook, hook_script(config, layout, hook), mode=0o755)
    _write_if_changed(layout.sshd_snippet, sshd_snippet(layout, getpass.getuser()), mode=0o644)


def sync(
    layout: Layout, *, fetch: bool = True, progress: Callable[[str], None] | None = None
) -> SyncResult:
    """Make the server directory agree with main (see the module's docstring)."""
    layout.check_initialized()
    with _locked(layout):
        config = ServerConfig.load(layout.config_file)
        if fetch and config.main is MainPolicy.MIRROR:
            _fetch_upstream(layout, config)
        return _sync_locked(config, layout, progress or (lambda _: None))


def _sync_locked(
    config: ServerConfig, layout: Layout, progress: Callable[[str], None]
) -> SyncResult:
    fleet = _open(layout.fleet)
    view = MainView.open(fleet)
    result = SyncResult(main=view.short_id)
    problems = Problems()
    hosts = view.host_dirs()
    result.hosts = len(hosts)
    write_support_files(config, layout)
    _configure(layout, layout.fleet)
    layout.hosts_dir.mkdir(exist_ok=True)
    existing = _existing_hosts(layout)
    for count, host in enumerate(hosts, start=1):
        path = layout.host_repo(host)
        if host not in existing:
            create_repo(layout, path, f"deploy/{host}")
            result.added.append(host)
        else:
            _configure(layout, path)
        _reconcile(fleet, _open(path), host, result)
        if count % 1000 == 0:
            progress(f"  {count} of {len(hosts)} hosts")
    if result.added:
        atomic.sync_directory(layout.hosts_dir)
    granted = _unique(_identities(config, view, problems, hosts), result)
    _write_keys(config, layout, view.short_id, granted, result)
    for host in sorted(existing - set(hosts)):
        _retire(layout, fleet, host, result)
    result.problems[:0] = [str(problem) for problem in problems.items]
    return result


def init(
    layout: Layout, source: str, config: ServerConfig, *, progress: Callable[[str], None]
) -> SyncResult:
    """Create the server directory from ``source`` (a fleet repository's path or URL):
    its main, and any deploy and reports branches it has (moving from a plain bare
    repository keeps every branch), then sync."""
    if layout.config_file.exists() or layout.fleet.exists():
        raise GitopsError(
            f"{layout.root}: already a gitops server; run 'gitops server sync --dir {layout.root}'"
        )
    if any(c in str(layout.root) for c in '"\n\\'):
        raise GitopsError(f"{layout.root}: choose a directory whose path has no quotes")
    layout.root.mkdir(parents=True, exist_ok=True)
    create_repo(layout, layout.fleet, "main")
    progress(f"fetching main, deploy/* and reports/* from {source}")
    try:
        transport.fetch(
            layout.fleet,
            source,
            [
                f"+{MAIN_REF}:{MAIN_REF}",
                "+refs/heads/deploy/*:refs/heads/deploy/*",
                "+refs/heads/reports/*:refs/heads/reports/*",
            ],
        )
    except transport.RefNotFoundError as err:
        shutil.rmtree(layout.fleet, ignore_errors=True)
        raise GitopsError(
            f"{source} has no main branch; push the fleet's main there first"
        ) from err
    except GitopsError:
        shutil.rmtree(layout.fleet, ignore_errors=True)
        raise
    atomic.write_text(layout.config_file, config.to_yaml(), mode=0o644)
    return sync(layout, fetch=False, progress=progress)
