"""``gitops``: the command line. Arguments are parsed here into typed values, each command
gets explicit arguments, and only ``main`` turns errors into exit codes:
0 success, 1 an expected failure (its message says what to do), 2 usage,
3 an unexpected error (a bug: rerun with --debug for a traceback), 130 interrupted,
141 the reader of our output went away (a closed pipe).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from gitops import __version__, output
from gitops.errors import GitopsError

if TYPE_CHECKING:
    import argparse

EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def _command_names() -> list[str]:
    from gitops.protocol import CommandName

    return [str(name) for name in CommandName]


def _add_repo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path(),
        help="the fleet repository (default: current directory)",
    )


def _duration_arg(text: str) -> float:
    """A duration such as 90, 2.5, 30s, 5m, 1h for an option, in seconds."""
    import argparse

    from gitops.fleet.schema import parse_duration

    try:
        return float(text) if text.replace(".", "", 1).isdigit() else parse_duration(text)
    except ValueError as err:
        raise argparse.ArgumentTypeError(str(err)) from err


def _non_negative(text: str) -> int:
    """A count for an option: 0 or more."""
    import argparse

    if not text.isdigit():
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number of 0 or more")
    return int(text)


def _add_server(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    server = commands.add_parser(
        "server", help="the git server hosts talk to: per-host repositories, sshd, hooks"
    )
    actions = server.add_subparsers(dest="server_command", required=True, metavar="ACTION")
    init = actions.add_parser("init", help="create a server directory from a fleet repository")
    init.add_argument(
        "--repo", required=True, help="the fleet repository (path or URL) to take main from"
    )
    init.add_argument(
        "--mirror",
        action="store_true",
        help="main is mirrored from --repo on every sync; nobody pushes main over ssh",
    )
    init.add_argument(
        "--admin",
        action="append",
        default=[],
        metavar="PRINCIPAL=KEY.pub",
        help="an admin who may push main (signed commits); repeatable",
    )
    init.add_argument(
        "--command",
        dest="gitops_command",
        help="how sshd and git's hooks run gitops (default: this gitops)",
    )
    sync = actions.add_parser(
        "sync", help="make the server agree with main: repositories, keys, hooks (idempotent)"
    )
    sync.add_argument(
        "--no-fetch", action="store_true", help="with main: mirror, do not fetch main first"
    )
    serve = actions.add_parser("serve", help="sshd's forced command (authorized_keys)")
    serve.add_argument(
        "--as", dest="identity", required=True, help="host:NAME, publisher:NAME or admin:NAME"
    )
    hook = actions.add_parser("hook", help="git's pre-receive and post-receive hooks")
    hook.add_argument("hook", choices=["pre-receive", "post-receive"])
    maintain = actions.add_parser(
        "maintain", help="pack loose objects and refs in every repository (run on a timer)"
    )
    maintain.add_argument(
        "--jobs", type=int, help="repositories maintained at once (default: half the CPUs)"
    )
    maintain.add_argument(
        "--min-loose",
        type=int,
        default=100,
        help="pack a repository once it has this many loose objects (default: 100)",
    )
    archive = actions.add_parser(
        "archive",
        help="mark each host's reports month by month (refs/archive/) and keep what is "
        "below the marks in a pack maintenance never rewrites; history is never rewritten",
    )
    when = archive.add_mutually_exclusive_group(required=True)
    when.add_argument("--before", metavar="YYYY-MM", help="mark the months before this one")
    when.add_argument(
        "--months",
        type=int,
        metavar="N",
        help="mark the months that ended more than N months ago (0: every month that ended)",
    )
    for sub in (init, sync, serve, hook, maintain, archive):
        sub.add_argument("--dir", type=Path, required=True, help="the server directory")


def _add_status(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    status = commands.add_parser(
        "status", help="the fleet at a glance, from the repository alone (as the site judges it)"
    )
    _add_repo(status)
    status.add_argument(
        "--state",
        action="append",
        default=[],
        metavar="STATE",
        help="only hosts in this state: up-to-date, pending, failed, rolled-back, rejected, "
        "stale, offline, never, unverified (repeatable)",
    )
    status.add_argument(
        "--tag", action="append", default=[], help="only hosts with this tag (repeatable)"
    )
    status.add_argument(
        "--package",
        metavar="NAME[@VERSION]",
        help="only hosts running this package (by their newest signed SBOM), with its "
        "version: NAME@VERSION exactly, NAME@ in any version, NAME part of a name",
    )
    status.add_argument("--json", action="store_true", help="machine-readable result")
    status.add_argument(
        "--watch", action="store_true", help="show it again whenever the repository changes"
    )


def _add_rollout(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    rollout = commands.add_parser(
        "rollout", help="staged rollouts (fleet.yaml's rollout: waves): status, resume, abort"
    )
    actions = rollout.add_subparsers(dest="rollout_command", required=True, metavar="ACTION")
    status = actions.add_parser("status", help="each wave's progress, from the repository alone")
    _add_repo(status)
    status.add_argument("--json", action="store_true", help="machine-readable result")
    for name, helptext in (
        ("resume", "let a halted rollout go on to the next wave (recorded on 'rollout')"),
        ("abort", "stop a rollout: no further wave gets its source (recorded on 'rollout')"),
    ):
        sub = actions.add_parser(name, help=helptext)
        _add_repo(sub)
        sub.add_argument("--key", type=Path, required=True, help="a publisher's key (as publish)")
        sub.add_argument("--reason", default="", help="why, for the record")
        sub.add_argument("--push", action="store_true", help="record it on the remote's rollout")
        sub.add_argument("--remote", default="origin", help="the remote (default: origin)")
        sub.add_argument("--json", action="store_true", help="machine-readable result")


def _rollout(args: argparse.Namespace) -> int:
    from gitops.commands import rollout_cmd

    if args.rollout_command == "status":
        return rollout_cmd.status(args.repo, as_json=args.json)
    return rollout_cmd.admin(
        args.repo,
        rollout_cmd.Action(args.rollout_command),
        key_path=args.key,
        reason=args.reason,
        push=args.push,
        remote=args.remote,
        as_json=args.json,
    )


def _add_identity(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--identity",
        type=Path,
        default=None,
        help="an admin's private key: OpenSSH ed25519/RSA or age-keygen's file "
        "(default: $GITOPS_AGE_IDENTITY, else ~/.ssh/id_ed25519)",
    )


def _add_secrets(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    secrets = commands.add_parser(
        "secrets", help="age-encrypted secrets for hosts (secrets/secrets.yaml, docs/secrets.md)"
    )
    actions = secrets.add_subparsers(dest="secrets_command", required=True, metavar="ACTION")
    edit = actions.add_parser(
        "edit", help="edit a secret in $EDITOR (the plaintext stays on tmpfs)"
    )
    edit.add_argument("name", help="the secret, as declared in secrets/secrets.yaml")
    rekey = actions.add_parser(
        "rekey", help="re-encrypt the secrets whose recipients changed (a host key, an admin)"
    )
    rekey.add_argument("--all", action="store_true", help="re-encrypt every secret")
    listing = actions.add_parser("list", help="who can read what")
    checking = actions.add_parser(
        "check", help="each age file is encrypted to exactly its declared recipients"
    )
    for sub in (edit, rekey, listing, checking):
        _add_repo(sub)
    for sub in (edit, rekey):
        _add_identity(sub)
    for sub in (rekey, listing, checking):
        sub.add_argument("--json", action="store_true", help="machine-readable result")

    hosts = commands.add_parser("hosts", help="change a host's entry in the fleet")
    host_actions = hosts.add_subparsers(dest="hosts_command", required=True, metavar="ACTION")
    rotate = host_actions.add_parser(
        "rotate-key", help="a new host key (reinstall, stolen machine): host.yaml and its secrets"
    )
    rotate.add_argument("host")
    rotate.add_argument("--key", type=Path, required=True, help="the new public key (.pub)")
    _add_repo(rotate)
    _add_identity(rotate)


def _add_enroll(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    enroll = commands.add_parser(
        "enroll",
        help="on a new machine: propose it to the fleet (enroll/<name>); list, accept proposals",
    )
    enroll.add_argument("--remote", help="the fleet repository's URL (a forge or plain repo)")
    enroll.add_argument("--name", help="the new host's name")
    enroll.add_argument(
        "--key",
        type=Path,
        default=Path("/etc/ssh/ssh_host_ed25519_key"),
        help="the host key, made when missing (default /etc/ssh/ssh_host_ed25519_key)",
    )
    enroll.add_argument(
        "--profile", action="append", default=[], help="a profile for it (repeatable)"
    )
    enroll.add_argument("--owner", default="", help="who is responsible for it (e-mail)")
    enroll.add_argument(
        "--root", type=Path, default=Path("/"), help="read facts from this root (default /)"
    )
    enroll.add_argument(
        "--wait",
        nargs="?",
        const="1h",
        default=None,
        metavar="TIMEOUT",
        type=_duration_arg,
        help="then wait for deploy/NAME (default 1h; e.g. 30m, 2h), looking less often as time goes by",
    )
    enroll.add_argument(
        "--deploy-remote",
        metavar="URL",
        help="where to look for deploy/NAME (default --remote; with the gitops server: "
        "ssh://git@SERVER/hosts/NAME.git)",
    )
    enroll.add_argument(
        "--ssh-key",
        type=Path,
        help="log in to ssh remotes with this key (an enrolment deploy key on the forge; "
        "the gitops server accepts the host key once merged)",
    )
    enroll.add_argument(
        "--known-hosts",
        type=Path,
        help="the ssh servers' host keys (a known_hosts file); checked strictly when given",
    )
    actions = enroll.add_subparsers(dest="enroll_command", metavar="ACTION")
    listing = actions.add_parser("list", help="pending enrol/<host> branches and their verdict")
    _add_repo(listing)
    listing.add_argument("--json", action="store_true", help="machine-readable result")
    accept = actions.add_parser(
        "accept", help="merge enroll/NAME into main as a signed merge commit (admins)"
    )
    accept.add_argument("name")
    accept.add_argument(
        "--key", dest="admin_key", type=Path, required=True, help="your signing key"
    )
    _add_repo(accept)


def _enroll(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gitops.commands import enroll_cmd

    match args.enroll_command:
        case "list":
            return enroll_cmd.list_proposals(args.repo, as_json=args.json)
        case "accept":
            return enroll_cmd.accept(args.repo, args.name, args.admin_key)
    if not args.remote or not args.name:
        parser.error("gitops enroll needs --remote URL and --name NAME (or: list, accept)")
    return enroll_cmd.enroll(
        args.remote,
        args.name,
        args.key,
        profiles=args.profile,
        owner=args.owner,
        root=args.root,
        wait=args.wait,
        deploy_remote=args.deploy_remote,
        ssh_key=args.ssh_key,
        known_hosts=args.known_hosts,
    )


def _secrets(args: argparse.Namespace) -> int:
    from gitops.commands import secrets_cmd

    match args.secrets_command:
        case "edit":
            return secrets_cmd.edit(args.repo, args.name, args.identity)
        case "rekey":
            return secrets_cmd.rekey_command(
                args.repo, args.identity, everything=args.all, as_json=args.json
            )
        case "list":
            return secrets_cmd.list_secrets(args.repo, as_json=args.json)
        case _:
            return secrets_cmd.check(args.repo, as_json=args.json)


def build_parser() -> argparse.ArgumentParser:
    import argparse  # here: the server's hot commands below never need it

    parser = argparse.ArgumentParser(
        prog="gitops",
        description="Git-native GitOps for fleets of NixOS machines.",
    )
    parser.add_argument("--version", action="version", version=f"gitops {__version__}")
    parser.add_argument("--debug", action="store_true", help="debug logs and tracebacks")
    parser.add_argument("-v", "--verbose", action="store_true", help="say more about what happens")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    keys = commands.add_parser("keys", help="create keys and trust files")
    keys_commands = keys.add_subparsers(dest="keys_command", required=True, metavar="ACTION")
    keys_new = keys_commands.add_parser("new", help="write an OpenSSH Ed25519 key pair")
    keys_new.add_argument(
        "path", type=Path, help="private key path; the public key goes to PATH.pub"
    )
    keys_new.add_argument("--comment", default="", help="comment on the public key")
    keys_new.add_argument("--json", action="store_true", help="machine-readable result")
    keys_signers = keys_commands.add_parser(
        "allowed-signers", help="print fleet.yaml's publishers as an allowed-signers file"
    )
    _add_repo(keys_signers)
    keys_signers.add_argument(
        "--rev", help="read fleet.yaml from this commit instead of the work tree"
    )
    keys_signers.add_argument("--json", action="store_true", help="machine-readable result")

    check = commands.add_parser("check", help="validate a fleet repository, listing every problem")
    _add_repo(check)
    check.add_argument(
        "--json",
        action="store_true",
        help="machine-readable result; problems as {file, line, field, problem, fix}",
    )
    check.add_argument("--no-nix", action="store_true", help="do not parse .nix files with nix")
    check.add_argument(
        "--eval",
        dest="evaluate",
        action="store_true",
        help="evaluate every host's system (its .drvPath, no build) from its deploy tree",
    )
    check.add_argument(
        "--jobs", type=int, default=2, help="with --eval: hosts evaluated at once (default: 2)"
    )

    for name, helptext in (
        ("plan", "show which hosts' deploy trees would change, and why; writes nothing"),
        ("publish", "write a signed commit on deploy/<host> for every host whose tree changed"),
    ):
        sub = commands.add_parser(name, help=helptext)
        _add_repo(sub)
        sub.add_argument(
            "--from", dest="source", default="main", help="the main commit (default: main)"
        )
        sub.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
        sub.add_argument("--json", action="store_true", help="machine-readable result")
        if name == "plan":
            _add_plan_options(sub)
        if name == "publish":
            sub.add_argument(
                "--key",
                type=Path,
                required=True,
                help="the publisher's key: a private key file, or a public key (.pub) or "
                "passphrase-protected private key whose key ssh-agent holds (SSH_AUTH_SOCK)",
            )
            sub.add_argument(
                "--push", action="store_true", help="push the changed branches, atomically"
            )
            sub.add_argument(
                "--remote", default="origin", help="remote to push to (default: origin)"
            )
            sub.add_argument(
                "--recover",
                action="store_true",
                help="after the server's deploy/<host> was rewritten (restored from a backup): "
                "push a signed commit on top of it that supersedes what the host applied "
                "(needs exactly one --host; implies --push)",
            )
            sub.add_argument(
                "--systems",
                type=Path,
                metavar="FILE",
                help="the systems file of 'gitops build': pin each host's centrally built "
                "system in its deploy commit (System-Path); a host whose tree it does not "
                "name is not published",
            )
            sub.add_argument(
                "--applied",
                metavar="SHA",
                help="with --recover: the deploy commit the host runs, when its reports "
                "cannot say (default: read from its newest verified report)",
            )

    command = commands.add_parser(
        "command",
        help="sign a command (reboot, poweroff, collect-logs, gc, update-now, run-check) for "
        "some hosts, into commands/ (docs/commands.md)",
    )
    _add_repo(command)
    command.add_argument("name", choices=[str(n) for n in _command_names()])
    command.add_argument("check", nargs="?", default="", help="run-check: the check's name")
    command.add_argument("--host", action="append", default=[], help="a host (repeatable)")
    command.add_argument("--tag", action="append", default=[], help="every host with this tag")
    command.add_argument("--key", type=Path, required=True, help="a commander's key (fleet.yaml)")
    command.add_argument("--expires", default="24h", help="valid for (default 24h, at most 30d)")
    command.add_argument(
        "--unit", action="append", default=[], help="collect-logs: a systemd unit (repeatable)"
    )
    command.add_argument("--since", default="1h", help="collect-logs: how far back (default 1h)")
    command.add_argument(
        "--max-bytes", type=int, default=64 * 1024, help="collect-logs: excerpt limit"
    )
    command.add_argument("--json", action="store_true", help="machine-readable result")
    _add_build(commands)

    verify = commands.add_parser(
        "verify", help="verify a commit's signature like git verify-commit"
    )
    _add_repo(verify)
    verify.add_argument("rev", help="commit, branch or ref to verify")
    verify.add_argument(
        "--allowed-signers", type=Path, required=True, help="OpenSSH allowed-signers file"
    )
    verify.add_argument("--json", action="store_true", help="machine-readable verdict")

    agent = commands.add_parser("agent", help="the host agent")
    agent.add_argument(
        "--config",
        type=Path,
        default=None,
        help="agent configuration (default /etc/gitops/agent.yaml)",
    )
    overrides = agent.add_argument_group("settings (override the configuration file)")
    overrides.add_argument("--host", help="this host's name")
    overrides.add_argument("--remote", help="the fleet repository's URL")
    overrides.add_argument(
        "--trusted-publishers", help="allowed-signers file with the publisher keys"
    )
    overrides.add_argument("--signing-key", help="private key that signs this host's reports")
    overrides.add_argument("--state-dir", help="where the agent keeps its state")
    overrides.add_argument(
        "--system-profile", help="the system profile (default /nix/var/nix/profiles/system)"
    )
    overrides.add_argument(
        "--action", choices=["switch", "boot", "test"], help="as in nixos-rebuild"
    )
    agent_commands = agent.add_subparsers(dest="agent_command", required=True, metavar="ACTION")
    once = agent_commands.add_parser("once", help="run one cycle")
    once.add_argument(
        "--report", action="store_true", help="write a report even if nothing changed"
    )
    once.add_argument("--retry", action="store_true", help="retry a commit that failed before")
    once.add_argument("--json", action="store_true", help="machine-readable result")
    agent_commands.add_parser(
        "run", help="run cycles forever: on a timer, on a trigger, on a watched change"
    )
    trigger = agent_commands.add_parser("trigger", help="ask the agent for a cycle now")
    trigger.add_argument(
        "--http", action="store_true", help="answer an HTTP request on stdin (socket activation)"
    )
    trigger.add_argument(
        "--start-unit", help="start this systemd unit instead of touching the trigger file"
    )
    status = agent_commands.add_parser("status", help="what the agent applied and last reported")
    status.add_argument("--json", action="store_true", help="machine-readable result")

    sbom = commands.add_parser(
        "sbom", help="a host's newest verified SBOM (CycloneDX), or which hosts run a package"
    )
    _add_repo(sbom)
    target = sbom.add_mutually_exclusive_group(required=True)
    target.add_argument("host", nargs="?", help="print this host's sbom.cdx.json")
    target.add_argument(
        "--which", metavar="PACKAGE[@VERSION]", help="list the hosts running this package"
    )
    sbom.add_argument("--json", action="store_true", help="machine-readable result (--which)")

    vulns = commands.add_parser(
        "vulns", help="known vulnerabilities of the hosts' SBOMs, from an NVD CVE feed"
    )
    _add_repo(vulns)
    vulns.add_argument(
        "--feed",
        type=Path,
        action="append",
        default=[],
        help="NVD CVE JSON 2.0 file or directory (repeatable; default: fleet.yaml's)",
    )
    vulns.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    vulns.add_argument("--json", action="store_true", help="machine-readable result")

    _add_status(commands)
    _add_rollout(commands)

    site = commands.add_parser("site", help="the fleet dashboard")
    site_commands = site.add_subparsers(dest="site_command", required=True, metavar="ACTION")
    build = site_commands.add_parser(
        "build", help="render the static site from the repository alone"
    )
    _add_repo(build)
    build.add_argument("--out", type=Path, required=True, help="output directory")
    build.add_argument("--serve", action="store_true", help="then serve it on localhost")
    build.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")
    build.add_argument(
        "--json", action="store_true", help="print a build summary for CI instead of the path"
    )
    build.add_argument(
        "--no-alerts",
        action="store_true",
        help="send no webhook or commit status (they wait for the next build that may)",
    )
    build.add_argument(
        "--history-hosts",
        type=_non_negative,
        default=None,
        metavar="N",
        help="hosts whose whole month of reports a build reads (default 1000); with more "
        "hosts never read, every host's newest reports come first, the rest in the next builds",
    )

    _add_server(commands)
    _add_secrets(commands)
    _add_enroll(commands)
    escrow = commands.add_parser("escrow", help="recovery material hosts escrowed to the admins")
    escrow_actions = escrow.add_subparsers(dest="escrow_command", required=True, metavar="ACTION")
    show = escrow_actions.add_parser("show", help="decrypt a host's newest escrowed file")
    show.add_argument("host")
    show.add_argument("--name", help="which file (e.g. luks-recovery); needed when several")
    show.add_argument("--out", type=Path, help="write it to this file (0600) instead of stdout")
    _add_repo(show)
    _add_identity(show)

    demo = commands.add_parser(
        "demo", help="a whole fleet on this machine: publish, agents, reports, site"
    )
    demo.add_argument(
        "--dir", type=Path, default=None, help="where to build it (default: a new temp dir)"
    )
    demo.add_argument("--fleet", type=Path, default=None, help="repository whose hosts/ to use")
    demo.add_argument("--serve", action="store_true", help="serve the site at the end")
    demo.add_argument("--port", type=int, default=8000, help="port for --serve (default 8000)")
    return parser


def _add_build(commands: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    build = commands.add_parser(
        "build",
        help="build each changed host's system once, sign it, copy it to a binary cache",
    )
    _add_repo(build)
    build.add_argument(
        "--from", dest="source", default="main", help="the main commit (default: main)"
    )
    build.add_argument("--host", action="append", default=[], help="only this host (repeatable)")
    build.add_argument(
        "--all",
        dest="every_host",
        action="store_true",
        help="build every host, not only those whose deploy tree changed",
    )
    build.add_argument("--jobs", type=int, default=2, help="hosts built at once (default: 2)")
    build.add_argument(
        "--signing-key",
        type=Path,
        help="Nix secret key file (nix key generate-secret) that signs the systems' closures",
    )
    build.add_argument(
        "--cache",
        help="binary cache to copy the closures to: file:///srv/nix-cache, or any store URL",
    )
    build.add_argument(
        "--systems",
        type=Path,
        metavar="FILE",
        help="write the systems file here, for 'gitops publish --systems FILE'",
    )
    build.add_argument(
        "--timeout", type=float, default=None, help="seconds per host before its build is stopped"
    )
    build.add_argument("--json", action="store_true", help="machine-readable result")


def _build(args: argparse.Namespace) -> int:
    from gitops.commands import build_cmd
    from gitops.publish import build

    request = build.Request(
        repo=args.repo,
        source=args.source,
        hosts=tuple(args.host),
        every_host=args.every_host,
        jobs=args.jobs,
        signing_key=args.signing_key,
        cache=args.cache,
        systems=args.systems,
        timeout=args.timeout,
    )
    return build_cmd.build(request, as_json=args.json)


def _publish(parser: argparse.ArgumentParser, args: argparse.Namespace) -> int:
    from gitops.commands import publish_cmd
    from gitops.publish import recover, run

    if args.applied is not None and not args.recover:
        parser.error("--applied goes with --recover")
    if args.recover:
        if args.systems is not None:
            parser.error("--systems does not go with --recover (a recovery commit pins nothing)")
        if len(args.host) != 1:
            parser.error("--recover needs exactly one --host")
        return publish_cmd.recover(
            recover.Request(
                repo=args.repo,
                source=args.source,
                host=args.host[0],
                key_path=args.key,
                remote=args.remote,
                applied=args.applied,
            ),
            as_json=args.json,
        )
    request = run.Request(
        repo=args.repo,
        source=args.source,
        hosts=tuple(args.host),
        key_path=args.key,
        push=args.push,
        remote=args.remote,
        systems=args.systems,
    )
    from gitops.commands import rollout_cmd

    if rollout_cmd.has_waves(request):  # fleet.yaml's rollout: (docs/rollout.md)
        return rollout_cmd.publish(request, as_json=args.json)
    return publish_cmd.publish(request, as_json=args.json)


def _sbom(args: argparse.Namespace) -> int:
    from gitops.commands import sbom_cmd

    if args.which is not None:
        return sbom_cmd.which(args.repo, args.which, as_json=args.json)
    return sbom_cmd.show(args.repo, args.host)


def _server(args: argparse.Namespace) -> int:
    from gitops.commands import server_cmd

    match args.server_command:
        case "init":
            return server_cmd.init(
                args.dir,
                args.repo,
                mirror=args.mirror,
                admins=args.admin,
                command=args.gitops_command,
            )
        case "sync":
            return server_cmd.sync_server(args.dir, fetch=not args.no_fetch)
        case "serve":
            return server_cmd.serve(args.dir, args.identity)
        case "maintain":
            return server_cmd.maintain(args.dir, jobs=args.jobs, min_loose=args.min_loose)
        case "archive":
            return server_cmd.archive(args.dir, before=args.before, months=args.months)
        case _:
            return server_cmd.hook(args.hook, args.dir)


def _server_hot_path(argv: Sequence[str]) -> int | None:
    """sshd runs ``gitops server serve`` for every connection and git runs the hooks for
    every push: in the exact shapes ``gitops server sync`` writes, they skip building
    the parser (argparse and every subcommand's arguments). Any other shape goes the
    usual way, with its usual errors."""
    match list(argv):
        case ["server", "serve", "--dir", directory, "--as", identity]:
            from gitops.commands import server_cmd

            output.configure_logging(debug=False, verbose=False)
            return server_cmd.serve(Path(directory), identity)
        case ["server", "hook", ("pre-receive" | "post-receive") as hook, "--dir", directory]:
            from gitops.commands import server_cmd

            output.configure_logging(debug=False, verbose=False)
            return server_cmd.hook(hook, Path(directory))
    return None


def _add_plan_options(plan: argparse.ArgumentParser) -> None:
    plan.add_argument(
        "--remote",
        help="compare with the deploy branches on this remote (name or URL), fetched as "
        "publish fetches them (default: this clone's deploy branches)",
    )
    plan.add_argument(
        "--format",
        choices=["text", "json", "markdown"],
        default=None,
        help="text (default), json (as --json), or markdown for a pull-request comment",
    )
    plan.add_argument(
        "--systems",
        type=Path,
        metavar="FILE",
        help="the systems file of 'gitops build': compare each host's built system with "
        "the one its deploy commit pins (same system, or nix store diff-closures)",
    )


def _plan(args: argparse.Namespace) -> int:
    from gitops.commands import plan_cmd

    fmt = plan_cmd.Format(args.format or ("json" if args.json else "text"))
    return plan_cmd.plan(
        args.repo, args.source, args.host, fmt=fmt, remote=args.remote, systems=args.systems
    )


def _command(args: argparse.Namespace) -> int:
    from gitops.commands import command_cmd
    from gitops.protocol import CommandName

    name = CommandName(args.name)
    if name is CommandName.RUN_CHECK and not args.check:
        raise GitopsError("run-check needs the check's name: gitops command run-check NAME")
    request = command_cmd.CommandRequest(
        repo=args.repo,
        name=name,
        hosts=tuple(args.host),
        tags=tuple(args.tag),
        key=args.key,
        expires=args.expires,
        units=tuple(args.unit),
        since=args.since,
        max_bytes=args.max_bytes,
        check=args.check,
    )
    return command_cmd.issue(request, as_json=args.json)


# Commands whose whole dispatch is one helper taking the parsed arguments.
_HANDLERS: dict[str, Callable[[argparse.Namespace], int]] = {
    "sbom": _sbom,
    "rollout": _rollout,
    "server": _server,
    "secrets": _secrets,
    "command": _command,
    "build": _build,
    "plan": _plan,
}


def execute(argv: Sequence[str]) -> int:
    hot = _server_hot_path(argv)
    if hot is not None:
        return hot
    parser = build_parser()
    args = parser.parse_args(argv)
    output.configure_logging(debug=args.debug, verbose=args.verbose)
    handler = _HANDLERS.get(args.command)
    if handler is not None:
        return handler(args)
    match args.command:
        case "keys":
            from gitops.commands import keys_cmd

            if args.keys_command == "new":
                return keys_cmd.new(args.path, args.comment, as_json=args.json)
            return keys_cmd.allowed_signers(args.repo, args.rev, as_json=args.json)
        case "check":
            from gitops.commands import check_cmd

            return check_cmd.check(
                args.repo,
                as_json=args.json,
                parse_nix=False if args.no_nix else None,
                evaluate=args.evaluate,
                jobs=args.jobs,
            )
        case "publish":
            return _publish(parser, args)
        case "verify":
            from gitops.commands import verify_cmd

            return verify_cmd.verify(args.repo, args.rev, args.allowed_signers, as_json=args.json)
        case "agent":
            from gitops.commands import agent_cmd

            return agent_cmd.dispatch(args)
        case "vulns":
            from gitops.commands import vulns_cmd

            return vulns_cmd.vulns_command(args.repo, args.feed, args.host, as_json=args.json)
        case "status":
            from gitops.commands import status_cmd

            return status_cmd.status(
                args.repo,
                states=args.state,
                tags=args.tag,
                package=args.package,
                as_json=args.json,
                watch=args.watch,
            )
        case "site":
            from gitops.commands import site_cmd

            return site_cmd.build(
                args.repo,
                args.out,
                serve=args.serve,
                port=args.port,
                as_json=args.json,
                send_alerts=not args.no_alerts,
                history_hosts=args.history_hosts,
            )
        case "enroll":
            return _enroll(parser, args)
        case "escrow":
            from gitops.commands import escrow_cmd

            return escrow_cmd.show(args.repo, args.host, args.name, args.identity, args.out)
        case "hosts":
            from gitops.commands import secrets_cmd

            return secrets_cmd.rotate_key(args.repo, args.host, args.key, args.identity)
        case "demo":
            from gitops.demo import walkthrough as demo

            return demo.run(args.dir, fleet=args.fleet, serve=args.serve, port=args.port)
    parser.error(f"unknown command {args.command}")
    return EXIT_USAGE  # pragma: no cover - parser.error exits


def _discard_stdout() -> None:
    """Point stdout at /dev/null, so that Python's flush at exit does not fail again."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def main(argv: Sequence[str] | None = None) -> None:
    arguments = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in arguments
    try:
        code = execute(arguments)
    except GitopsError as err:
        if debug:
            raise
        print(f"gitops: error: {output.printable(str(err))}", file=sys.stderr)
        code = err.exit_code
    except KeyboardInterrupt:
        print("gitops: interrupted", file=sys.stderr)
        code = EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output stopped (`gitops plan --json | head -1`): stop quietly,
        # with the status a program killed by SIGPIPE has, as git does.
        _discard_stdout()
        code = EXIT_BROKEN_PIPE
    except Exception as err:
        if debug:
            raise
        print(
            f"gitops: unexpected error: {type(err).__name__}: {output.printable(str(err))} (a bug; rerun with --debug "
            "for a traceback and report it)",
            file=sys.stderr,
        )
        code = EXIT_BUG
    sys.exit(code)


if __name__ == "__main__":
    main()
