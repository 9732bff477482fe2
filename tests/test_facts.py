"""gitops.agent.facts against trees shaped like NixOS roots, and once against this machine.

The trees are what a NixOS host has on disk: /run/current-system and /etc/systemd/system
are absolute symlinks into /nix/store (resolved inside the tree), units are wanted
through *.wants links, dm-crypt devices are described under /sys/block. The text files
(sshd_config, os-release, the nixos-version script, an nftables ruleset) are copies of
what NixOS 25.05 generates, in tests/fixtures/facts/. A tree runs no commands: the
outputs a live host's commands give (ip -j addr, loginctl, systemctl show, zfs get) are
recorded in tests/fixtures/facts/commands/ and handed to the collector as ``recorded``.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from gitops.agent import facts
from gitops.agent.facts import backups
from gitops.fleet.policies import Outcome, evaluate, load_policies
from gitops.fleet.schema import Problems
from gitops.fleet.source import DirSource
from gitops.protocol import UNKNOWN, SystemInfo

FIXTURES = Path(__file__).parent / "fixtures" / "facts"
COMMANDS = FIXTURES / "commands"
REPO = Path(__file__).resolve().parent.parent

SYSTEM = "/nix/store/4rq8a0vj1s3f0m6b1rcnpc9bx2l5wgyp-nixos-system-web-1-25.05.20260102.ac62194"
OLD_SYSTEM = "/nix/store/1c5z8h0b4kqbz0fx7sqs8ncnkmxh2vdr-nixos-system-web-1-25.05.20251201.5b3a8e1"
ETC = "/nix/store/0b4fk8yqzs7l2a1i6c1gdgmcw8xw7h7n-etc/etc"
KERNEL = "/nix/store/kx3k6h0g0pmq2hh3w8n3x5x1l8yq0bqa-linux-6.12.63"
OLD_KERNEL = "/nix/store/7d0lq0b9fnb5zcz4p2xvq3j1x8l2m9ya-linux-6.12.58"
INITRD = "/nix/store/ri6r7sdzyh6bb6n2ncq9g6mb8z4q6v3a-initrd-linux-6.12.63"
OLD_INITRD = "/nix/store/hg2yq0m7c3r5l1z4x1a8d2h3k6v9p0sf-initrd-linux-6.12.58"
MODULES = "/nix/store/m1d3a0l2e5s6z8x9c0v1b2n3m4q5w6e7-linux-6.12.63-modules-shrunk"
OLD_MODULES = "/nix/store/n0l9k8j7h6g5f4d3s2a1q0w9e8r7t6y5-linux-6.12.58-modules-shrunk"
VERSION_SCRIPT = "/nix/store/p8x0sl2m7q4d1a9h3k6v5b2n0c8z1f4g-nixos-version/bin/nixos-version"
NFT_RULES = "/nix/store/z3r6t9y2u5i8o1p4a7s0d3f6g9h2j5k8-nftables-rules"
LUKS_UUID = "CRYPT-LUKS2-7d1e0c3bd6a94b8d8f4b2f1c3e5a6b7c-cryptroot"
LVM_UUID = "LVM-k3JbW0n2Qf7mZ9Lr8X1tY4uV6sA2dC5eHf0gJ3kL6mN9pQ2rS5tU8vW1xY4zA7bB"
MACHINE_ID = "8f3a1c2e9b7d4e6f8a0b1c2d3e4f5a6b"
REVISION = "4f1c2a9e0b7d6c5a4b3e2f1d0c9b8a7f6e5d4c3b"


class Tree:
    """Writes a root file system under ``root``; paths are host paths (``/etc/...``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, host_path: str) -> Path:
        return self.root / host_path.lstrip("/")

    def write(self, host_path: str, text: str) -> None:
        target = self.path(host_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text, encoding="utf-8")

    def copy(self, host_path: str, fixture: str) -> None:
        self.write(host_path, (FIXTURES / fixture).read_text(encoding="utf-8"))

    def link(self, host_path: str, target: str) -> None:
        link = self.path(host_path)
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(target)

    def mkdir(self, host_path: str) -> None:
        self.path(host_path).mkdir(parents=True, exist_ok=True)


@dataclass
class Host:
    """What to put into a NixOS-shaped tree."""

    luks: bool = True
    root_device: str = "/dev/mapper/cryptroot"
    sshd: bool = True
    sshd_config: str = "sshd_config.hardened"
    firewall: str = "iptables"  # iptables | nftables | none
    gc_timer: bool = True
    auto_upgrade: bool = False
    booted: str = SYSTEM  # the system the machine booted
    extra_mounts: list[str] = field(default_factory=list)


def unit(tree: Tree, name: str, wanted_by: str | None, text: str = "") -> None:
    """A unit as NixOS installs it: a file in the etc derivation, linked from /etc."""
    tree.write(f"{ETC}/systemd/system/{name}", text or f"[Unit]\nDescription={name}\n")
    if wanted_by:
        tree.link(f"{ETC}/systemd/system/{wanted_by}.wants/{name}", f"../{name}")


def system_closure(tree: Tree, system: str, kernel: str, initrd: str, modules: str) -> None:
    tree.write(f"{system}/nixos-version", "25.05.20260102.ac62194")
    tree.write(f"{kernel}/bzImage", "kernel")
    tree.write(f"{initrd}/initrd", "initrd")
    tree.mkdir(f"{modules}/lib/modules")
    tree.link(f"{system}/kernel", f"{kernel}/bzImage")
    tree.link(f"{system}/initrd", f"{initrd}/initrd")
    tree.link(f"{system}/kernel-modules", modules)
    tree.link(f"{system}/sw", "/nix/store/s9w1a2b3c4d5e6f7g8h9i0j1k2l3m4n5-system-path")


def nixos_root(root: Path, host: Host) -> Tree:
    tree = Tree(root)
    system_closure(tree, SYSTEM, KERNEL, INITRD, MODULES)
    system_closure(tree, OLD_SYSTEM, OLD_KERNEL, OLD_INITRD, OLD_MODULES)
    tree.copy(VERSION_SCRIPT, "nixos-version")
    tree.link(
        "/nix/store/s9w1a2b3c4d5e6f7g8h9i0j1k2l3m4n5-system-path/bin/nixos-version",
        VERSION_SCRIPT,
    )
    tree.link("/run/current-system", SYSTEM)
    tree.link("/run/booted-system", host.booted)
    tree.link("/nix/var/nix/profiles/system-41-link", OLD_SYSTEM)
    tree.link("/nix/var/nix/profiles/system-42-link", SYSTEM)
    tree.link("/nix/var/nix/profiles/system", "system-42-link")

    tree.link("/etc/static", ETC)
    tree.link("/etc/systemd/system", "/etc/static/systemd/system")
    tree.copy(f"{ETC}/os-release", "os-release")
    tree.link("/etc/os-release", "/etc/static/os-release")
    tree.write("/etc/machine-id", MACHINE_ID + "\n")
    unit(tree, "multi-user.target", None)
    if host.sshd:
        unit(tree, "sshd.service", "multi-user")
    tree.copy(f"{ETC}/ssh/sshd_config", host.sshd_config)
    tree.link("/etc/ssh/sshd_config", "/etc/static/ssh/sshd_config")
    if host.firewall == "iptables":
        unit(tree, "firewall.service", "sysinit")
    elif host.firewall == "nftables":
        tree.copy(NFT_RULES, "nftables-rules")
        unit(
            tree,
            "nftables.service",
            "multi-user",
            f"[Service]\nExecStart={NFT_RULES}\nType=oneshot\nRemainAfterExit=true\n",
        )
    unit(tree, "nix-gc.service", None)
    if host.gc_timer:
        unit(tree, "nix-gc.timer", "timers")
    if host.auto_upgrade:
        unit(tree, "nixos-upgrade.timer", "timers")

    mounts = [
        "proc /proc proc rw,nosuid,nodev,noexec,relatime 0 0",
        f"{host.root_device} / ext4 rw,relatime 0 0",
        "/dev/nvme0n1p1 /boot vfat rw,relatime,fmask=0077,dmask=0077 0 0",
        *host.extra_mounts,
    ]
    tree.write("/proc/mounts", "\n".join(mounts) + "\n")
    tree.write("/proc/uptime", "93784.52 371230.11\n")
    tree.mkdir("/sys/block/nvme0n1")
    for block in ("nvme0n1", "nvme0n1p1", "nvme0n1p2"):
        tree.link(f"/sys/class/block/{block}", f"../../devices/pci0000:00/nvme/{block}")
        tree.mkdir(f"/sys/devices/pci0000:00/nvme/{block}")
        tree.write(f"/dev/{block}", "")
    if host.luks:
        dm(tree, "dm-0", "cryptroot", LUKS_UUID, ["nvme0n1p2"])
    return tree


def dm(tree: Tree, block: str, name: str, uuid: str, slaves: list[str]) -> None:
    """A device mapper device as the kernel shows it in /sys and udev in /dev."""
    tree.write(f"/dev/{block}", "")
    tree.link(f"/dev/mapper/{name}", f"../{block}")
    tree.link(f"/sys/class/block/{block}", f"../../devices/virtual/block/{block}")
    tree.write(f"/sys/block/{block}/dm/name", name + "\n")
    tree.write(f"/sys/block/{block}/dm/uuid", uuid + "\n")
    tree.mkdir(f"/sys/block/{block}/slaves")
    for slave in slaves:
        tree.mkdir(f"/sys/block/{block}/slaves/{slave}")


def collect(root: Path) -> dict[str, Any]:
    result = facts.collect_facts(root)
    assert tuple(result) == facts.FACT_KEYS
    return result


# -- whole hosts -------------------------------------------------------------------------


def test_hardened_host_on_luks(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host())
    found = collect(tmp_path)
    assert found["firewall"] == "active"
    assert found["ssh_password_login"] == "disabled"
    assert found["ssh_root_login"] == "no"
    assert found["disk_encryption"] == "luks"
    assert found["luks_devices"] == ["cryptroot"]
    assert found["gc_timer"] == "enabled"
    assert found["auto_upgrade_timer"] == "absent"
    assert found["failed_units"] == UNKNOWN  # only a running systemd knows
    assert found["uptime_seconds"] == 93784
    assert found["machine_id"] == MACHINE_ID
    assert found["nixos_version"] == {
        "configurationRevision": REVISION,
        "nixosVersion": "25.05.20260102.ac62194",
        "nixpkgsRevision": "ac62194c3917d5f474c1a844b6fd6da2db95077d",
    }
    for key in ("disk_free_bytes", "disk_total_bytes"):
        sizes = found[key]
        assert set(sizes) == {"/", "/nix"}
        assert all(isinstance(v, int) and v > 0 for v in sizes.values())


def test_default_host_on_a_plain_partition(tmp_path: Path) -> None:
    nixos_root(
        tmp_path,
        Host(
            luks=False,
            root_device="/dev/nvme0n1p2",
            sshd_config="sshd_config.nixos-default",
            firewall="none",
            gc_timer=False,
            auto_upgrade=True,
        ),
    )
    found = collect(tmp_path)
    assert found["firewall"] == "inactive"
    assert found["ssh_password_login"] == "enabled"
    assert found["ssh_root_login"] == "prohibit-password"
    assert found["disk_encryption"] == "none"
    assert found["luks_devices"] == []
    assert found["gc_timer"] == "absent"
    assert found["auto_upgrade_timer"] == "enabled"


def test_empty_root_is_unknown_not_guessed(tmp_path: Path) -> None:
    found = collect(tmp_path)
    for key in facts.FACT_KEYS:
        if key in ("disk_free_bytes", "disk_total_bytes"):
            # "/" of the tree exists (it is the tree); /nix does not
            assert found[key]["/nix"] == UNKNOWN
            assert isinstance(found[key]["/"], int)
        else:
            assert found[key] == UNKNOWN, key
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/system"))
    assert system == SystemInfo()


# -- firewall ----------------------------------------------------------------------------


def test_nftables_firewall_is_found_in_the_ruleset_the_unit_loads(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host(firewall="nftables"))
    assert collect(tmp_path)["firewall"] == "active"


def test_nftables_without_the_nixos_table_is_not_a_firewall(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(firewall="nftables"))
    tree.write(
        NFT_RULES, "table inet filter {\n  chain input { type filter hook input priority 0; }\n}\n"
    )
    assert collect(tmp_path)["firewall"] == "inactive"


def test_nftables_ruleset_that_cannot_be_read_is_unknown(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(firewall="nftables"))
    tree.path(NFT_RULES).unlink()
    assert collect(tmp_path)["firewall"] == UNKNOWN


def test_firewall_unit_installed_but_not_wanted_is_inactive(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.path(f"{ETC}/systemd/system/sysinit.wants/firewall.service").unlink()
    assert collect(tmp_path)["firewall"] == "inactive"


# -- ssh ---------------------------------------------------------------------------------


def test_sshd_not_enabled_is_not_running(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host(sshd=False, sshd_config="sshd_config.nixos-default"))
    found = collect(tmp_path)
    assert found["ssh_password_login"] == "not-running"
    assert found["ssh_root_login"] == "not-running"


def test_keyboard_interactive_through_pam_is_password_login(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    text = (FIXTURES / "sshd_config.hardened").read_text(encoding="utf-8")
    text = text.replace("KbdInteractiveAuthentication no", "KbdInteractiveAuthentication yes")
    text = text.replace("ChallengeResponseAuthentication no\n", "")
    tree.write(f"{ETC}/ssh/sshd_config", text)
    assert collect(tmp_path)["ssh_password_login"] == "enabled"


def test_sshd_include_before_the_setting_is_unknown(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.write(f"{ETC}/ssh/sshd_config", "Include /etc/ssh/sshd_config.d/*.conf\nUsePAM yes\n")
    found = collect(tmp_path)
    assert found["ssh_password_login"] == UNKNOWN
    assert found["ssh_root_login"] == UNKNOWN


def test_sshd_config_is_read_the_way_sshd_reads_it() -> None:
    settings, complete = facts.parse_sshd_config(
        "# comment\n"
        "PasswordAuthentication=no\n"
        "passwordauthentication yes\n"  # sshd keeps the first value
        '  PermitRootLogin "without-password"\n'
        "Match Address 10.0.0.0/8\n"
        "  KbdInteractiveAuthentication yes\n"  # only inside the Match block
    )
    assert complete
    assert settings == {"passwordauthentication": "no", "permitrootlogin": "without-password"}
    assert facts.parse_sshd_config("Include /etc/ssh/extra\nUsePAM yes\n") == ({}, False)


def test_missing_sshd_config_is_unknown(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.path(f"{ETC}/ssh/sshd_config").unlink()
    found = collect(tmp_path)
    assert found["ssh_password_login"] == UNKNOWN
    assert found["ssh_root_login"] == UNKNOWN


# -- disks -------------------------------------------------------------------------------


def test_lvm_on_luks_counts_as_luks(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(root_device="/dev/mapper/vg-root"))
    dm(tree, "dm-1", "vg-root", LVM_UUID, ["dm-0"])
    found = collect(tmp_path)
    assert found["disk_encryption"] == "luks"
    assert found["luks_devices"] == ["cryptroot"]


def test_lvm_without_luks_is_none(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(luks=False, root_device="/dev/dm-0"))
    dm(tree, "dm-0", "vg-root", LVM_UUID, ["nvme0n1p2"])
    assert collect(tmp_path)["disk_encryption"] == "none"


def test_impermanence_root_on_tmpfs_looks_at_nix(tmp_path: Path) -> None:
    nixos_root(
        tmp_path,
        Host(
            root_device="none",
            extra_mounts=["/dev/mapper/cryptroot /nix ext4 rw,relatime 0 0"],
        ),
    )
    mounts = (tmp_path / "proc/mounts").read_text().replace("none / ext4", "none / tmpfs")
    (tmp_path / "proc/mounts").write_text(mounts)
    assert collect(tmp_path)["disk_encryption"] == "luks"


def test_root_by_uuid_link_is_followed_to_the_mapper(tmp_path: Path) -> None:
    tree = nixos_root(
        tmp_path, Host(root_device="/dev/disk/by-uuid/3f1d9c2a-5b7e-4c1d-9e2f-8a6b4c3d2e1f")
    )
    tree.link("/dev/disk/by-uuid/3f1d9c2a-5b7e-4c1d-9e2f-8a6b4c3d2e1f", "../../dm-0")
    assert collect(tmp_path)["disk_encryption"] == "luks"


def test_root_device_the_kernel_does_not_list_is_unknown(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host(root_device="/dev/disk/by-uuid/0bd1e5c4-0000-4000-8000-000000000000"))
    assert collect(tmp_path)["disk_encryption"] == UNKNOWN


def test_zfs_root_in_a_tree_is_unknown(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(luks=False))
    tree.write("/proc/mounts", "rpool/root / zfs rw,xattr,posixacl 0 0\n")
    found = collect(tmp_path)
    assert found["disk_encryption"] == UNKNOWN  # zpool would have to say which disks
    assert found["luks_devices"] == []


# -- a broken input, and one collector does not spoil the others -----------------------------


def test_a_failing_collector_is_logged_and_unknown(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    nixos_root(tmp_path, Host())
    (tmp_path / "proc/uptime").write_text("not a number\n")
    with caplog.at_level(logging.DEBUG, logger="gitops.agent.facts"):
        found = collect(tmp_path)
    assert found["uptime_seconds"] == UNKNOWN
    assert found["firewall"] == "active"  # the others are unaffected
    assert any("uptime failed" in record.getMessage() for record in caplog.records)


def test_symlink_loops_and_dangling_links_are_unknown(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.link("/run/current-system", "/run/booted-system")
    tree.link("/run/booted-system", "/run/current-system")
    tree.link("/etc/machine-id", "/nix/store/gone-machine-id")
    tree.link("/etc/systemd/system", "/etc/static/systemd/system")  # /etc/static missing
    found = collect(tmp_path)
    assert found["machine_id"] == UNKNOWN
    assert found["gc_timer"] == UNKNOWN
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/system"))
    assert system.current_system is None
    assert system.reboot_required is None


def test_malformed_machine_id_is_unknown(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.write("/etc/machine-id", "uninitialized\n")
    assert collect(tmp_path)["machine_id"] == UNKNOWN


# -- the running system ------------------------------------------------------------------


def test_system_after_a_switch_without_kernel_change(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host())
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/system"))
    assert system == SystemInfo(
        store_path=SYSTEM,
        generation=42,
        current_system=SYSTEM,
        booted_system=SYSTEM,
        nixos_version="25.05.20260102.ac62194",
        configuration_revision=REVISION,
        current_kernel=f"{KERNEL}/bzImage",
        booted_kernel=f"{KERNEL}/bzImage",
        reboot_required=False,
    )


def test_reboot_needed_when_booted_kernel_differs(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host(booted=OLD_SYSTEM))
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/system"))
    assert system.current_system == SYSTEM
    assert system.booted_system == OLD_SYSTEM
    assert system.booted_kernel == f"{OLD_KERNEL}/bzImage"
    assert system.reboot_required is True


def test_new_system_with_the_same_kernel_needs_no_reboot(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(booted=OLD_SYSTEM))
    for name, target in (
        ("kernel", f"{KERNEL}/bzImage"),
        ("initrd", f"{INITRD}/initrd"),
        ("kernel-modules", MODULES),
    ):
        tree.path(f"{OLD_SYSTEM}/{name}").unlink()
        tree.link(f"{OLD_SYSTEM}/{name}", target)
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/system"))
    assert system.booted_system == OLD_SYSTEM
    assert system.reboot_required is False


def test_only_the_initrd_changed_still_needs_a_reboot(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(booted=OLD_SYSTEM))
    for name, target in (("kernel", f"{KERNEL}/bzImage"), ("kernel-modules", MODULES)):
        tree.path(f"{OLD_SYSTEM}/{name}").unlink()
        tree.link(f"{OLD_SYSTEM}/{name}", target)
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/system"))
    assert system.reboot_required is True


def test_version_falls_back_to_os_release(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.path(f"{SYSTEM}/nixos-version").unlink()
    tree.path(VERSION_SCRIPT).unlink()
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/system"))
    assert system.nixos_version == "25.05.20260102.ac62194"  # os-release BUILD_ID
    assert system.configuration_revision is None
    assert collect(tmp_path)["nixos_version"] == UNKNOWN


def test_version_label_when_the_script_has_no_json(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.write(VERSION_SCRIPT, "#!/bin/sh\necho 25.05\n")
    assert collect(tmp_path)["nixos_version"] == {"nixosVersion": "25.05.20260102.ac62194"}


def test_generation_of_another_profile_name_is_not_taken(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.link("/nix/var/nix/profiles/other", "system-42-link")
    system = facts.collect_system(tmp_path, Path("/nix/var/nix/profiles/other"))
    assert system.generation is None
    assert system.store_path == SYSTEM


# -- inventory: hardware ------------------------------------------------------------------

DMI = {
    "sys_vendor": "LENOVO",
    "product_name": "20XW0055GE",
    "product_serial": "PF3ABC12",
    "bios_version": "N32ET86W (1.62 )",
    "bios_date": "03/12/2025",
}


def hardware(tree: Tree) -> None:
    """What a ThinkPad's kernel shows: DMI, an NVMe SSD with LUKS, a SATA disk without."""
    for name, value in DMI.items():
        tree.write(f"/sys/class/dmi/id/{name}", value + "\n")
    tree.copy("/proc/cpuinfo", "cpuinfo")
    tree.copy("/proc/meminfo", "meminfo")
    disk(tree, "nvme0n1", sectors=1000215216, model="SAMSUNG MZVL2512HCJQ-00BL7", rotational=0)
    disk(tree, "sda", sectors=3907029168, model="ST2000DM008-2FR1", rotational=1)
    tree.mkdir("/sys/block/loop0/queue")  # virtual: not a disk
    tree.write("/sys/block/loop0/size", "0\n")


def disk(tree: Tree, name: str, *, sectors: int, model: str, rotational: int) -> None:
    device = f"/sys/devices/pci0000:00/{name}"
    tree.path("/sys/block").mkdir(parents=True, exist_ok=True)
    if not tree.path(f"/sys/block/{name}").exists():
        tree.link(f"/sys/block/{name}", f"../devices/pci0000:00/{name}")
    tree.write(f"{device}/size", f"{sectors}\n")
    tree.write(f"{device}/queue/rotational", f"{rotational}\n")
    tree.write(f"{device}/device/model", model + "  \n")


def test_hardware_inventory_is_read_from_sysfs_and_procfs(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.path("/sys/block/nvme0n1").rmdir()
    hardware(tree)
    tree.mkdir("/sys/devices/pci0000:00/nvme0n1/nvme0n1p2")  # the LUKS partition (dm-0's slave)
    found = collect(tmp_path)
    assert found["hardware_vendor"] == "LENOVO"
    assert found["hardware_model"] == "20XW0055GE"
    assert found["hardware_serial"] == "PF3ABC12"
    assert found["bios_version"] == "N32ET86W (1.62 )"
    assert found["bios_date"] == "2025-03-12"
    assert found["cpu_model"] == "11th Gen Intel(R) Core(TM) i5-1145G7 @ 2.60GHz"
    assert (found["cpu_cores"], found["cpu_threads"]) == (2, 4)
    assert found["memory_total_bytes"] == 16063408 * 1024
    assert found["disks"] == [
        {
            "name": "nvme0n1",
            "size_bytes": 512110190592,
            "model": "SAMSUNG MZVL2512HCJQ-00BL7",
            "rotational": False,
            "luks": True,
        },
        {
            "name": "sda",
            "size_bytes": 2000398934016,
            "model": "ST2000DM008-2FR1",
            "rotational": True,
            "luks": False,
        },
    ]


def test_firmware_placeholders_and_an_unreadable_serial_are_unknown(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.write("/sys/class/dmi/id/sys_vendor", "To Be Filled By O.E.M.\n")
    tree.write("/sys/class/dmi/id/product_name", "Default string\n")
    tree.mkdir("/sys/class/dmi/id/product_serial")  # cannot be read as a file (as non-root)
    tree.write("/sys/class/dmi/id/bios_version", "\n")
    found = collect(tmp_path)
    for key in ("hardware_vendor", "hardware_model", "hardware_serial", "bios_version"):
        assert found[key] == UNKNOWN, key


def test_a_disk_whose_details_cannot_be_read_says_so(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    tree.mkdir("/sys/block/vda/device")
    found = collect(tmp_path)
    assert found["disks"] == [
        {
            "name": "vda",
            "size_bytes": UNKNOWN,
            "model": UNKNOWN,
            "rotational": UNKNOWN,
            "luks": False,
        }
    ]


# -- inventory: network and users -----------------------------------------------------------

IP_ADDR = ("ip", "-j", "addr", "show")
LOGINCTL = ("loginctl", "list-sessions", "-o", "json")


def command(fixture: str, returncode: int = 0) -> subprocess.CompletedProcess[str]:
    return facts.recorded_output((COMMANDS / fixture).read_text(encoding="utf-8"), returncode)


def interface(tree: Tree, name: str, mac: str, state: str, *, physical: bool) -> None:
    target = f"/sys/devices/{'pci0000:00' if physical else 'virtual/net'}/{name}"
    tree.write(f"{target}/address", mac + "\n")
    tree.write(f"{target}/operstate", state + "\n")
    if physical:
        tree.mkdir(f"{target}/device")
    tree.link(f"/sys/class/net/{name}", f"../../devices/{target.removeprefix('/sys/devices/')}")


def network(tree: Tree) -> None:
    interface(tree, "lo", "00:00:00:00:00:00", "unknown", physical=False)
    interface(tree, "enp0s31f6", "8c:16:45:3a:7e:01", "up", physical=True)
    interface(tree, "wlp0s20f3", "a4:c3:f0:85:12:9b", "down", physical=True)
    interface(tree, "wg0", "", "unknown", physical=False)


def test_interfaces_with_their_addresses_physical_first(tmp_path: Path) -> None:
    network(Tree(tmp_path))
    found = facts.collect_facts(tmp_path, recorded={IP_ADDR: command("ip-addr.json")})
    assert found["network_interfaces"] == [
        {
            "name": "enp0s31f6",
            "mac": "8c:16:45:3a:7e:01",
            "state": "up",
            "addresses": ["10.20.3.41/16", "fe80::8e16:45ff:fe3a:7e01/64"],
        },
        {"name": "wlp0s20f3", "mac": "a4:c3:f0:85:12:9b", "state": "down", "addresses": []},
        {"name": "wg0", "mac": UNKNOWN, "state": "unknown", "addresses": ["10.99.0.41/24"]},
    ]


def test_interfaces_of_a_tree_without_ip_have_unknown_addresses(tmp_path: Path) -> None:
    network(Tree(tmp_path))
    found = collect(tmp_path)
    assert [i["name"] for i in found["network_interfaces"]] == ["enp0s31f6", "wlp0s20f3", "wg0"]
    assert all(i["addresses"] == UNKNOWN for i in found["network_interfaces"])


def test_lists_are_bounded_so_a_report_stays_small(tmp_path: Path) -> None:
    tree = Tree(tmp_path)
    interface(tree, "eno1", "8c:16:45:3a:7e:01", "up", physical=True)
    for index in range(40):
        interface(tree, f"veth{index:02d}", "0a:00:00:00:00:01", "up", physical=False)
    tree.write(
        "/etc/passwd",
        "".join(f"user{i:03d}:x:{1000 + i}:100::/home/u:/bin/sh\n" for i in range(300)),
    )
    found = collect(tmp_path)
    assert len(found["network_interfaces"]) == 16
    assert found["network_interfaces"][0]["name"] == "eno1"  # the uplink is kept
    assert len(found["local_users"]) == 50


def test_local_users_are_people_not_system_or_build_users(tmp_path: Path) -> None:
    Tree(tmp_path).copy("/etc/passwd", "passwd")
    found = collect(tmp_path)
    assert found["local_users"] == ["anna", "it-admin"]
    assert found["logged_in_users"] == UNKNOWN  # only a running logind knows


def test_logged_in_users_from_logind(tmp_path: Path) -> None:
    found = facts.collect_facts(tmp_path, recorded={LOGINCTL: command("loginctl-sessions.json")})
    assert found["logged_in_users"] == ["anna", "it-admin"]


# -- inventory: ZFS native encryption -------------------------------------------------------

ZFS_GET = ("zfs", "get", "-H", "-o", "value", "encryption,keystatus", "rpool/root")


def zfs_root(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host(luks=False))
    tree.write("/proc/mounts", "rpool/root / zfs rw,xattr,posixacl 0 0\n")


def test_zfs_native_encryption_is_zfs(tmp_path: Path) -> None:
    zfs_root(tmp_path)
    found = facts.collect_facts(
        tmp_path, recorded={ZFS_GET: command("zfs-get-encryption-keystatus.txt")}
    )
    assert found["disk_encryption"] == "zfs"


def test_zfs_without_encryption_on_plain_disks_is_none(tmp_path: Path) -> None:
    zfs_root(tmp_path)
    pool = "rpool\\t476G\\t100G\\t376G\\n\\t/dev/nvme0n1p2\\t476G\\t100G\\t376G\\n"
    found = facts.collect_facts(
        tmp_path,
        recorded={
            ZFS_GET: facts.recorded_output("off\n-\n"),
            ("zpool", "list", "-v", "-H", "-P", "-L", "rpool"): facts.recorded_output(
                pool.replace("\\t", "\t").replace("\\n", "\n")
            ),
        },
    )
    assert found["disk_encryption"] == "none"


def test_zfs_pool_on_luks_is_luks(tmp_path: Path) -> None:
    zfs_root(tmp_path)
    dm(Tree(tmp_path), "dm-0", "cryptroot", LUKS_UUID, ["nvme0n1p2"])
    found = facts.collect_facts(
        tmp_path,
        recorded={
            ("zpool", "list", "-v", "-H", "-P", "-L", "rpool"): facts.recorded_output(
                "rpool\t476G\t100G\t376G\n\t/dev/mapper/cryptroot\t476G\t100G\t376G\n"
            ),
            ZFS_GET: facts.recorded_output("off\n-\n"),
        },
    )
    assert found["disk_encryption"] == "luks"


# -- inventory: backups -----------------------------------------------------------------------

NOW = datetime(2026, 11, 30, 0, 0, 0, tzinfo=UTC)
RESTIC = "restic-backups-nas.service"
SYNCOID = "syncoid-tank-projects.service"


def show(unit: str) -> tuple[str, ...]:
    return (
        "systemctl",
        "show",
        "--timestamp=unix",
        "--property=Result,ExecMainExitTimestamp,ExecMainStatus",
        "--",
        unit,
    )


def backup_host(tmp_path: Path) -> Tree:
    tree = nixos_root(tmp_path, Host())
    for name in (RESTIC, SYNCOID, "sanoid.service"):
        unit(tree, name, None)
    unit(tree, "restic-backups-nas.timer", "timers")
    return tree


def backup_policy(tmp_path: Path, found: dict[str, Any]) -> Outcome:
    problems = Problems()
    (policy,) = [p for p in load_policies(DirSource(REPO), problems) if p.name == "backup-fresh"]
    assert not problems
    return evaluate(policy.condition, {"facts": found})


def test_backup_units_in_a_tree_are_listed_but_their_results_unknown(tmp_path: Path) -> None:
    backup_host(tmp_path)
    found = facts.collect_facts(tmp_path, now=NOW)
    assert found["backups"] == {
        name: {"result": UNKNOWN, "finished": UNKNOWN}
        for name in (RESTIC, "sanoid.service", SYNCOID)
    }
    assert found["backup_failed_units"] == UNKNOWN
    assert found["backup_age_seconds"] == UNKNOWN
    assert backup_policy(tmp_path, found) == Outcome.UNKNOWN


def test_backups_that_all_succeeded_are_fresh(tmp_path: Path) -> None:
    backup_host(tmp_path)
    found = facts.collect_facts(
        tmp_path,
        now=NOW,
        recorded={
            show(RESTIC): command("systemctl-show-restic-backups-nas.txt"),
            show(SYNCOID): command("systemctl-show-restic-backups-nas.txt"),
            show("sanoid.service"): command("systemctl-show-sanoid-old-systemd.txt"),
        },
    )
    assert found["backups"]["sanoid.service"] == {
        "result": "success",
        "finished": "2026-11-24T03:12:44Z",
    }
    assert found["backups"][RESTIC] == {"result": "success", "finished": "2026-11-29T23:30:00Z"}
    assert found["backup_failed_units"] == []
    # The oldest last success (sanoid's, on old systemd's time format) sets the age.
    assert found["backup_age_seconds"] == int(
        (NOW - datetime(2026, 11, 24, 3, 12, 44, tzinfo=UTC)).total_seconds()
    )
    assert backup_policy(tmp_path, found) == Outcome.FAIL  # six days is not fresh
    recent = {**found, "backup_age_seconds": 1800}
    assert backup_policy(tmp_path, recent) == Outcome.PASS


def test_a_failed_or_never_run_backup_fails_the_policy(tmp_path: Path) -> None:
    backup_host(tmp_path)
    found = facts.collect_facts(
        tmp_path,
        now=NOW,
        recorded={
            show(RESTIC): command("systemctl-show-restic-backups-nas.txt"),
            show(SYNCOID): command("systemctl-show-syncoid-failed.txt"),
            show("sanoid.service"): command("systemctl-show-never-run.txt"),
        },
    )
    assert found["backups"][SYNCOID] == {"result": "exit-code", "finished": "2026-11-29T22:06:40Z"}
    assert found["backups"]["sanoid.service"] == {"result": "never-run", "finished": UNKNOWN}
    assert found["backup_failed_units"] == ["sanoid.service", SYNCOID]
    assert found["backup_age_seconds"] == UNKNOWN  # when syncoid last succeeded is not known
    assert backup_policy(tmp_path, found) == Outcome.FAIL


def test_a_host_without_backup_units_fails_the_policy(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host())
    found = facts.collect_facts(tmp_path, now=NOW)
    assert found["backups"] == {}
    assert backup_policy(tmp_path, found) == Outcome.FAIL


def test_the_policy_names_only_backup_units() -> None:
    assert all(backups._is_backup_unit(name) for name in (RESTIC, SYNCOID, "sanoid.service"))
    assert not backups._is_backup_unit("restic-backups-nas.timer")
    assert not backups._is_backup_unit("sanoid-prune.service")


# -- inventory: patch currency ---------------------------------------------------------------

NIXPKGS_REV = "ac62194c3917d5f474c1a844b6fd6da2db95077d"


def flake_lock(rev: str = NIXPKGS_REV, modified: int = 1767313136) -> bytes:
    lock = {
        "nodes": {
            "nixpkgs-stable": {
                "locked": {"lastModified": modified, "rev": rev, "type": "github"},
            },
            "root": {"inputs": {"nixpkgs": "nixpkgs-stable"}},
        },
        "root": "root",
        "version": 7,
    }
    return json.dumps(lock).encode()


def test_nixpkgs_from_the_deploy_lock_when_the_system_agrees(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host())
    found = facts.collect_facts(tmp_path, flake_lock=flake_lock())
    assert found["nixpkgs_revision"] == NIXPKGS_REV
    assert found["nixpkgs_date"] == "2026-01-02T00:18:56Z"  # lastModified, to the second


def test_nixpkgs_from_the_system_when_the_lock_is_not_what_runs(tmp_path: Path) -> None:
    nixos_root(tmp_path, Host())
    found = facts.collect_facts(tmp_path, flake_lock=flake_lock(rev="5b3a8e1" + "0" * 33))
    assert found["nixpkgs_revision"] == NIXPKGS_REV  # nixos-version --json's nixpkgsRevision
    assert found["nixpkgs_date"] == "2026-01-02T00:00:00Z"  # only the day, from the label


def test_nixpkgs_from_the_version_label_alone(tmp_path: Path) -> None:
    tree = nixos_root(tmp_path, Host())
    tree.path(VERSION_SCRIPT).unlink()
    found = facts.collect_facts(tmp_path, flake_lock=b"not json")
    assert found["nixpkgs_revision"] == "ac62194"
    assert found["nixpkgs_date"] == "2026-01-02T00:00:00Z"


def test_nixpkgs_without_any_witness_is_unknown(tmp_path: Path) -> None:
    found = facts.collect_facts(tmp_path, flake_lock=flake_lock())
    assert found["nixpkgs_revision"] == NIXPKGS_REV  # the lock alone, nothing contradicts it
    bare = facts.collect_facts(tmp_path)
    assert (bare["nixpkgs_revision"], bare["nixpkgs_date"]) == (UNKNOWN, UNKNOWN)


# -- the report stays small ------------------------------------------------------------------


def test_a_full_inventory_stays_a_few_kilobytes(tmp_path: Path) -> None:
    tree = backup_host(tmp_path)
    tree.path("/sys/block/nvme0n1").rmdir()
    hardware(tree)
    network(tree)
    tree.copy("/etc/passwd", "passwd")
    found = facts.collect_facts(
        tmp_path,
        flake_lock=flake_lock(),
        now=NOW,
        recorded={
            IP_ADDR: command("ip-addr.json"),
            LOGINCTL: command("loginctl-sessions.json"),
            show(RESTIC): command("systemctl-show-restic-backups-nas.txt"),
        },
    )
    size = len(json.dumps(found, indent=2))
    assert size < 6000, size


# -- the contract --------------------------------------------------------------------------


def test_fact_keys_are_the_protocol_table() -> None:
    text = (REPO / "docs" / "protocol.md").read_text(encoding="utf-8")
    section = text.split("### Facts (schema 1)", 1)[1]
    keys = re.findall(r"^\| `([a-z_]+)` \|", section, flags=re.MULTILINE)
    assert tuple(keys) == facts.FACT_KEYS


# -- this machine --------------------------------------------------------------------------


def test_this_machine(caplog: pytest.LogCaptureFixture) -> None:
    """Whatever this machine is (NixOS or not, systemd running or not): right types."""
    with caplog.at_level(logging.DEBUG, logger="gitops.agent.facts"):
        found = facts.collect_facts(Path("/"))
        system = facts.collect_system(Path("/"), Path("/nix/var/nix/profiles/system"))
    assert tuple(found) == facts.FACT_KEYS
    assert found["firewall"] in ("active", "inactive", UNKNOWN)
    assert found["ssh_password_login"] in ("enabled", "disabled", "not-running", UNKNOWN)
    assert isinstance(found["ssh_root_login"], str)
    assert found["disk_encryption"] in ("luks", "none", UNKNOWN)
    for key in ("luks_devices", "failed_units"):
        value = found[key]
        assert value == UNKNOWN or (
            isinstance(value, list) and all(isinstance(v, str) for v in value)
        )
    for key in ("gc_timer", "auto_upgrade_timer"):
        assert found[key] in ("enabled", "absent", UNKNOWN)
    assert found["uptime_seconds"] == UNKNOWN or isinstance(found["uptime_seconds"], int)
    for key in ("disk_free_bytes", "disk_total_bytes"):
        assert set(found[key]) == {"/", "/nix"}
        assert all(v == UNKNOWN or isinstance(v, int) for v in found[key].values())
    assert found["machine_id"] == UNKNOWN or re.fullmatch(r"[0-9a-f]{32}", found["machine_id"])
    assert found["nixos_version"] == UNKNOWN or isinstance(
        found["nixos_version"].get("nixosVersion"), str
    )
    assert isinstance(system, SystemInfo)
    assert system.generation is None or isinstance(system.generation, int)
    assert system.reboot_required in (None, True, False)
    for key in ("cpu_cores", "cpu_threads", "memory_total_bytes"):
        assert isinstance(found[key], int) and found[key] > 0, key
    for key in ("disks", "network_interfaces", "local_users", "logged_in_users"):
        assert found[key] == UNKNOWN or isinstance(found[key], list), key
    for interface in found["network_interfaces"]:
        assert set(interface) == {"name", "mac", "state", "addresses"}
    # /proc/uptime, /proc/cpuinfo, /proc/meminfo and /sys/class/net exist on every Linux
    # machine, and `ip -j addr` runs here: these cannot be unknown.
    assert isinstance(found["uptime_seconds"], int)
    assert isinstance(found["network_interfaces"], list)
    assert all(isinstance(i["addresses"], list) for i in found["network_interfaces"])
