"""Decrypt the deploy commit's secrets into a tmpfs, before ``switch-to-configuration``.

Layout (as agenix's ``/run/agenix`` → ``/run/agenix.d/<n>``): ``secrets_dir`` (default
``/run/gitops-secrets``) is a symlink to a generation directory ``<secrets_dir>.d/<n>``
holding one file per secret, with its declared owner, group and mode. A new generation is
written in full, then the symlink is swapped in one rename, then older generations are
deleted: a reader sees the old set or the new one, and a secret no longer declared is
gone. A secret with a ``path`` gets a symlink there pointing at ``secrets_dir/<name>``.

Plaintext exists only in that tmpfs: it is never logged, never written elsewhere, and the
directory's file system must be tmpfs or ramfs (checked). The host's SSH key decrypts.
"""

from __future__ import annotations

import contextlib
import grp
import json
import logging
import os
import pwd
import shutil
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Final

import pygit2

from gitops.errors import GitopsError
from gitops.protocol import SECRETS_MANIFEST, SecretFile, parse_secrets_manifest
from gitops.system import atomic, memfs
from gitops.trust import age

log = logging.getLogger(__name__)

LINKS_FILE: Final = ".links.json"  # in a generation: the `path` symlinks it made


class SecretsError(GitopsError):
    """The deploy commit's secrets cannot be put in place; the old ones stay."""


@dataclass(frozen=True)
class Installed:
    directory: Path  # the generation directory now behind secrets_dir
    names: tuple[str, ...]
    unowned: tuple[SecretFile, ...]  # owner or group unknown before the switch creates it


def manifest_of(repo: pygit2.Repository, commit: pygit2.Oid) -> tuple[SecretFile, ...]:
    tree = repo[commit].peel(pygit2.Tree)
    try:
        blob = tree[SECRETS_MANIFEST]
    except KeyError:
        return ()
    try:
        return parse_secrets_manifest(repo[blob.id].peel(pygit2.Blob).data)
    except ValueError as err:
        raise SecretsError(f"{SECRETS_MANIFEST} in deploy {str(commit)[:8]}: {err}") from err


def install(
    repo: pygit2.Repository, commit: pygit2.Oid, secrets_dir: Path, key: Path
) -> Installed | None:
    """Put ``commit``'s secrets in place (none: remove what is there). None when the
    commit has no secrets and there were none."""
    files = manifest_of(repo, commit)
    generations = secrets_dir.with_name(secrets_dir.name + ".d")
    if not files:
        if not secrets_dir.is_symlink() and not generations.exists():
            return None
        _retire(secrets_dir, generations, keep=None, declared=set())
        log.info("no secrets declared: removed %s", secrets_dir)
        return Installed(generations, (), ())
    _prepare(generations)
    try:
        identity = age.load_identity(key)
    except age.AgeError as err:
        raise SecretsError(f"cannot decrypt secrets: {err}") from err
    tree = repo[commit].peel(pygit2.Tree)
    number = 1 + max((int(p.name) for p in generations.iterdir() if p.name.isdigit()), default=0)
    new = generations / str(number)
    new.mkdir(mode=0o751)
    unowned = []
    short = str(commit)[:8]
    try:
        for file in files:
            data = _ciphertext(repo, tree, file, short)
            try:
                plaintext = age.decrypt(data, identity, file.file)
            except age.AgeError as err:
                raise SecretsError(f"deploy {short}: {err}") from err
            try:
                if not _write_secret(new / file.name, plaintext, file):
                    unowned.append(file)
            except (OSError, ValueError, OverflowError) as err:
                raise SecretsError(f"deploy {short}: secret {file.name}: {err}") from err
        links = _link_paths(files, secrets_dir)
        atomic.write_text(new / LINKS_FILE, json.dumps(links), mode=0o600)
    except BaseException:
        shutil.rmtree(new, ignore_errors=True)
        raise
    if secrets_dir.is_symlink() or not secrets_dir.exists():
        atomic.replace_symlink(secrets_dir, new)
    else:
        _replace_dir(secrets_dir, new)
    _retire(secrets_dir, generations, keep=new, declared=set(links))
    log.info("installed %d secret(s) in %s", len(files), secrets_dir)
    return Installed(new, tuple(f.name for f in files), tuple(unowned))


def settle(installed: Installed | None) -> None:
    """After the switch: give the secrets whose owner the new system created their owner."""
    if installed is None:
        return
    for file in installed.unowned:
        ids = _ids(file)
        if ids is None:
            log.warning(
                "secret %s: owner %s or group %s still unknown; root owns it",
                file.name,
                file.owner,
                file.group,
            )
            continue
        with contextlib.suppress(FileNotFoundError):
            os.chown(installed.directory / file.name, *ids, follow_symlinks=False)


def _prepare(generations: Path) -> None:
    generations.mkdir(mode=0o751, parents=True, exist_ok=True)
    kind = memfs.file_system_of(generations)
    if kind not in memfs.MEMORY_FILE_SYSTEMS:
        raise SecretsError(
            f"{generations} is on {kind or 'an unknown file system'}, not a tmpfs: secrets "
            "would reach the disk; set secrets_dir to a path on a tmpfs (e.g. /run/gitops-secrets)"
        )


def _ids(file: SecretFile) -> tuple[int, int] | None:
    try:
        uid = int(file.owner) if file.owner.isdigit() else pwd.getpwnam(file.owner).pw_uid
        gid = int(file.group) if file.group.isdigit() else grp.getgrnam(file.group).gr_gid
    except KeyError:
        return None
    return uid, gid


def _write_secret(path: Path, plaintext: bytes, file: SecretFile) -> bool:
    """Write one decrypted secret; False when its owner does not exist yet (root owns it)."""
    ids = _ids(file)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o000)
    try:
        os.fchown(fd, *(ids or (0, 0)))
        os.fchmod(fd, file.mode)
        os.write(fd, plaintext)
    finally:
        os.close(fd)
    return ids is not None


def _ciphertext(repo: pygit2.Repository, tree: pygit2.Tree, file: SecretFile, short: str) -> bytes:
    """The age file of ``file`` in the deploy tree: a regular file, nothing else."""
    try:
        entry = tree[file.file]
    except KeyError as err:
        raise SecretsError(f"deploy {short} lacks {file.file}") from err
    if entry.filemode not in (pygit2.enums.FileMode.BLOB, pygit2.enums.FileMode.BLOB_EXECUTABLE):
        raise SecretsError(
            f"deploy {short}: {file.file} is not a file (a link, directory or submodule)"
        )
    blob = repo.get(entry.id)
    if not isinstance(blob, pygit2.Blob):
        raise SecretsError(f"deploy {short} lacks {file.file}")
    return bytes(blob.data)


def _root_only(directory: Path) -> str | None:
    """Why a directory on the way to a ``path`` link is not safe for root to write in (a
    user who can change it could point the link, or its removal, elsewhere), or None.
    ``directory`` is a real path: every directory from ``/`` to it is owned by root and
    writable only by root, or sticky (others may add entries, never move root's)."""
    for step in (directory, *directory.parents):
        info = os.lstat(step)
        if not stat.S_ISDIR(info.st_mode):
            return f"{step} is not a directory"
        if info.st_uid != 0 and info.st_uid != os.geteuid():
            return f"{step} belongs to uid {info.st_uid}, not root"
        if info.st_mode & 0o022 and not info.st_mode & stat.S_ISVTX:
            return f"{step} is writable by others than its owner"
    return None


def _safe_link_path(file: SecretFile, *, create: bool) -> Path | None:
    """Where ``file.path`` really is, its directory made (``create``) and checked; None
    when its directory does not exist and ``create`` is False."""
    assert file.path is not None
    link = Path(file.path)
    existing, missing = link.parent, list[str]()
    while not existing.exists():
        missing.insert(0, existing.name)
        existing = existing.parent
    if missing and not create:
        return None
    # Each directory on the way as written (a link in it is followed only when the
    # directory holding the link is root's alone) and where it really is.
    for step in (*reversed(existing.parents), existing):
        problem = _root_only(Path(os.path.realpath(step)))
        if problem is not None:
            raise SecretsError(
                f"secret {file.name}: path {link}: {problem}; choose a path in a directory "
                "only root can write"
            )
    real = Path(os.path.realpath(existing))
    for name in missing:  # in root-only directories: nobody else can create them first
        real = real / name
        real.mkdir(mode=0o755)
    return real / link.name


def _link_paths(files: tuple[SecretFile, ...], secrets_dir: Path) -> list[str]:
    """Point each declared ``path`` at ``secrets_dir/<name>``; never replace a real file,
    never write through a directory a user other than root controls."""
    made = []
    for file in files:
        if file.path is None:
            continue
        try:
            link = _safe_link_path(file, create=True)
            assert link is not None
            if link.exists() and not link.is_symlink():
                raise SecretsError(
                    f"secret {file.name}: {file.path} exists and is not a symlink; remove it "
                    "or change path"
                )
            atomic.replace_symlink(link, secrets_dir / file.name)
        except (OSError, ValueError) as err:
            raise SecretsError(f"secret {file.name}: path {file.path}: {err}") from err
        made.append(file.path)
    return made


def _replace_dir(secrets_dir: Path, new: Path) -> None:
    """A real directory where the symlink goes (made by hand): moved aside, then removed."""
    aside = secrets_dir.with_name(f".{secrets_dir.name}.old-{os.getpid()}")
    secrets_dir.rename(aside)
    atomic.replace_symlink(secrets_dir, new)
    shutil.rmtree(aside, ignore_errors=True)


def _retire(secrets_dir: Path, generations: Path, *, keep: Path | None, declared: set[str]) -> None:
    """Delete every generation but ``keep``, and the ``path`` links they made that are
    not declared any more (and still point into ``secrets_dir``)."""
    if keep is None and secrets_dir.is_symlink():
        secrets_dir.unlink()
    if not generations.is_dir():
        return
    for old in generations.iterdir():
        if old == keep:
            continue
        for link in _links_of(old) - declared:
            _unlink(link, secrets_dir)
        shutil.rmtree(old, ignore_errors=True)
    if keep is None:
        shutil.rmtree(generations, ignore_errors=True)


def _unlink(link: str, secrets_dir: Path) -> None:
    """Remove a ``path`` link made before, if it still points into ``secrets_dir`` and its
    directory is still root's only."""
    try:
        path = _safe_link_path(SecretFile(Path(link).name, path=link), create=False)
        if path is not None and path.is_symlink() and path.readlink().parent == secrets_dir:
            path.unlink()
    except (SecretsError, OSError, ValueError) as err:
        log.warning("left the old secret link %s in place: %s", link, err)


def _links_of(generation: Path) -> set[str]:
    try:
        links = json.loads((generation / LINKS_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return set()
    return {str(link) for link in links} if isinstance(links, list) else set()
