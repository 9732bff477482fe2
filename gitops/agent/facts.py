"""Facts for compliance, and the running system, as a host's files and tools tell them.

``collect_facts`` returns the "Facts (schema 1)" of docs/protocol.md, ``collect_system``
the ``system`` object of a report. Every path is read under ``root``: the agent passes
``/``, tests pass a tree shaped like a NixOS root (absolute symlinks inside it are
followed inside it, as a chroot would). Commands (systemctl, nft, iptables, sshd -T,
nixos-version, zpool, zfs) run only when ``root`` is ``/``; for any other root, files
only. Sources are listed in notes/users.md section 2.

Each collector says ``"unknown"`` (``None`` in SystemInfo) rather than guess, and none
raises: a collector that fails is logged at debug level and its facts become unknown.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from gitops.errors import GitopsError
from gitops.protocol import UNKNOWN, SystemInfo
from gitops.system import process

log = logging.getLogger(__name__)

FACT_KEYS: Final = (
    "firewall",
    "ssh_password_login",
    "ssh_root_login",
    "disk_encryption",
    "luks_devices",
    "gc_timer",
    "auto_upgrade_timer",
    "failed_units",
    "uptime_seconds",
    "disk_free_bytes",
    "disk_total_bytes",
    "machine_id",
    "nixos_version",
)

COMMAND_TIMEOUT: Final = 20.0
MAX_SYMLINKS: Final = 40
UNITS_DIR: Final = "/etc/systemd/system"
# A service's PATH on NixOS does not include the system's tools; they are here.
SYSTEM_BIN: Final = "/run/current-system/sw/bin"
DISK_MOUNTS: Final = ("/", "/nix")

_LUKS_UUID = re.compile(r"^CRYPT-LUKS[12]-")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_GENERATION_LINK = re.compile(r"^(?P<profile>.+)-(?P<number>\d+)-link$")
_SSHD_LINE = re.compile(r"^\s*(?P<key>[A-Za-z0-9]+)(?:\s*=\s*|\s+)(?P<value>.*?)\s*$")
_STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-[A-Za-z0-9+._?=-]+")
_ACTIVE_STATES = ("active", "reloading", "activating")
_ENABLED_STATES = ("enabled", "enabled-runtime")


NIX_STORE = "/nix/store"


class _Host:
    """A root file system, live (``/``) or a tree standing in for one."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.live = root == Path("/")
        self._runs: dict[tuple[str, ...], subprocess.CompletedProcess[str] | None] = {}
        self._version: dict[str, Any] | bool | None = False  # False: not looked up yet

    def under(self, path: str) -> Path:
        """The host path ``path`` in this process's file system, symlinks not followed.

        A tree standing in for a host may share this machine's Nix store (as NixOS
        containers do): a store path missing under ``root`` is read from ``/nix/store``.
        """
        inside = self.root.joinpath(*PurePosixPath(path).parts[1:])
        in_store = path == NIX_STORE or path.startswith(f"{NIX_STORE}/")
        if not self.live and in_store and not inside.exists():
            shared = Path(path)
            if shared.exists() or shared.is_symlink():
                return shared
        return inside

    def resolve(self, path: str) -> str | None:
        """``readlink -f`` on the host: the final host path, or None if it does not exist.

        Absolute link targets are resolved under ``root``, as inside a chroot.
        """
        pending = list(PurePosixPath(path).parts[1:])
        current = PurePosixPath("/")
        hops = 0
        while pending:
            part = pending.pop(0)
            if part in ("", "."):
                continue
            if part == "..":
                current = current.parent
                continue
            candidate = current / part
            real = self.under(str(candidate))
            try:
                if real.is_symlink():
                    hops += 1
                    if hops > MAX_SYMLINKS:
                        return None
                    target = PurePosixPath(real.readlink())
                    if target.is_absolute():
                        current = PurePosixPath("/")
                        pending = list(target.parts[1:]) + pending
                    else:
                        pending = list(target.parts) + pending
                    continue
                if not real.exists():
                    return None
            except OSError:
                return None
            current = candidate
        return str(current)

    def file(self, path: str) -> Path | None:
        resolved = self.resolve(path)
        return None if resolved is None else self.under(resolved)

    def read(self, path: str) -> str | None:
        target = self.file(path)
        if target is None:
            return None
        try:
            return target.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return None

    def list_dir(self, path: str) -> list[str] | None:
        target = self.file(path)
        if target is None:
            return None
        try:
            return sorted(entry.name for entry in target.iterdir())
        except OSError:
            return None

    def program(self, name: str) -> str | None:
        """A program to run: on PATH, else the current system's (live hosts only)."""
        if not self.live:
            return None
        found = shutil.which(name)
        if found is not None:
            return found
        candidate = Path(SYSTEM_BIN) / name
        return str(candidate) if os.access(candidate, os.X_OK) else None

    def run(self, *args: str) -> subprocess.CompletedProcess[str] | None:
        """Run a command on a live host (once per argv); None if it could not run."""
        if not self.live:
            return None
        if args in self._runs:
            return self._runs[args]
        result: subprocess.CompletedProcess[str] | None
        program = self.program(args[0])
        if program is None:
            log.debug("facts: %s is not installed", args[0])
            result = None
        else:
            try:
                result = process.run(
                    [program, *args[1:]],
                    check=False,
                    timeout=COMMAND_TIMEOUT,
                    env={"LC_ALL": "C", "SYSTEMD_COLORS": "0"},
                )
            except (GitopsError, OSError) as err:
                log.debug("facts: %s", err)
                result = None
        self._runs[args] = result
        return result

    def nixos_version(self) -> dict[str, Any] | None:
        """What ``nixos-version --json`` prints for the current system."""
        if self._version is False:
            self._version = _read_nixos_version(self)
        return self._version if isinstance(self._version, dict) else None


# -- systemd units ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    exists: bool
    enabled: bool  # starts by itself: wanted by a target, or enabled
    active: bool | None  # None when only files were read


def _unit(host: _Host, name: str) -> _Unit | None:
    """A unit's state from systemd (live), else from its files; None if unknowable."""
    result = host.run(
        "systemctl", "show", "--property=LoadState,ActiveState,UnitFileState", "--", name
    )
    if result is not None and result.returncode == 0:
        props = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
        load = props.get("LoadState", "")
        if load in ("not-found", "masked"):
            return _Unit(exists=False, enabled=False, active=False)
        if load == "loaded":
            active = props.get("ActiveState", "") in _ACTIVE_STATES
            enabled = props.get("UnitFileState", "") in _ENABLED_STATES
            return _Unit(exists=True, enabled=enabled or active, active=active)
    return _unit_files(host, name)


def _unit_files(host: _Host, name: str) -> _Unit | None:
    entries = host.list_dir(UNITS_DIR)
    if entries is None:
        return None
    unit_file = host.resolve(f"{UNITS_DIR}/{name}")
    if unit_file is None:
        return _Unit(exists=False, enabled=False, active=None)
    # Wanted under its own name, or under another name for the same file (an alias:
    # Debian's sshd.service is ssh.service).
    wanted = any(
        host.resolve(f"{UNITS_DIR}/{entry}/{link}") == unit_file
        for entry in entries
        if entry.endswith((".wants", ".requires", ".upholds"))
        for link in host.list_dir(f"{UNITS_DIR}/{entry}") or []
    )
    return _Unit(exists=True, enabled=wanted, active=None)


def _timer(host: _Host, name: str) -> str:
    unit = _unit(host, name)
    if unit is None:
        return UNKNOWN
    return "enabled" if unit.exists and unit.enabled else "absent"


def _running(unit: _Unit) -> bool:
    return bool(unit.active) if unit.active is not None else unit.exists and unit.enabled


# -- collectors ------------------------------------------------------------------------


def _firewall(host: _Host) -> dict[str, Any]:
    return {"firewall": _firewall_state(host)}


def _firewall_state(host: _Host) -> str:
    iptables_unit = _unit(host, "firewall.service")  # the iptables backend
    nftables_unit = _unit(host, "nftables.service")  # the nftables backend loads nixos-fw
    if host.live:
        if iptables_unit is not None and iptables_unit.active:
            return "active"
        nft = host.run("nft", "list", "table", "inet", "nixos-fw")
        if nft is not None and nft.returncode == 0:
            return "active"
        iptables = host.run("iptables", "-w", "-S", "INPUT")
        if iptables is not None and iptables.returncode == 0 and "-j nixos-fw" in iptables.stdout:
            return "active"
        no_table = nft is not None and "No such file or directory" in nft.stderr
        if iptables_unit is not None and iptables_unit.active is False:
            if nftables_unit is not None and nftables_unit.active is False:
                return "inactive"
            if no_table:
                return "inactive"
        return UNKNOWN
    # A tree, not a running system: what would run at boot.
    if iptables_unit is None or nftables_unit is None:
        return UNKNOWN
    if iptables_unit.exists and iptables_unit.enabled:
        return "active"
    if nftables_unit.exists and nftables_unit.enabled:
        return _nftables_ruleset_has_firewall(host)
    return "inactive"


def _nftables_ruleset_has_firewall(host: _Host) -> str:
    """Whether nftables.service (or a store file it names) loads the nixos-fw table."""
    text = host.read(f"{UNITS_DIR}/nftables.service")
    if text is None:
        return UNKNOWN
    seen: set[str] = set()
    pending = [text]
    complete = True
    while pending:
        chunk = pending.pop()
        if "nixos-fw" in chunk:
            return "active"
        for path in _STORE_PATH.findall(chunk):
            if path in seen or len(seen) > 20:
                continue
            seen.add(path)
            content = host.read(path)
            if content is None:
                complete = False
            else:
                pending.append(content)
    return "inactive" if complete else UNKNOWN


def parse_sshd_config(text: str) -> tuple[dict[str, str], bool]:
    """sshd's global settings from sshd_config text: (first value of each keyword, complete).

    sshd keeps the first value it reads for a keyword and stops applying global settings
    at the first ``Match``. ``complete`` is False when an ``Include`` came first: a
    keyword not seen may be set in a file this parser does not read.
    """
    settings: dict[str, str] = {}
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        match = _SSHD_LINE.match(stripped)
        if match is None:
            continue
        key = match.group("key").lower()
        value = match.group("value").strip().strip('"').lower()
        if key == "match":
            break
        if key == "include":
            return settings, False
        settings.setdefault(key, value)
    return settings, True


# OpenSSH's own defaults, which `sshd -T` reports when sshd_config says nothing.
_SSHD_DEFAULTS: Final = {
    "passwordauthentication": "yes",
    "kbdinteractiveauthentication": "yes",
    "usepam": "no",
    "permitrootlogin": "prohibit-password",
}


def _sshd_settings(host: _Host) -> tuple[dict[str, str], bool] | None:
    result = host.run("sshd", "-T")
    if result is not None and result.returncode == 0:
        settings: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, _, value = line.strip().partition(" ")
            settings.setdefault(key.lower(), value.strip().lower())
        return settings, True
    text = host.read("/etc/ssh/sshd_config")
    return None if text is None else parse_sshd_config(text)


def _ssh(host: _Host) -> dict[str, Any]:
    units = [_unit(host, "sshd.service"), _unit(host, "sshd.socket")]
    known = [unit for unit in units if unit is not None]
    if len(known) == len(units) and not any(_running(unit) for unit in known):
        return {"ssh_password_login": "not-running", "ssh_root_login": "not-running"}
    found = _sshd_settings(host)
    if found is None:
        return {}
    settings, complete = found
    if "challengeresponseauthentication" in settings:  # the old name of the keyword
        settings.setdefault(
            "kbdinteractiveauthentication", settings["challengeresponseauthentication"]
        )

    def value(key: str) -> str | None:
        if key in settings:
            return settings[key]
        return _SSHD_DEFAULTS[key] if complete else None

    facts: dict[str, Any] = {}
    password = value("passwordauthentication")
    keyboard = value("kbdinteractiveauthentication")
    pam = value("usepam")
    # Keyboard-interactive logins ask for the password through PAM.
    if password == "yes" or (keyboard == "yes" and pam == "yes"):
        facts["ssh_password_login"] = "enabled"
    elif password == "no" and (keyboard == "no" or pam == "no"):
        facts["ssh_password_login"] = "disabled"
    root_login = value("permitrootlogin")
    if root_login is not None:
        facts["ssh_root_login"] = (
            "prohibit-password" if root_login == "without-password" else root_login
        )
    return facts


@dataclass(frozen=True)
class _Mapper:
    name: str  # dm-N
    dm_name: str  # the /dev/mapper name
    uuid: str
    slaves: tuple[str, ...]


def _mappers(host: _Host) -> dict[str, _Mapper] | None:
    blocks = host.list_dir("/sys/block")
    if blocks is None:
        return None
    found = {}
    for block in blocks:
        if not block.startswith("dm-"):
            continue
        uuid = host.read(f"/sys/block/{block}/dm/uuid")
        name = host.read(f"/sys/block/{block}/dm/name")
        if uuid is None or name is None:
            return None  # a device mapper device we cannot read: do not guess
        slaves = host.list_dir(f"/sys/block/{block}/slaves") or []
        found[block] = _Mapper(block, name.strip(), uuid.strip(), tuple(slaves))
    return found


def _is_luks(mappers: dict[str, _Mapper], block: str, depth: int = 0) -> bool:
    """Whether ``block`` is dm-crypt LUKS or sits on one (LVM on LUKS)."""
    mapper = mappers.get(block)
    if mapper is None or depth > 8:
        return False
    if _LUKS_UUID.match(mapper.uuid):
        return True
    return bool(mapper.slaves) and all(_is_luks(mappers, s, depth + 1) for s in mapper.slaves)


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(host: _Host) -> dict[str, tuple[str, str]] | None:
    """mount point -> (source, fstype) from /proc/mounts; later mounts hide earlier ones."""
    text = host.read("/proc/mounts")
    if text is None:
        return None
    mounts: dict[str, tuple[str, str]] = {}
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3:
            mounts[_unescape_mount(fields[1])] = (_unescape_mount(fields[0]), fields[2])
    return mounts


def _block_of(host: _Host, device: str, mappers: dict[str, _Mapper]) -> str | None:
    """The kernel block name (dm-0, nvme0n1p2) of a device path from /proc/mounts."""
    if device.startswith("/dev/mapper/"):
        wanted = device.removeprefix("/dev/mapper/")
        for mapper in mappers.values():
            if mapper.dm_name == wanted:
                return mapper.name
    resolved = host.resolve(device)
    path = resolved if resolved is not None else device
    if not path.startswith("/dev/"):
        return None
    name = PurePosixPath(path).name
    # Only a device the kernel lists: an unresolved link (/dev/disk/by-uuid/...) is not one.
    if name in mappers or host.resolve(f"/sys/class/block/{name}") is not None:
        return name
    return None


def _disk(host: _Host) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    mappers = _mappers(host)
    if mappers is not None:
        facts["luks_devices"] = sorted(
            m.dm_name for m in mappers.values() if _LUKS_UUID.match(m.uuid)
        )
    mounts = _mounts(host)
    if mounts is None or mappers is None:
        return facts
    mount = mounts.get("/")
    if mount is not None and mount[1] == "tmpfs":  # impermanence: the data lives on /nix
        mount = mounts.get("/nix")
    if mount is None:
        return facts
    device, fstype = mount
    if fstype == "zfs":
        state = _zfs_encryption(host, device, mappers)
        if state is not None:
            facts["disk_encryption"] = state
        return facts
    block = _block_of(host, device, mappers)
    if block is None:
        return facts  # nfs, overlay, a container: not ours to judge
    facts["disk_encryption"] = "luks" if _is_luks(mappers, block) else "none"
    return facts


def _zfs_encryption(host: _Host, dataset: str, mappers: dict[str, _Mapper]) -> str | None:
    """``luks`` when every disk of the pool is LUKS; ``none`` when neither that nor ZFS
    native encryption; None when it cannot be told (not live, or native encryption,
    which the schema 1 values do not name)."""
    pool = dataset.split("/", 1)[0]
    status = host.run("zpool", "list", "-v", "-H", "-P", "-L", pool)
    if status is None or status.returncode != 0:
        return None
    disks = [
        token
        for line in status.stdout.splitlines()
        for token in line.split()[:1]
        if token.startswith("/dev/")
    ]
    if not disks:
        return None
    if all(
        (block := _block_of(host, disk, mappers)) is not None and _is_luks(mappers, block)
        for disk in disks
    ):
        return "luks"
    native = host.run("zfs", "get", "-H", "-o", "value", "encryption", dataset)
    if native is not None and native.returncode == 0 and native.stdout.strip() == "off":
        return "none"
    return None


def _timers(host: _Host) -> dict[str, Any]:
    return {
        "gc_timer": _timer(host, "nix-gc.timer"),
        "auto_upgrade_timer": _timer(host, "nixos-upgrade.timer"),
    }


def _failed_units(host: _Host) -> dict[str, Any]:
    result = host.run(
        "systemctl", "list-units", "--state=failed", "--plain", "--no-legend", "--no-pager"
    )
    if result is None or result.returncode != 0:
        return {}
    return {
        "failed_units": sorted(
            line.split()[0] for line in result.stdout.splitlines() if line.strip()
        )
    }


def _uptime(host: _Host) -> dict[str, Any]:
    text = host.read("/proc/uptime")
    if text is None or not text.split():
        return {}
    return {"uptime_seconds": int(float(text.split()[0]))}


def _disk_space(host: _Host) -> dict[str, Any]:
    free: dict[str, Any] = {}
    total: dict[str, Any] = {}
    for mount in DISK_MOUNTS:
        target = host.file(mount)
        try:
            if target is None:
                raise FileNotFoundError(mount)
            stat = os.statvfs(target)
        except OSError as err:
            log.debug("facts: statvfs %s: %s", mount, err)
            free[mount] = total[mount] = UNKNOWN
            continue
        free[mount] = stat.f_bavail * stat.f_frsize
        total[mount] = stat.f_blocks * stat.f_frsize
    return {"disk_free_bytes": free, "disk_total_bytes": total}


def _machine_id(host: _Host) -> dict[str, Any]:
    text = host.read("/etc/machine-id")
    if text is None or not _MACHINE_ID.match(text.strip()):
        return {}
    return {"machine_id": text.strip()}


def _version_fact(host: _Host) -> dict[str, Any]:
    version = host.nixos_version()
    return {} if version is None else {"nixos_version": version}


def _read_nixos_version(host: _Host) -> dict[str, Any] | None:
    """``nixos-version --json`` of the current system: run on a live host; in a tree,
    read from the script (its JSON is a here-document), else from the version label."""
    program = f"{SYSTEM_BIN}/nixos-version"
    if host.live:
        result = host.run(program, "--json")
        if result is not None and result.returncode == 0:
            parsed = _version_object(result.stdout)
            if parsed is not None:
                return parsed
    script = host.read(program)
    if script is not None:
        parsed = _version_object(_json_heredoc(script))
        if parsed is not None:
            return parsed
    label = host.read("/run/current-system/nixos-version")
    if label is not None and label.strip():
        return {"nixosVersion": label.strip()}
    return None


def _json_heredoc(script: str) -> str:
    """The here-document after ``--json)`` in the nixos-version script."""
    lines = script.splitlines()
    for index, line in enumerate(lines):
        if line.strip().startswith("--json)"):
            for start in range(index + 1, min(index + 4, len(lines))):
                match = re.search(r"<<-?\s*'?(\w+)'?", lines[start])
                if match:
                    end = match.group(1)
                    body: list[str] = []
                    for text in lines[start + 1 :]:
                        if text.strip() == end:
                            return "\n".join(body)
                        body.append(text)
    return ""


def _version_object(text: str) -> dict[str, Any] | None:
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if isinstance(data, dict) and isinstance(data.get("nixosVersion"), str):
        return data
    return None


_COLLECTORS: Final[tuple[tuple[tuple[str, ...], Callable[[_Host], dict[str, Any]]], ...]] = (
    (("firewall",), _firewall),
    (("ssh_password_login", "ssh_root_login"), _ssh),
    (("disk_encryption", "luks_devices"), _disk),
    (("gc_timer", "auto_upgrade_timer"), _timers),
    (("failed_units",), _failed_units),
    (("uptime_seconds",), _uptime),
    (("disk_free_bytes", "disk_total_bytes"), _disk_space),
    (("machine_id",), _machine_id),
    (("nixos_version",), _version_fact),
)


def collect_facts(root: Path) -> dict[str, Any]:
    """The compliance facts of the system under ``root`` (docs/protocol.md, schema 1)."""
    host = _Host(root)
    facts: dict[str, Any] = {}
    for keys, collector in _COLLECTORS:
        try:
            values = collector(host)
        except Exception:  # a broken collector must not cost the report
            log.debug("facts: %s failed", collector.__name__.strip("_"), exc_info=True)
            values = {}
        for key in keys:
            facts[key] = values.get(key, UNKNOWN)
    return {key: facts[key] for key in FACT_KEYS}


def _os_release(host: _Host) -> dict[str, str]:
    text = host.read("/etc/os-release") or ""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value.strip().strip("\"'")
    return values


def _generation(host: _Host, profile: str) -> int | None:
    try:
        target = host.under(profile).readlink()
    except OSError:
        return None
    match = _GENERATION_LINK.match(PurePosixPath(target).name)
    if match is None or match.group("profile") != PurePosixPath(profile).name:
        return None
    return int(match.group("number"))


def _boot_files(host: _Host, system: str) -> tuple[str | None, ...]:
    return tuple(
        host.resolve(f"{system}/{name}") for name in ("initrd", "kernel", "kernel-modules")
    )


def _reboot_required(host: _Host, current: str | None, booted: str | None) -> bool | None:
    """nixpkgs' test (system.autoUpgrade.allowReboot): the booted system's kernel, initrd
    or kernel modules differ from the current system's."""
    if current is None or booted is None:
        return None
    now, at_boot = _boot_files(host, current), _boot_files(host, booted)
    if all(path is None for path in (*now, *at_boot)):
        return None  # no kernel on either side (a container): nothing to compare
    return now != at_boot


def collect_system(root: Path, profile: Path) -> SystemInfo:
    """The running system under ``root``: current and booted system, generation of
    ``profile`` (a host path such as /nix/var/nix/profiles/system), version, kernels."""
    host = _Host(root)

    def safely(name: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception:  # a broken reader must not cost the report
            log.debug("facts: system %s failed", name, exc_info=True)
            return None

    profile_path = str(PurePosixPath("/") / profile)
    current = safely("current", lambda: host.resolve("/run/current-system"))
    booted = safely("booted", lambda: host.resolve("/run/booted-system"))
    version = safely("version", host.nixos_version) or {}
    label = safely(
        "label",
        lambda: (host.read(f"{current}/nixos-version") or "").strip() if current else "",
    )
    revision = version.get("configurationRevision")
    return SystemInfo(
        store_path=safely("profile", lambda: host.resolve(profile_path)),
        generation=safely("generation", lambda: _generation(host, profile_path)),
        current_system=current,
        booted_system=booted,
        nixos_version=label
        or version.get("nixosVersion")
        or safely("os-release", lambda: _os_release(host).get("BUILD_ID"))
        or None,
        configuration_revision=revision if isinstance(revision, str) else None,
        current_kernel=safely("kernel", lambda: _kernel(host, current)),
        booted_kernel=safely("booted kernel", lambda: _kernel(host, booted)),
        reboot_required=safely("reboot", lambda: _reboot_required(host, current, booted)),
    )


def _kernel(host: _Host, system: str | None) -> str | None:
    return None if system is None else host.resolve(f"{system}/kernel")
