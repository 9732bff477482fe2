"""``gitops``: the command line. Arguments are parsed here into typed values, each command
gets explicit arguments, and only ``main`` turns errors into exit codes:
0 success, 1 an expected failure (its message says what to do), 2 usage,
3 an unexpected error (a bug: rerun with --debug for a traceback), 130 interrupted,
141 the reader of our output went away (a closed pipe).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from gitops import __version__, output
from gitops.errors import GitopsError

log = logging.getLogger("gitops")

EXIT_USAGE = 2
EXIT_BUG = 3
EXIT_INTERRUPTED = 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE


def _add_repo(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--repo",
        type=Path,
        default=Path(),
        help="the fleet repository (default: current directory)",
    )


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
    for sub in (init, sync, serve, hook):
        sub.add_argument("--dir", type=Path, required=True, help="the server directory")


def build_parser() -> argparse.ArgumentParser:
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

    _add_server(commands)

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
    return publish_cmd.publish(request, as_json=args.json)


def execute(argv: Sequence[str]) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    output.configure_logging(debug=args.debug, verbose=args.verbose)
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
        case "plan":
            from gitops.commands import publish_cmd

            return publish_cmd.plan(args.repo, args.source, args.host, as_json=args.json)
        case "publish":
            return _publish(parser, args)
        case "build":
            return _build(args)
        case "verify":
            from gitops.commands import verify_cmd

            return verify_cmd.verify(args.repo, args.rev, args.allowed_signers, as_json=args.json)
        case "agent":
            from gitops.commands import agent_cmd

            return agent_cmd.dispatch(args)
        case "sbom":
            from gitops.commands import sbom_cmd

            if args.which is not None:
                return sbom_cmd.which(args.repo, args.which, as_json=args.json)
            return sbom_cmd.show(args.repo, args.host)
        case "vulns":
            from gitops.commands import vulns_cmd

            return vulns_cmd.vulns_command(args.repo, args.feed, args.host, as_json=args.json)
        case "site":
            from gitops.commands import site_cmd

            return site_cmd.build(
                args.repo, args.out, serve=args.serve, port=args.port, as_json=args.json
            )
        case "server":
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
                case _:
                    return server_cmd.hook(args.hook, args.dir)
        case "demo":
            from gitops.demo import scenario as demo

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
        print(f"gitops: error: {err}", file=sys.stderr)
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
            f"gitops: unexpected error: {type(err).__name__}: {err} (a bug; rerun with --debug "
            "for a traceback and report it)",
            file=sys.stderr,
        )
        code = EXIT_BUG
    sys.exit(code)


if __name__ == "__main__":
    main()
