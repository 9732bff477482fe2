"""Facts for compliance, and the running system (docs/protocol.md "Facts").

Firewall, ssh, disk encryption, timers, failed units, uptime, disk space, machine id and
the NixOS version, read through :class:`~gitops.agent.facts.hostfs.Host`. Each collector
returns the keys it could determine; the caller makes the others ``"unknown"``.
"""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Final

from gitops.agent.facts.hostfs import SYSTEM_BIN, Host, Recorded
from gitops.protocol import UNKNOWN, SystemInfo

log = logging.getLogger("gitops.agent.facts")

UNITS_DIR: Final = "/etc/systemd/system"
DISK_MOUNTS: Final = ("/", "/nix")

_LUKS_UUID = re.compile(r"^CRYPT-LUKS[12]-")
_MACHINE_ID = re.compile(r"^[0-9a-f]{32}$")
_GENERATION_LINK = re.compile(r"^(?P<profile>.+)-(?P<number>\d+)-link$")
_SSHD_LINE = re.compile(r"^\s*(?P<key>[A-Za-z0-9]+)(?:\s*=\s*|\s+)(?P<value>.*?)\s*$")
_STORE_PATH = re.compile(r"/nix/store/[0-9a-z]{32}-[A-Za-z0-9+._?=-]+")
_ACTIVE_STATES = ("active", "reloading", "activating")
_ENABLED_STATES = ("enabled", "enabled-runtime")


# -- systemd units ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Unit:
    exists: bool
    enabled: bool  # starts by itself: wanted by a target, or enabled
    active: bool | None  # None when only files were read


def _unit(host: Host, name: str) -> _Unit | None:
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


def _unit_files(host: Host, name: str) -> _Unit | None:
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


def _timer(host: Host, name: str) -> str:
    unit = _unit(host, name)
    if unit is None:
        return UNKNOWN
    return "enabled" if unit.exists and unit.enabled else "absent"


def _running(unit: _Unit) -> bool:
    return bool(unit.active) if unit.active is not None else unit.exists and unit.enabled


# -- collectors ------------------------------------------------------------------------


def _firewall(host: Host) -> dict[str, Any]:
    return {"firewall": _firewall_state(host)}


def _firewall_state(host: Host) -> str:
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


def _nftables_ruleset_has_firewall(host: Host) -> str:
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


def _sshd_settings(host: Host) -> tuple[dict[str, str], bool] | None:
    result = host.run("sshd", "-T")
    if result is not None and result.returncode == 0:
        settings: dict[str, str] = {}
        for line in result.stdout.splitlines():
            key, _, value = line.strip().partition(" ")
            settings.setdefault(key.lower(), value.strip().lower())
        return settings, True
    text = host.read("/etc/ssh/sshd_config")
    return None if text is None else parse_sshd_config(text)


def _ssh(host: Host) -> dict[str, Any]:
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
class Mapper:
    name: str  # dm-N
    dm_name: str  # the /dev/mapper name
    uuid: str
    slaves: tuple[str, ...]


def device_mappers(host: Host) -> dict[str, Mapper] | None:
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
        found[block] = Mapper(block, name.strip(), uuid.strip(), tuple(slaves))
    return found


def is_luks(mappers: dict[str, Mapper], block: str, depth: int = 0) -> bool:
    """Whether ``block`` is dm-crypt LUKS or sits on one (LVM on LUKS)."""
    mapper = mappers.get(block)
    if mapper is None or depth > 8:
        return False
    if _LUKS_UUID.match(mapper.uuid):
        return True
    return bool(mapper.slaves) and all(is_luks(mappers, s, depth + 1) for s in mapper.slaves)


def _unescape_mount(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def _mounts(host: Host) -> dict[str, tuple[str, str]] | None:
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


def _block_of(host: Host, device: str, mappers: dict[str, Mapper]) -> str | None:
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


def _disk(host: Host) -> dict[str, Any]:
    facts: dict[str, Any] = {}
    mappers = device_mappers(host)
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
    facts["disk_encryption"] = "luks" if is_luks(mappers, block) else "none"
    return facts


def _zfs_encryption(host: Host, dataset: str, mappers: dict[str, Mapper]) -> str | None:
    """``luks`` when every disk of the pool is LUKS; else ``zfs`` when the dataset uses
    ZFS native encryption; ``none`` when neither; None when it cannot be told."""
    if _zfs_pool_on_luks(host, dataset.split("/", 1)[0], mappers):
        return "luks"
    native = host.output("zfs", "get", "-H", "-o", "value", "encryption,keystatus", dataset)
    values = native.split() if native is not None else []
    if not values:
        return None
    # An encrypted dataset the system runs from has its key loaded ("available").
    return "none" if values[0] == "off" else "zfs"


def _zfs_pool_on_luks(host: Host, pool: str, mappers: dict[str, Mapper]) -> bool:
    status = host.output("zpool", "list", "-v", "-H", "-P", "-L", pool)
    disks = [
        token
        for line in (status or "").splitlines()
        for token in line.split()[:1]
        if token.startswith("/dev/")
    ]
    return bool(disks) and all(
        (block := _block_of(host, disk, mappers)) is not None and is_luks(mappers, block)
        for disk in disks
    )


def _timers(host: Host) -> dict[str, Any]:
    return {
        "gc_timer": _timer(host, "nix-gc.timer"),
        "auto_upgrade_timer": _timer(host, "nixos-upgrade.timer"),
    }


def _failed_units(host: Host) -> dict[str, Any]:
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


def _uptime(host: Host) -> dict[str, Any]:
    text = host.read("/proc/uptime")
    if text is None or not text.split():
        return {}
    return {"uptime_seconds": int(float(text.split()[0]))}


def _disk_space(host: Host) -> dict[str, Any]:
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


def _machine_id(host: Host) -> dict[str, Any]:
    text = host.read("/etc/machine-id")
    if text is None or not _MACHINE_ID.match(text.strip()):
        return {}
    return {"machine_id": text.strip()}


def _version_fact(host: Host) -> dict[str, Any]:
    version = nixos_version(host)
    return {} if version is None else {"nixos_version": version}


def nixos_version(host: Host) -> dict[str, Any] | None:
    """What ``nixos-version --json`` prints for the current system."""
    return host.memo("nixos-version", lambda: _read_nixos_version(host))


def _read_nixos_version(host: Host) -> dict[str, Any] | None:
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


Collector = Callable[[Host], dict[str, Any]]

# (the keys a collector may set, the collector), in the order of docs/protocol.md.
COLLECTORS: Final[tuple[tuple[tuple[str, ...], Collector], ...]] = (
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


def _os_release(host: Host) -> dict[str, str]:
    text = host.read("/etc/os-release") or ""
    values = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and key.strip():
            values[key.strip()] = value.strip().strip("\"'")
    return values


def _generation(host: Host, profile: str) -> int | None:
    try:
        target = host.under(profile).readlink()
    except OSError:
        return None
    match = _GENERATION_LINK.match(PurePosixPath(target).name)
    if match is None or match.group("profile") != PurePosixPath(profile).name:
        return None
    return int(match.group("number"))


def _boot_files(host: Host, system: str) -> tuple[str | None, ...]:
    return tuple(
        host.resolve(f"{system}/{name}") for name in ("initrd", "kernel", "kernel-modules")
    )


def _reboot_required(host: Host, current: str | None, booted: str | None) -> bool | None:
    """nixpkgs' test (system.autoUpgrade.allowReboot): the booted system's kernel, initrd
    or kernel modules differ from the current system's."""
    if current is None or booted is None:
        return None
    now, at_boot = _boot_files(host, current), _boot_files(host, booted)
    if all(path is None for path in (*now, *at_boot)):
        return None  # no kernel on either side (a container): nothing to compare
    return now != at_boot


def collect_system(root: Path, profile: Path, recorded: Recorded | None = None) -> SystemInfo:
    """The running system under ``root``: current and booted system, generation of
    ``profile`` (a host path such as /nix/var/nix/profiles/system), version, kernels."""
    host = Host(root, recorded)

    def safely(name: str, read: Callable[[], Any]) -> Any:
        try:
            return read()
        except Exception:  # a broken reader must not cost the report
            log.debug("facts: system %s failed", name, exc_info=True)
            return None

    profile_path = str(PurePosixPath("/") / profile)
    current = safely("current", lambda: host.resolve("/run/current-system"))
    booted = safely("booted", lambda: host.resolve("/run/booted-system"))
    version = safely("version", lambda: nixos_version(host)) or {}
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


def _kernel(host: Host, system: str | None) -> str | None:
    return None if system is None else host.resolve(f"{system}/kernel")
