"""Hardware inventory: DMI (vendor, model, serial, firmware), CPU, memory and disks.

Read the way the kernel shows them on NixOS as anywhere: ``/sys/class/dmi/id``,
``/proc/cpuinfo``, ``/proc/meminfo``, ``/sys/block``. The DMI serial is readable only
by root; as another user it is unknown. Firmware placeholders ("To Be Filled By
O.E.M.") say nothing about the machine, so they are unknown too.
"""

from __future__ import annotations

import re
from typing import Any, Final

from gitops.agent.facts.compliance import Mapper, device_mappers, is_luks
from gitops.agent.facts.hostfs import Host

DMI: Final = "/sys/class/dmi/id"
MAX_DISKS: Final = 16
SECTOR: Final = 512  # /sys/block/*/size counts 512-byte sectors whatever the device's own
# Virtual block devices: not disks of the machine.
_VIRTUAL = re.compile(r"^(loop|ram|zram|dm-|md|nbd|sr)\d")
_BIOS_DATE = re.compile(r"^(\d\d)/(\d\d)/(\d{4})$")
_PLACEHOLDERS: Final = frozenset(
    {
        "to be filled by o.e.m.",
        "default string",
        "system product name",
        "system manufacturer",
        "not specified",
        "not applicable",
        "none",
        "o.e.m.",
        "0",
        "0123456789",
        "123456789",
    }
)


def _dmi(host: Host, name: str) -> str | None:
    value = host.read_value(f"{DMI}/{name}")
    if value is None or value.lower() in _PLACEHOLDERS:
        return None
    return value


def firmware(host: Host) -> dict[str, Any]:
    facts: dict[str, Any] = {
        "hardware_vendor": _dmi(host, "sys_vendor"),
        "hardware_model": _dmi(host, "product_name"),
        "hardware_serial": _dmi(host, "product_serial"),
        "bios_version": _dmi(host, "bios_version"),
    }
    date = _dmi(host, "bios_date")
    if date is not None:
        # The kernel prints SMBIOS's MM/DD/YYYY; the report says YYYY-MM-DD.
        match = _BIOS_DATE.match(date)
        facts["bios_date"] = f"{match[3]}-{match[1]}-{match[2]}" if match else date
    return {key: value for key, value in facts.items() if value is not None}


def cpu(host: Host) -> dict[str, Any]:
    text = host.read("/proc/cpuinfo")
    if text is None:
        return {}
    processors: list[dict[str, str]] = []
    for block in text.split("\n\n"):
        fields = {}
        for line in block.splitlines():
            key, sep, value = line.partition(":")
            if sep:
                fields[key.strip()] = value.strip()
        if "processor" in fields:
            processors.append(fields)
    if not processors:
        return {}
    facts: dict[str, Any] = {"cpu_threads": len(processors)}
    model = processors[0].get("model name") or processors[0].get("Model")
    if model:
        facts["cpu_model"] = model
    cores = {
        (p["physical id"], p["core id"])
        for p in processors
        if "physical id" in p and "core id" in p
    }
    # Without topology lines (many ARM kernels) every processor is a core.
    facts["cpu_cores"] = len(cores) if cores else len(processors)
    return facts


def memory(host: Host) -> dict[str, Any]:
    text = host.read("/proc/meminfo") or ""
    match = re.search(r"^MemTotal:\s+(\d+) kB$", text, flags=re.MULTILINE)
    return {"memory_total_bytes": int(match[1]) * 1024} if match else {}


def disks(host: Host) -> dict[str, Any]:
    """The machine's disks (not partitions, not virtual devices), at most MAX_DISKS."""
    blocks = host.list_dir("/sys/block")
    mappers = device_mappers(host)
    if blocks is None:
        return {}
    found = []
    for name in blocks:
        if _VIRTUAL.match(name) or host.resolve(f"/sys/block/{name}/device") is None:
            continue
        found.append(_disk(host, name, mappers))
        if len(found) == MAX_DISKS:
            break
    return {"disks": found}


def _disk(host: Host, name: str, mappers: dict[str, Mapper] | None) -> dict[str, Any]:
    sectors = host.read_value(f"/sys/block/{name}/size")
    rotational = host.read_value(f"/sys/block/{name}/queue/rotational")
    model = host.read_value(f"/sys/block/{name}/device/model")
    return {
        "name": name,
        "size_bytes": int(sectors) * SECTOR if sectors and sectors.isdigit() else "unknown",
        "model": model or "unknown",
        "rotational": {"0": False, "1": True}.get(rotational or "", "unknown"),
        "luks": "unknown" if mappers is None else _has_luks(host, name, mappers),
    }


def _has_luks(host: Host, disk: str, mappers: dict[str, Mapper]) -> bool:
    """Whether a LUKS volume sits on the disk or one of its partitions."""
    parts = {disk} | {
        entry for entry in host.list_dir(f"/sys/block/{disk}") or [] if entry.startswith(disk)
    }
    return any(
        is_luks(mappers, mapper.name) and _beneath(mappers, mapper.name) & parts
        for mapper in mappers.values()
    )


def _beneath(mappers: dict[str, Mapper], block: str, depth: int = 0) -> set[str]:
    """The block devices a device mapper device is built on, through other mappers."""
    mapper = mappers.get(block)
    if mapper is None or depth > 8:
        return {block}
    found: set[str] = set()
    for slave in mapper.slaves:
        found |= _beneath(mappers, slave, depth + 1)
    return found
