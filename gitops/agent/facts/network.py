"""Network interfaces and their addresses, local and logged-in users.

Interfaces come from ``/sys/class/net`` (name, MAC, operstate), their addresses from
``ip -j addr`` (a live host only: a tree has no addresses to show). Local users are
``/etc/passwd`` accounts with uid ≥ 1000 and a login shell; logged-in users are
``loginctl list-sessions``' (live only). Every list is bounded so a report stays small.
"""

from __future__ import annotations

import json
from typing import Any, Final

from gitops.agent.facts.hostfs import Host
from gitops.protocol import UNKNOWN

MAX_INTERFACES: Final = 16
MAX_ADDRESSES: Final = 8  # per interface
MAX_USERS: Final = 50
FIRST_USER_UID: Final = 1000
NOBODY_UID: Final = 65534
_NO_LOGIN: Final = ("nologin", "false")


def interfaces(host: Host) -> dict[str, Any]:
    names = host.list_dir("/sys/class/net")
    if names is None:
        return {}
    addresses = _addresses(host)
    # Physical interfaces first: fifty container veths must not push out the uplink.
    ordered = sorted(
        (name for name in names if name != "lo"),
        key=lambda name: (host.resolve(f"/sys/class/net/{name}/device") is None, name),
    )
    found = []
    for name in ordered[:MAX_INTERFACES]:
        found.append(
            {
                "name": name,
                "mac": host.read_value(f"/sys/class/net/{name}/address") or UNKNOWN,
                "state": host.read_value(f"/sys/class/net/{name}/operstate") or UNKNOWN,
                "addresses": UNKNOWN
                if addresses is None
                else addresses.get(name, [])[:MAX_ADDRESSES],
            }
        )
    return {"network_interfaces": found}


def _addresses(host: Host) -> dict[str, list[str]] | None:
    """Interface name → ``address/prefix`` list, from ``ip -j addr``; None if unknown."""
    text = host.output("ip", "-j", "addr", "show")
    if text is None:
        return None
    try:
        data = json.loads(text)
    except ValueError:
        return None
    if not isinstance(data, list):
        return None
    found: dict[str, list[str]] = {}
    for link in data:
        if not isinstance(link, dict) or not isinstance(link.get("ifname"), str):
            continue
        found[link["ifname"]] = [
            f"{info['local']}/{info['prefixlen']}"
            for info in link.get("addr_info") or []
            if isinstance(info, dict)
            and "local" in info
            and "prefixlen" in info
            and info.get("scope") != "host"
        ]
    return found


def local_users(host: Host) -> dict[str, Any]:
    text = host.read("/etc/passwd")
    if text is None:
        return {}
    users = []
    for line in text.splitlines():
        fields = line.split(":")
        if len(fields) < 7 or not fields[2].isdigit():
            continue
        uid = int(fields[2])
        shell = fields[6].rsplit("/", 1)[-1]
        if FIRST_USER_UID <= uid < NOBODY_UID and shell not in _NO_LOGIN:
            users.append(fields[0])
    return {"local_users": sorted(set(users))[:MAX_USERS]}


def logged_in_users(host: Host) -> dict[str, Any]:
    text = host.output("loginctl", "list-sessions", "-o", "json")
    if text is None:
        return {}
    try:
        sessions = json.loads(text)
    except ValueError:
        return {}
    if not isinstance(sessions, list):
        return {}
    users = {
        session["user"]
        for session in sessions
        if isinstance(session, dict) and isinstance(session.get("user"), str)
    }
    return {"logged_in_users": sorted(users)[:MAX_USERS]}
