"""Secret declarations: ``secrets/secrets.yaml`` in the fleet repository, agenix's
``secrets.nix`` as YAML (docs/secrets.md).

```yaml
wifi-office:                # secrets/wifi-office.age
  hosts: [laptop-anna]      # these hosts' SSH keys (host.yaml `key`) can read it ...
  tags: [laptop]            # ... and every host with one of these tags
  owner: root               # on the host: /run/gitops-secrets/wifi-office
  group: root
  mode: "0400"
  path: /etc/NetworkManager/wifi-office.env   # optional: a symlink to it
```

Every secret is encrypted to its hosts' keys and to every admin in ``fleet.yaml``
``admins`` (who edit and rekey it). Nothing here decrypts anything.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from gitops.fleet.schema import Problems, Reader, load_yaml
from gitops.fleet.source import Source
from gitops.protocol import SECRET_SUFFIX, SECRETS_DIR, SecretFile, check_secret_file
from gitops.trust import age
from gitops.trust.sshsig import PublicKey

SECRETS_FILE = f"{SECRETS_DIR}/secrets.yaml"


@dataclass(frozen=True)
class Admin:
    """Someone who can read every secret and escrowed key: an age or SSH recipient."""

    name: str
    recipient: age.Recipient


@dataclass(frozen=True)
class Secret:
    file: SecretFile  # name, owner, group, mode, path on the host
    hosts: tuple[str, ...]  # as declared
    tags: tuple[str, ...]
    readers: tuple[str, ...]  # the hosts that get it: hosts + those with a tag, sorted
    recipients: tuple[age.Recipient, ...]  # the readers' keys, then the admins'

    @property
    def name(self) -> str:
        return self.file.name

    @property
    def path(self) -> str:
        """The age file in the repository (and in each reader's deploy tree)."""
        return self.file.file


def host_recipient(key: PublicKey) -> age.Recipient:
    """A host's SSH key as an age recipient; ValueError for a key type age cannot use."""
    return age.parse_recipient(key.openssh())


def _mode(reader: Reader) -> int:
    value = reader.get("mode")
    if value is None:
        return 0o400
    text = str(value) if isinstance(value, str) else None
    if text is None or not text.isdigit() or any(c in "89" for c in text):
        reader.problem("mode", f"{str(value)[:20]!r} is not an octal mode", "quote it: '0400'")
        return 0o400
    return int(text, 8)


def parse_secrets(
    source: Source,
    hosts: Mapping[str, tuple[PublicKey | None, Sequence[str]]],
    admins: Sequence[Admin],
    problems: Problems,
    *,
    check_files: bool = True,
) -> tuple[Secret, ...]:
    """The declarations in ``secrets/secrets.yaml`` (none when there is no such file).
    ``hosts`` maps each host to its key and tags. With ``check_files``, each secret's age
    file must exist and be encrypted to exactly its recipients."""
    raw = source.read(SECRETS_FILE)
    if raw is None:
        return ()
    where = source.describe(SECRETS_FILE)
    data = load_yaml(raw, where, problems)
    if data is None:
        return ()
    top = Reader(data, where, problems)
    secrets = []
    for name in sorted(map(str, data)):
        entry = top.mapping(name)
        secret = _parse_one(name, entry, top, hosts, admins)
        entry.finish()
        if secret is None:
            continue
        secrets.append(secret)
        if check_files:
            _check_file(source, secret, top)
    if secrets and not admins:
        problems.add(
            source.describe("fleet.yaml"),
            "secrets are declared but no admins",
            "add admins: [{name: you@example.org, key: 'age1...' or 'ssh-ed25519 ...'}]",
            field="admins",
        )
    return tuple(secrets)


def _parse_one(
    name: str,
    entry: Reader,
    top: Reader,
    hosts: Mapping[str, tuple[PublicKey | None, Sequence[str]]],
    admins: Sequence[Admin],
) -> Secret | None:
    declared = entry.strings("hosts")
    tags = entry.strings("tags")
    file = SecretFile(
        name=name,
        owner=entry.string("owner", "root"),
        group=entry.string("group", "root"),
        mode=_mode(entry),
        path=entry.string("path") or None,
    )
    problem = check_secret_file(file)
    if problem:
        top.problem(name, problem)
        return None
    readers = set()
    for index, host in enumerate(declared):
        if host not in hosts:
            entry.problem(f"hosts[{index}]", f"unknown host {host!r}", "hosts are hosts/<name>/")
        else:
            readers.add(host)
    for index, tag in enumerate(tags):
        tagged = {h for h, (_, host_tags) in hosts.items() if tag in host_tags}
        if not tagged:
            entry.problem(f"tags[{index}]", f"no host has the tag {tag!r}", "check its spelling")
        readers |= tagged
    recipients = []
    for host in sorted(readers):
        key = hosts[host][0]
        if key is None:
            continue
        try:
            recipients.append(host_recipient(key))
        except ValueError as err:
            entry.problem("hosts", f"{host}: {err}", "give the host an ssh-ed25519 key")
    if not readers:
        entry.problem("hosts", "no host can read it", "list hosts or tags")
    recipients.extend(admin.recipient for admin in admins)
    return Secret(file, declared, tags, tuple(sorted(readers)), tuple(recipients))


def _check_file(source: Source, secret: Secret, top: Reader) -> None:
    data = source.read(secret.path)
    if data is None:
        top.problem(
            secret.name,
            f"{secret.path} does not exist",
            f"run 'gitops secrets edit {secret.name}'",
        )
        return
    problem = age.header_problem(data, secret.recipients, secret.path)
    if problem:
        top.problem(secret.name, problem)


def undeclared_files(source: Source, secrets: Sequence[Secret]) -> list[str]:
    """Age files in secrets/ that no declaration names (left over after a removal)."""
    declared = {s.path for s in secrets}
    names = source.list_dir(SECRETS_DIR) or []
    return [
        f"{SECRETS_DIR}/{n}"
        for n in names
        if n.endswith(SECRET_SUFFIX) and f"{SECRETS_DIR}/{n}" not in declared
    ]
