"""One thin typed function per Nix operation; all of them run through gitops.system.process.

Activation follows ``nixos-rebuild``: ``switch`` and ``boot`` set a new generation of the
system profile and run its ``bin/switch-to-configuration <action>``; ``test`` only runs
it. Nix 2.8 (Debian's nix-bin) is the oldest Nix we support: ``nix build --json``, no
``--print-out-paths``.
"""

from __future__ import annotations

import json
import logging
import re
import shutil
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from gitops.errors import GitopsError
from gitops.system import closure_diff, process

log = logging.getLogger(__name__)

NIX = "nix"
NIX_ENV = "nix-env"
NIX_STORE = "nix-store"
LOG_TAIL_LINES = 40
_GENERATION_LINK = re.compile(r"^(?P<profile>.+)-(?P<number>\d+)-link$")


class StepError(GitopsError):
    """A streamed step failed; ``log_tail`` is the end of its output."""

    def __init__(self, message: str, log_tail: str) -> None:
        super().__init__(message)
        self.log_tail = log_tail


class BuildError(StepError):
    pass


class ActivationError(StepError):
    pass


def _stream(
    argv: Sequence[str | Path],
    error: type[StepError],
    what: str,
    *,
    timeout: float | None,
    setting: str = "",
    env: Mapping[str, str] | None = None,
    merge_stdout: bool = False,
) -> process.Streamed:
    """Run ``argv`` with its output streamed to the log; past ``timeout``, ``error`` says
    "<what> timed out after ... (<setting>)" and carries the output's tail."""
    try:
        return process.stream(
            argv,
            on_line=_log_line,
            env=env,
            timeout=timeout,
            tail_lines=LOG_TAIL_LINES,
            merge_stdout=merge_stdout,
        )
    except process.TimedOutError as err:
        where = f" ({setting})" if setting else ""
        raise error(
            f"{what} timed out after {process.format_seconds(err.timeout)}{where}",
            "\n".join(err.tail),
        ) from err


@dataclass(frozen=True)
class Generation:
    number: int
    path: Path  # the store path it points to
    link: Path  # <profile>-<number>-link


def build_flake(
    flake_ref: str, attr: str, *, extra_args: tuple[str, ...] = (), timeout: float | None = None
) -> Path:
    """``nix build --no-link --json <flake>#<attr>``; the output path.

    The build log is streamed to this process's log as it comes (the journal, or stderr
    with ``-v``); only its tail is kept, for the report. Past ``timeout`` seconds the build
    is stopped and :class:`BuildError` says so.
    """
    argv = [
        NIX,
        # Hosts need not enable flakes globally for the agent to build one.
        "--extra-experimental-features",
        "nix-command flakes",
        "build",
        "--no-link",
        "--json",
        "--print-build-logs",
        *extra_args,
        f"{flake_ref}#{attr}",
    ]
    result = _stream(argv, BuildError, "nix build", timeout=timeout, setting="build_timeout")
    if result.returncode != 0:
        last = next(
            (line.strip() for line in reversed(result.tail) if line.startswith("error")),
            f"exit {result.returncode}",
        )
        raise BuildError(f"nix build failed: {last}", "\n".join(result.tail))
    try:
        outputs = json.loads(result.stdout)[0]["outputs"]
        return Path(outputs.get("out") or next(iter(outputs.values())))
    except (ValueError, KeyError, IndexError, StopIteration) as err:
        raise GitopsError(f"nix build printed unexpected output: {result.stdout[:200]!r}") from err


def _log_line(line: str) -> None:
    log.info("%s", line)


def toplevel_attr(host: str) -> str:
    return f"nixosConfigurations.{host}.config.system.build.toplevel"


def generations(profile: Path) -> list[Generation]:
    """The profile's generations, oldest first, read from its ``<name>-N-link`` symlinks."""
    found = []
    if not profile.parent.is_dir():
        return []
    for link in profile.parent.iterdir():
        match = _GENERATION_LINK.match(link.name)
        if match is None or match.group("profile") != profile.name or not link.is_symlink():
            continue
        found.append(Generation(int(match.group("number")), link.resolve(), link))
    return sorted(found, key=lambda g: g.number)


def current_generation(profile: Path) -> Generation | None:
    if not profile.is_symlink():
        return None
    target = profile.parent / profile.readlink()
    match = _GENERATION_LINK.match(target.name)
    if match is None:
        return None
    return Generation(int(match.group("number")), target.resolve(), target)


def set_profile(profile: Path, path: Path) -> Generation:
    """A new generation of ``profile`` pointing at ``path`` (``nix-env -p P --set``)."""
    profile.parent.mkdir(parents=True, exist_ok=True)
    process.run([NIX_ENV, "-p", profile, "--set", path], check=True)
    generation = current_generation(profile)
    if generation is None:
        raise GitopsError(f"{profile}: no generation after nix-env --set")
    return generation


def switch_generation(profile: Path, number: int) -> None:
    process.run([NIX_ENV, "-p", profile, "--switch-generation", str(number)], check=True)


def delete_generations(profile: Path, numbers: list[int]) -> None:
    if numbers:
        process.run(
            [NIX_ENV, "-p", profile, "--delete-generations", *map(str, numbers)], check=True
        )


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _diff_closures_argv(old: Path | str, new: Path | str) -> list[str | Path]:
    return [NIX, "--extra-experimental-features", "nix-command", "store", "diff-closures", old, new]


def diff_closures(old: Path, new: Path, *, limit: int = 200) -> list[str]:
    """What changed between two systems, as ``nix store diff-closures`` says it
    (``firefox: 128.0 → 129.0, +1.2 MiB``); empty when it cannot tell."""
    result = process.run(_diff_closures_argv(old, new), check=False)
    if result.returncode != 0:
        return []
    lines = [_ANSI.sub("", line).strip() for line in result.stdout.splitlines()]
    return [line for line in lines if line][:limit]


def closure_changes(old: Path | str, new: Path | str) -> closure_diff.ClosureDiff:
    """``nix store diff-closures old new``, parsed: packages added, removed, with other
    versions, and size changes. Both paths must be valid in the local store; GitopsError
    carries Nix's words when the command fails."""
    result = process.run(_diff_closures_argv(old, new), check=False)
    if result.returncode != 0:
        raise GitopsError(
            f"nix store diff-closures {old} {new} failed: "
            + (_nix_error(result.stderr) or f"exit {result.returncode}")
        )
    return closure_diff.parse(result.stdout)


def closure(path: Path | str) -> list[str]:
    """Every store path ``path`` needs at run time, itself included
    (``nix-store --query --requisites``)."""
    result = process.run([NIX_STORE, "--query", "--requisites", path], check=True)
    return [line.strip() for line in result.stdout.splitlines() if line.strip()]


def keep_last_generations(profile: Path, count: int) -> None:
    """Delete all but the newest ``count`` generations (the current one is always kept)."""
    if count > 0 and len(generations(profile)) > count:
        process.run([NIX_ENV, "-p", profile, "--delete-generations", f"+{count}"], check=True)


def switch_to_configuration(path: Path, action: str, *, timeout: float | None = None) -> None:
    """Run the system's own activation, its output streamed to the log; failures (and
    time limits) carry the output's tail."""
    script = path / "bin" / "switch-to-configuration"
    if not script.exists():
        raise ActivationError(f"{path} has no bin/switch-to-configuration: not a NixOS system", "")
    result = _stream(
        [script, action],
        ActivationError,
        f"switch-to-configuration {action}",
        timeout=timeout,
        setting="activation_timeout",
        env={"NIXOS_INSTALL_BOOTLOADER": "0"},
        merge_stdout=True,
    )
    if result.returncode != 0:
        raise ActivationError(
            f"switch-to-configuration {action} failed (exit {result.returncode})",
            "\n".join(result.tail),
        )


def parse_files(files: list[Path]) -> list[tuple[Path, str]]:
    """``nix-instantiate --parse`` every file; (file, error) for each that does not parse.

    One run for all files; only when it fails are files parsed one by one, to name each.
    """
    if not files:
        return []
    if process.run(["nix-instantiate", "--parse", *files], check=False).returncode == 0:
        return []
    errors = []
    for path in files:
        result = process.run(["nix-instantiate", "--parse", path], check=False)
        if result.returncode != 0:
            errors.append((path, _nix_error(result.stderr)))
    return errors


def has_nix_instantiate() -> bool:
    return shutil.which("nix-instantiate") is not None


def normalised_source(text: str, *, cwd: Path) -> str | None:
    """``text`` as ``nix-instantiate --parse -`` prints it back: the parsed expression,
    without comments or layout, attributes in one order (None: it does not parse).

    Relative paths come out resolved against ``cwd``: compare two versions of a file
    normalised with the same ``cwd``. One process per text, so what Nix prints does not
    depend on what it read before.
    """
    result = process.run(["nix-instantiate", "--parse", "-"], check=False, input=text, cwd=cwd)
    if result.returncode != 0:
        return None
    return result.stdout


def _nix_error(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    error = next((line.removeprefix("error: ") for line in lines if line.startswith("error:")), "")
    where = next(
        (line.removeprefix("at ").rstrip(":") for line in lines if line.startswith("at ")), ""
    )
    location = where.rsplit("/", 1)[-1]
    return f"{error} (at {location})" if where else error or "syntax error"


# -- binary caches: signing, copying, substituting ---------------------------------------

STORE_DIR = "/nix/store"
_STORE_PATH = re.compile(r"^/nix/store/[0-9a-df-np-sv-z]{32}-[A-Za-z0-9+\-._?=]+$")


class SubstituteError(StepError):
    pass


def is_store_path(text: str) -> bool:
    """``/nix/store/<32 base-32 chars>-<name>``, nothing below it, no ``..``."""
    return _STORE_PATH.match(text) is not None and ".." not in text


def is_valid(path: str) -> bool:
    """Whether the store has ``path`` as a valid path (not merely a directory on disk: a
    failed substitution may leave one behind)."""
    return process.run([NIX_STORE, "--check-validity", path], check=False).returncode == 0


def invalid_paths(paths: list[str]) -> set[str]:
    """Which of ``paths`` the local store does not have as valid paths (one
    ``nix-store --check-validity --print-invalid`` for all of them)."""
    if not paths:
        return set()
    result = process.run([NIX_STORE, "--check-validity", "--print-invalid", *paths], check=True)
    return {line.strip() for line in result.stdout.splitlines() if line.strip()}


def generate_signing_key(name: str) -> tuple[str, str]:
    """A new binary-cache signing key pair ``(secret, public)`` as ``name:base64`` text
    (``nix key generate-secret`` / ``convert-secret-to-public``)."""
    secret = process.run(
        [
            NIX,
            "--extra-experimental-features",
            "nix-command",
            "key",
            "generate-secret",
            "--key-name",
            name,
        ],
        check=True,
    ).stdout.strip()
    public = process.run(
        [NIX, "--extra-experimental-features", "nix-command", "key", "convert-secret-to-public"],
        check=True,
        input=secret,
    ).stdout.strip()
    return secret, public


def sign_closure(paths: list[str], key_file: Path) -> None:
    """Sign ``paths`` and everything they need with the secret key in ``key_file``
    (``nix store sign --recursive``): the signatures travel with them to a cache."""
    if paths:
        process.run(
            [
                NIX,
                "--extra-experimental-features",
                "nix-command",
                "store",
                "sign",
                "--key-file",
                key_file,
                "--recursive",
                *paths,
            ],
            check=True,
        )


def copy_to(cache: str, paths: list[str]) -> None:
    """``nix copy --to <cache>``: the closures of ``paths`` into a binary cache
    (``file:///dir``, or any store URL Nix knows, such as ``s3://``)."""
    if paths:
        process.run(
            [NIX, "--extra-experimental-features", "nix-command", "copy", "--to", cache, *paths],
            check=True,
        )


def realise_from(
    path: str,
    substituters: tuple[str, ...],
    trusted_public_keys: tuple[str, ...],
    *,
    timeout: float | None = None,
) -> Path:
    """Make ``path`` valid in the local store by substitution only: from ``substituters``,
    accepting only what ``trusted_public_keys`` signed, never building.

    A path already valid here is not fetched again. :class:`SubstituteError` carries Nix's
    own words: a path signed by no trusted key, a NAR that is not what its signed narinfo
    says, a cache that does not have it.
    """
    argv = [
        NIX_STORE,
        "--realise",
        path,
        "--option",
        "substituters",
        " ".join(substituters),
        "--option",
        "trusted-public-keys",
        " ".join(trusted_public_keys),
        "--option",
        "require-sigs",
        "true",
        "--option",
        "fallback",
        "false",
        # Only what the caches hold: no building, even if a .drv is known here.
        "--option",
        "max-jobs",
        "0",
    ]
    result = _stream(argv, SubstituteError, f"fetching {path}", timeout=timeout)
    if result.returncode != 0:
        raise SubstituteError(
            _substitute_problem(result.tail, result.returncode), "\n".join(result.tail)
        )
    return Path(path)


def _substitute_problem(tail: tuple[str, ...], returncode: int) -> str:
    """The line of Nix's output that says why, most telling first."""
    lines = [line.strip() for line in tail if line.strip()]
    for marker in ("not signed by any of the keys", "hash mismatch", "error:", "warning:"):
        for line in lines:
            if marker in line and "build of '" not in line:
                return line.removeprefix("error: ").removeprefix("warning: ")
    if any("don't know how to build" in line for line in lines):
        return "no configured cache has it"
    return f"nix-store --realise failed (exit {returncode})"


def eval_drv_path(flake_ref: str, attr: str, *, timeout: float | None = None) -> str:
    """Evaluate ``<flake>#<attr>.drvPath`` (``nix eval --raw``): the derivation, no build.
    GitopsError carries Nix's error."""
    result = process.run(
        [
            NIX,
            "--extra-experimental-features",
            "nix-command flakes",
            "eval",
            "--raw",
            f"{flake_ref}#{attr}.drvPath",
        ],
        check=False,
        timeout=timeout,
    )
    if result.returncode != 0:
        raise GitopsError(eval_error(result.stderr))
    return result.stdout.strip()


def eval_error(stderr: str) -> str:
    """Nix's evaluation error in one line: the message, then where (``at file:line``)."""
    lines = [_ANSI.sub("", line).strip() for line in stderr.splitlines() if line.strip()]
    errors = [line.removeprefix("error: ").strip() for line in lines if line.startswith("error:")]
    # Nix 2.8 prints the outermost context first ("while evaluating ..."), the cause last.
    message = next((e for e in reversed(errors) if e and not e.startswith("…")), "")
    if not message:
        message = next((line for line in lines if not line.startswith("…")), "evaluation failed")
    where = next(
        (line.removeprefix("at ").rstrip(":") for line in lines if line.startswith("at ")), ""
    )
    return f"{message} (at {where})" if where else message
