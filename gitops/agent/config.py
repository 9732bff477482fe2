"""The agent's configuration file (YAML; JSON as the NixOS module writes it is YAML too).

Every field is documented in docs/reference/agent.md. Trust comes from this machine's
configuration only: the publisher keys are a file pinned here, never read from the branch.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TypeVar

from gitops.errors import GitopsError
from gitops.fleet.schema import Problems, Reader, load_yaml
from gitops.protocol import is_host_name, is_secret_name
from gitops.system import transport
from gitops.trust.allowed_signers import AllowedSigners

DEFAULT_CONFIG = Path("/etc/gitops/agent.yaml")
DEFAULT_STATE_DIR = Path("/var/lib/gitops-agent")
DEFAULT_PROFILE = Path("/nix/var/nix/profiles/system")
DEFAULT_HOST_KEY = Path("/etc/ssh/ssh_host_ed25519_key")
DEFAULT_SECRETS_DIR = Path("/run/gitops-secrets")


class Action(StrEnum):
    """What to do with a built system, as ``nixos-rebuild`` spells it."""

    SWITCH = "switch"  # new profile generation, activate now
    BOOT = "boot"  # new profile generation, activate at next boot
    TEST = "test"  # activate now, no new generation (gone after reboot)


class Mode(StrEnum):
    """How the agent gets the system of a deploy commit."""

    BUILD = "build"  # evaluate and build it here, always
    # Realise the commit's pinned System-Path from the caches, never evaluating or building;
    # a commit without one, or a refused or missing path, is substitute-failed.
    SUBSTITUTE = "substitute"
    # Realise the pinned System-Path when the commit has one; build here when it has none
    # or the caches refuse it (the reason says so).
    AUTO = "auto"


@dataclass(frozen=True)
class HealthConfig:
    failed_units: bool = True  # systemctl --failed must be empty after a switch
    remote: bool = True  # the git remote must still be reachable after a switch
    commands: tuple[tuple[str, ...], ...] = ()  # each must exit 0
    grace: int = 10  # seconds to let units settle before checking
    timeout: int = 60  # seconds for each check command
    remote_grace: int = 60  # seconds an unreachable remote is retried before it counts


@dataclass(frozen=True)
class AgentConfig:
    host: str
    remote: str
    trusted_publishers: Path
    signing_key: Path = DEFAULT_HOST_KEY
    # Factories, not values: read at construction, so tests can move the defaults away
    # from the real system (tests/conftest.py) and no default escapes that.
    state_dir: Path = field(default_factory=lambda: DEFAULT_STATE_DIR)
    system_profile: Path = field(default_factory=lambda: DEFAULT_PROFILE)
    action: Action = Action.SWITCH
    poll_interval: int = 300
    poll_jitter: int = 60
    report_interval: int = 3600
    ssh_key: Path | None = None  # key to log in to the git server over ssh
    known_hosts: Path | None = None  # the git server's host keys; required for ssh remotes
    http_token_file: Path | None = None  # for https remotes with a token
    http_username: str = "gitops"
    health: HealthConfig = field(default_factory=HealthConfig)
    root: Path = Path("/")  # where facts are read from (tests point it at a fixture tree)
    build_args: tuple[str, ...] = ()
    trust_on_first_use: bool = True
    min_commit: str | None = None  # pinned floor: the first applied commit must descend from it
    max_age: int | None = None  # refuse deploy heads committed longer ago than this
    watch: tuple[Path, ...] = ()  # paths whose change triggers a cycle (a local mirror)
    keep_generations: int = 0  # 0 keeps all profile generations
    build_retry_interval: int = 3600  # a failed build of one commit is retried after this; 0: never
    build_timeout: int = 7200  # nix build is stopped after this (a build that never ends)
    activation_timeout: int = 600  # switch-to-configuration is stopped after this
    # Prometheus metrics after each cycle (a node_exporter textfile-collector file); None: off
    metrics_file: Path | None = None
    # Decrypted secrets (docs/secrets.md): a tmpfs path, one file per secret.
    secrets_dir: Path = field(default_factory=lambda: DEFAULT_SECRETS_DIR)
    # Key escrow: name -> file (a LUKS recovery key, the host key), encrypted to these
    # age/SSH recipients (the admins in fleet.yaml) into the reports branch.
    escrow: tuple[tuple[str, Path], ...] = ()
    escrow_recipients: tuple[str, ...] = ()
    # Who may sign commands (an allowed-signers file, docs/commands.md); None: commands are
    # refused.
    trusted_commanders: Path | None = None
    mode: Mode = Mode.AUTO
    substituters: tuple[str, ...] = ()  # binary caches a pinned system is fetched from
    trusted_public_keys: tuple[str, ...] = ()  # name:base64 keys their narinfos must be signed by

    def publisher_trust(self) -> AllowedSigners:
        return AllowedSigners.load(self.trusted_publishers)

    def commander_trust(self) -> AllowedSigners | None:
        return (
            None
            if self.trusted_commanders is None
            else AllowedSigners.load(self.trusted_commanders)
        )

    def credentials(self) -> transport.Credentials:
        """How this agent logs in to the git server."""
        return transport.Credentials(
            ssh_key=self.ssh_key,
            known_hosts=self.known_hosts,
            http_token_file=self.http_token_file,
            http_username=self.http_username,
        )

    @property
    def status_file(self) -> Path:
        """The last cycle's summary, readable by any user (gitops.agent.status)."""
        return self.state_dir / "status.json"

    @property
    def trigger_file(self) -> Path:
        """Touched by ``gitops agent trigger`` (and the local socket) to ask for a cycle now."""
        return self.state_dir / "trigger"


def _path(reader: Reader, key: str, default: Path | None = None) -> Path | None:
    text = reader.string(key)
    if not text:
        return default
    path = Path(text)
    if not path.is_absolute():
        reader.problem(key, f"{text!r} must be an absolute path")
        return default
    return path


def _positive(reader: Reader, key: str, default: int) -> int:
    seconds = reader.duration(key, default)
    if seconds <= 0:
        reader.problem(key, "must be longer than 0 seconds", "e.g. 30m or 2h")
        return default
    return seconds


def _default(cls: type[AgentConfig] | type[HealthConfig], name: str) -> object:
    """A field's default, so parse_config never writes a default a second time."""
    spec = next(f for f in dataclasses.fields(cls) if f.name == name)
    if spec.default_factory is not dataclasses.MISSING:
        return spec.default_factory()
    return spec.default


def _seconds(reader: Reader, key: str, cls: type[AgentConfig] | type[HealthConfig]) -> int:
    default = _default(cls, key)
    assert isinstance(default, int)  # a field declared int
    return reader.duration(key, default)


_Choice = TypeVar("_Choice", Action, Mode)


def _choice(top: Reader, key: str, kind: type[_Choice], words: str) -> _Choice:
    """``key`` as one of ``kind`` (``words`` lists them); its default when it is not one."""
    default = _default(AgentConfig, key)
    assert isinstance(default, kind)  # a field declared ``kind``
    text = top.string(key, str(default))
    try:
        return kind(text)
    except ValueError:
        top.problem(key, f"{text!r} is not {words}")
        return default


def _substituter_problem(url: str) -> str | None:
    scheme, sep, rest = url.partition("://")
    if not sep or not scheme or not rest or any(c.isspace() for c in url):
        return (
            f"{url!r} is not a binary cache URL (file:///srv/nix-cache, https://cache.example.org)"
        )
    return None


def _key_problem(key: str) -> str | None:
    name, sep, data = key.partition(":")
    if not sep or not name or len(data) < 40 or any(c.isspace() for c in key):
        return (
            f"{key!r} is not a Nix public key (name:base64, from nix key convert-secret-to-public)"
        )
    return None


def _substitution(top: Reader, mode: Mode) -> tuple[tuple[str, ...], tuple[str, ...]]:
    caches = top.strings("substituters", check=_substituter_problem)
    keys = top.strings("trusted_public_keys", check=_key_problem)
    if mode is Mode.SUBSTITUTE and not (caches and keys):
        top.problem(
            "mode",
            "substitute needs substituters and trusted_public_keys",
            "list the fleet's binary caches and the key that signs them, or use mode: auto",
        )
    return caches, keys


def _health(top: Reader) -> HealthConfig:
    health = top.mapping("health")
    commands = []
    for index, command in enumerate(health.get("commands") or []):
        if isinstance(command, str):
            command = ["/bin/sh", "-c", command]
        if (
            not isinstance(command, list)
            or not command
            or not all(isinstance(a, str) for a in command)
        ):
            health.problem(f"commands[{index}]", "must be a command line or a list of arguments")
            continue
        commands.append(tuple(command))
    config = HealthConfig(
        failed_units=health.boolean("failed_units", HealthConfig.failed_units),
        remote=health.boolean("remote", HealthConfig.remote),
        commands=tuple(commands),
        grace=_seconds(health, "grace", HealthConfig),
        timeout=_seconds(health, "timeout", HealthConfig),
        remote_grace=_seconds(health, "remote_grace", HealthConfig),
    )
    health.finish()
    return config


def _watch(top: Reader) -> tuple[Path, ...]:
    watch = []
    for item in top.strings("watch"):
        if not item.startswith("/"):
            top.problem("watch", f"{item!r} must be an absolute path")
        else:
            watch.append(Path(item))
    return tuple(watch)


def _escrow(top: Reader) -> tuple[tuple[str, Path], ...]:
    escrow = top.mapping("escrow")
    found = []
    for name in sorted(map(str, escrow.data)):
        path = _path(escrow, name)
        if not is_secret_name(name):
            escrow.problem(name, "is not a name for escrow/<name>.age", "letters, digits, . _ -")
        elif path is not None:
            found.append((name, path))
    escrow.finish()
    if found and not top.data.get("escrow_recipients"):
        top.problem("escrow_recipients", "missing", "list the admins' age or SSH keys")
    return tuple(found)


def _required(top: Reader) -> tuple[str, str, Path]:
    host = top.string("host", required=True)
    if host and not is_host_name(host):
        top.problem("host", f"{host!r} is not a valid host name", "use an RFC 1123 label")
    remote = top.string("remote", required=True)
    trusted = _path(top, "trusted_publishers")
    if trusted is None:
        top.problem(
            "trusted_publishers",
            "is missing",
            "point it at an allowed-signers file with the publisher keys",
        )
    return host, remote, trusted or Path("/nonexistent")


def _default_path(top: Reader, key: str) -> Path:
    default = _default(AgentConfig, key)
    assert isinstance(default, Path)  # a field declared Path
    return _path(top, key, default) or default


def parse_config(
    text: bytes | str, where: str, overrides: dict[str, object] | None = None
) -> AgentConfig:
    problems = Problems()
    data = load_yaml(text, where, problems) or {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    top = Reader(data, where, problems)
    host, remote, trusted = _required(top)
    mode = _choice(top, "mode", Mode, "build, substitute or auto")
    substituters, trusted_public_keys = _substitution(top, mode)
    config = AgentConfig(
        host=host,
        remote=remote,
        trusted_publishers=trusted,
        signing_key=_default_path(top, "signing_key"),
        state_dir=_default_path(top, "state_dir"),
        system_profile=_default_path(top, "system_profile"),
        action=_choice(top, "action", Action, "switch, boot or test"),
        poll_interval=_seconds(top, "poll_interval", AgentConfig),
        poll_jitter=_seconds(top, "poll_jitter", AgentConfig),
        report_interval=_seconds(top, "report_interval", AgentConfig),
        ssh_key=_path(top, "ssh_key"),
        known_hosts=_path(top, "known_hosts"),
        http_token_file=_path(top, "http_token_file"),
        http_username=top.string("http_username", AgentConfig.http_username),
        health=_health(top),
        root=_default_path(top, "root"),
        build_args=top.strings("build_args"),
        trust_on_first_use=top.boolean("trust_on_first_use", AgentConfig.trust_on_first_use),
        min_commit=top.string("min_commit") or None,
        max_age=top.optional_duration("max_age"),
        watch=_watch(top),
        keep_generations=_seconds(top, "keep_generations", AgentConfig),
        build_retry_interval=_seconds(top, "build_retry_interval", AgentConfig),
        build_timeout=_positive(top, "build_timeout", AgentConfig.build_timeout),
        activation_timeout=_positive(top, "activation_timeout", AgentConfig.activation_timeout),
        metrics_file=_path(top, "metrics_file"),
        secrets_dir=_default_path(top, "secrets_dir"),
        escrow=_escrow(top),
        escrow_recipients=top.strings("escrow_recipients"),
        trusted_commanders=_path(top, "trusted_commanders"),
        mode=mode,
        substituters=substituters,
        trusted_public_keys=trusted_public_keys,
    )
    top.finish()
    if is_ssh_remote(remote) and config.known_hosts is None:
        top.problem(
            "known_hosts",
            "is required for an ssh remote",
            "point it at a file with the git server's host key (ssh-keyscan output)",
        )
    problems.raise_if_any(f"{where}: invalid agent configuration")
    return config


def is_ssh_remote(remote: str) -> bool:
    """``ssh://...`` or scp-like ``user@host:path``."""
    return remote.startswith("ssh://") or ("@" in remote and ":" in remote and "://" not in remote)


def load_config(path: Path, overrides: dict[str, object] | None = None) -> AgentConfig:
    try:
        text = path.read_bytes()
    except OSError as err:
        raise GitopsError(
            f"{path}: cannot read the agent configuration ({err.strerror}); pass --config"
        ) from err
    return parse_config(text, str(path), overrides)
