"""``gitops secrets edit|rekey|list|check`` and ``gitops hosts rotate-key``: the age files
in ``secrets/``, encrypted to the hosts and admins ``secrets/secrets.yaml`` names.

Work happens in the fleet repository's work tree; commit the result as any change."""

from __future__ import annotations

import os
import re
import shlex
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from gitops import output
from gitops.errors import GitopsError, ProblemsError
from gitops.fleet.check import ensure_fleet_repository
from gitops.fleet.model import HOST_FILE, HOSTS_DIR, Fleet, load_fleet
from gitops.fleet.schema import Problems
from gitops.fleet.secrets import Secret, undeclared_files
from gitops.fleet.source import DirSource
from gitops.protocol import SECRETS_DIR
from gitops.system import atomic, memfs, process
from gitops.trust import age
from gitops.trust.sshsig import PublicKey

IDENTITY_ENV = "GITOPS_AGE_IDENTITY"


def default_identity(environ: Mapping[str, str] | None = None) -> Path:
    """$GITOPS_AGE_IDENTITY, else ~/.ssh/id_ed25519."""
    env = os.environ if environ is None else environ
    if env.get(IDENTITY_ENV):
        return Path(env[IDENTITY_ENV])
    return Path.home() / ".ssh" / "id_ed25519"


def _load(repo: Path) -> tuple[Fleet, Problems]:
    ensure_fleet_repository(repo)
    problems = Problems()
    return load_fleet(DirSource(repo), problems), problems


def _secrets_problems(problems: Problems) -> list[str]:
    """The problems in what the secrets commands rely on: the declarations and the admins."""
    return [str(p) for p in problems.items if "secrets" in p.file or p.field == "admins"]


def _load_declared(repo: Path) -> Fleet:
    """The fleet, refusing to go on when the secrets declarations are broken: a secret the
    file fails to declare would otherwise be silently skipped (listed as none, not rekeyed)."""
    fleet, problems = _load(repo)
    found = [  # the age files' own state (missing, stale) is what list and rekey are for
        str(p)
        for p in problems.items
        if ("secrets" in p.file or p.field == "admins")
        and not p.problem.startswith(f"{SECRETS_DIR}/")
    ]
    if found:
        more = f" (and {len(found) - 1} more)" if len(found) > 1 else ""
        raise GitopsError(f"{found[0]}{more}; fix it first, 'gitops secrets check' lists all")
    return fleet


def _read_age(repo: Path, secret: Secret) -> bytes | None:
    """The secret's age file, None when there is none yet."""
    target = repo / secret.path
    try:
        return target.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as err:
        raise GitopsError(
            f"{target}: cannot read it ({err.strerror}); it must be the age file of "
            f"secret {secret.name!r}"
        ) from err


def _secret(fleet: Fleet, problems: Problems, name: str) -> Secret:
    for secret in fleet.secrets:
        if secret.name == name:
            return secret
    detail = [str(p) for p in problems.items if "secrets" in p.file]
    raise ProblemsError(
        f"{name!r} is not declared in secrets/secrets.yaml; declare it (hosts, owner, mode) "
        "first, see docs/secrets.md",
        detail,
    )


def edit(repo: Path, name: str, identity_path: Path | None) -> int:
    """Decrypt into a tmpfs, run $EDITOR, encrypt what it left to the declared recipients."""
    fleet, problems = _load(repo)
    secret = _secret(fleet, problems, name)
    _load_declared(repo)
    target = repo / secret.path
    old = _read_age(repo, secret)
    editor = shlex.split(os.environ.get("VISUAL") or os.environ.get("EDITOR") or "vi")
    with memfs.private_dir() as scratch:
        plain = scratch / name
        before = b""
        if old is not None:
            identity = age.load_identity(identity_path or default_identity())
            before = age.decrypt(old, identity, secret.path)
        fd = os.open(plain, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(before)
        process.run([*editor, plain], check=True, capture=False)
        after = plain.read_bytes()
    if not after:
        raise GitopsError(f"{name}: the edited file is empty; nothing written")
    stale = old is None or age.header_problem(old, secret.recipients, secret.path)
    if after == before and not stale:
        output.say(f"{secret.path}: unchanged")
        return 0
    atomic.write_bytes(target, age.encrypt(after, secret.recipients))
    output.say(f"wrote {secret.path} for {_readers(fleet, secret)}; commit it")
    return 0


def _readers(fleet: Fleet, secret: Secret) -> str:
    admins = [a.name for a in fleet.settings.admins]
    return ", ".join([*secret.readers, *(f"admin {a}" for a in admins)])


def rekey(
    repo: Path, identity_path: Path | None, *, everything: bool = False, host: str | None = None
) -> list[str]:
    """Re-encrypt each secret whose recipients changed (all with ``everything``; only
    those ``host`` reads with ``host``); the paths rewritten."""
    fleet = _load_declared(repo)
    identity = None
    rewritten = []
    for secret in fleet.secrets:
        if host is not None and host not in secret.readers:
            continue
        target = repo / secret.path
        data = _read_age(repo, secret)
        if data is None:
            continue  # nothing to rekey: 'edit' creates it
        if not everything and age.header_problem(data, secret.recipients, secret.path) is None:
            continue
        identity = identity or age.load_identity(identity_path or default_identity())
        plaintext = age.decrypt(data, identity, secret.path)
        atomic.write_bytes(target, age.encrypt(plaintext, secret.recipients))
        rewritten.append(secret.path)
    return rewritten


def rekey_command(
    repo: Path, identity_path: Path | None, *, everything: bool, as_json: bool
) -> int:
    rewritten = rekey(repo, identity_path, everything=everything)
    if as_json:
        output.emit_json({"rekeyed": rewritten})
    elif rewritten:
        output.say("rekeyed " + ", ".join(rewritten) + "; commit them")
    else:
        output.say("every secret is encrypted to exactly its recipients; nothing to do")
    return 0


def list_secrets(repo: Path, *, as_json: bool) -> int:
    """Who can read what."""
    fleet = _load_declared(repo)
    rows: list[dict[str, Any]] = []
    for secret in fleet.secrets:
        data = _read_age(repo, secret)
        state = "missing"
        if data is not None:
            state = "needs rekey" if age.header_problem(data, secret.recipients, "") else "ok"
        rows.append(
            {
                "name": secret.name,
                "file": secret.path,
                "hosts": list(secret.readers),
                "admins": [a.name for a in fleet.settings.admins],
                "owner": secret.file.owner,
                "group": secret.file.group,
                "mode": f"{secret.file.mode:04o}",
                "path": secret.file.path,
                "state": state,
            }
        )
    if as_json:
        output.emit_json({"secrets": rows})
        return 0
    if not rows:
        output.say("no secrets declared (secrets/secrets.yaml)")
    for row in rows:
        output.say(
            f"{row['name']}: {row['state']}; hosts {', '.join(row['hosts']) or '-'}; "
            f"admins {', '.join(row['admins']) or '-'}; "
            f"{row['owner']}:{row['group']} {row['mode']}"
            + (f" -> {row['path']}" if row["path"] else "")
        )
    return 0


def check(repo: Path, *, as_json: bool) -> int:
    """Every declaration valid, every age file present and encrypted to exactly its
    recipients (read from its header, nothing decrypted), no undeclared age file."""
    fleet, problems = _load(repo)
    found = _secrets_problems(problems)
    found += [
        f"{path}: not declared in secrets/secrets.yaml; declare it or delete it"
        for path in undeclared_files(DirSource(repo), fleet.secrets)
    ]
    if as_json:
        output.emit_json({"ok": not found, "secrets": len(fleet.secrets), "problems": found})
        return 1 if found else 0
    if found:
        raise ProblemsError(f"secrets: {len(found)} problem(s)", found)
    output.say(f"ok: {len(fleet.secrets)} secrets, each encrypted to exactly its recipients")
    return 0


_KEY_LINE = re.compile(r"^key:.*$", re.M)


def rotate_key(repo: Path, host: str, new_key: Path, identity_path: Path | None) -> int:
    """Put ``new_key`` in hosts/<host>/host.yaml and rekey every secret the host reads:
    from the commit that carries this, the old key reads no new secret."""
    ensure_fleet_repository(repo)
    host_file = repo / HOSTS_DIR / host / HOST_FILE
    if not host_file.is_file():
        raise GitopsError(f"{host_file}: no such host; hosts are the directories in hosts/")
    try:
        text = new_key.read_text(encoding="utf-8")
    except (OSError, ValueError) as err:
        raise GitopsError(
            f"{new_key}: cannot read the new public key ({getattr(err, 'strerror', None) or err}); "
            "pass the host's .pub file"
        ) from err
    if "PRIVATE KEY" in text:
        raise GitopsError(
            f"{new_key}: is a private key; pass the public key, {new_key}.pub "
            "(ssh-keygen -y -f KEY prints it)"
        )
    try:
        key = PublicKey.parse(text)
    except ValueError as err:
        raise GitopsError(
            f"{new_key}: not a public key line ({err}); pass the host's .pub file"
        ) from err
    text = host_file.read_text(encoding="utf-8")
    if _KEY_LINE.search(text) is None:
        raise GitopsError(f"{host_file}: has no 'key:' line to replace")
    atomic.write_text(host_file, _KEY_LINE.sub(f"key: {key.openssh()}", text, count=1))
    rewritten = rekey(repo, identity_path, host=host)
    output.say(
        f"{host}: key is now {key.fingerprint}; rekeyed "
        + (", ".join(rewritten) or "no secrets")
        + ". Commit, review and publish: the new deploy commit carries only files the new key "
        "reads. Then tell the server: gitops server sync"
    )
    return 0
