"""``alerts:`` in fleet.yaml: where the site build sends events (webhooks) and commit
statuses (Forgejo, Gitea, GitHub). Secrets are never in the repository: each names an
environment variable or a file on the machine that builds the site (docs/alerts.md).
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path

from gitops.errors import GitopsError
from gitops.fleet.schema import Reader

_ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_REPO = re.compile(r"^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$")


class Forge(StrEnum):
    FORGEJO = "forgejo"
    GITEA = "gitea"
    GITHUB = "github"


@dataclass(frozen=True)
class Secret:
    """Where a secret is read from when it is needed: an environment variable or a file."""

    env: str = ""
    file: str = ""

    def describe(self) -> str:
        return f"environment variable {self.env}" if self.env else f"file {self.file}"

    def read(self) -> str:
        """The secret's text; GitopsError (naming where, never the value) when it is missing."""
        if self.env:
            value = os.environ.get(self.env, "")
            if not value:
                raise GitopsError(f"{self.describe()} is not set")
            return value
        try:
            value = Path(self.file).read_text(encoding="utf-8").strip()
        except OSError as err:
            raise GitopsError(f"{self.describe()}: cannot read ({err.strerror})") from err
        except UnicodeDecodeError as err:
            raise GitopsError(
                f"{self.describe()}: not UTF-8 text; write the secret as text"
            ) from err
        if not value:
            raise GitopsError(f"{self.describe()} is empty")
        return value


@dataclass(frozen=True)
class Webhook:
    url: str
    secret: Secret | None  # HMAC-SHA256 key for X-Gitops-Signature; None: unsigned


@dataclass(frozen=True)
class CommitStatus:
    forge: Forge
    api: str  # https://git.example.org/api/v1 (Forgejo, Gitea); https://api.github.com
    repo: str  # owner/name
    token: Secret
    context: str = "gitops/fleet"


@dataclass(frozen=True)
class AlertSettings:
    webhooks: tuple[Webhook, ...] = ()
    commit_status: CommitStatus | None = None
    site_url: str = ""  # the site's address, for links in events and statuses

    @property
    def enabled(self) -> bool:
        return bool(self.webhooks) or self.commit_status is not None


def _http_url(reader: Reader, key: str, *, required: bool = False) -> str:
    text = reader.string(key, required=required)
    if text and not text.lower().startswith(("http://", "https://")):
        reader.problem(key, f"{text[:60]!r} must be an http:// or https:// URL")
        return ""
    return text.rstrip("/") if key != "url" else text


def _secret(reader: Reader, prefix: str, *, required: bool) -> Secret | None:
    env = reader.string(f"{prefix}_env")
    file = reader.string(f"{prefix}_file")
    if env and file:
        reader.problem(f"{prefix}_env", f"give {prefix}_env or {prefix}_file, not both")
        return None
    if env and not _ENV_NAME.match(env):
        reader.problem(f"{prefix}_env", f"{env[:60]!r} is not an environment variable name")
        return None
    if file and not file.startswith("/"):
        reader.problem(f"{prefix}_file", f"{file[:60]!r} must be an absolute path")
        return None
    if not env and not file:
        if required:
            reader.problem(
                f"{prefix}_env",
                "is missing",
                f"name the environment variable ({prefix}_env) or file ({prefix}_file) that "
                "holds it on the machine that builds the site; never the value itself",
            )
        return None
    return Secret(env=env, file=file)


def _commit_status(reader: Reader) -> CommitStatus | None:
    if not reader.data:
        return None
    text = reader.string("forge", required=True)
    try:
        forge = Forge(text)
    except ValueError:
        reader.problem("forge", f"{text!r} is not forgejo, gitea or github")
        forge = None
    default_api = "https://api.github.com" if forge is Forge.GITHUB else ""
    api = _http_url(reader, "api") or default_api
    if not api:
        reader.problem("api", "is missing", "e.g. https://git.example.org/api/v1")
    repo = reader.string("repo", required=True)
    if repo and not _REPO.match(repo):
        reader.problem("repo", f"{repo[:60]!r} is not owner/name")
    token = _secret(reader, "token", required=True)
    context = reader.string("context", CommitStatus.context)
    reader.finish()
    if forge is None or not api or not repo or token is None:
        return None
    return CommitStatus(forge, api, repo, token, context)


def parse_alerts(reader: Reader) -> AlertSettings:
    webhooks = []
    for item in reader.items("webhooks"):
        url = _http_url(item, "url", required=True)
        secret = _secret(item, "secret", required=False)
        item.finish()
        if url:
            webhooks.append(Webhook(url, secret))
    status = _commit_status(reader.mapping("commit_status"))
    site_url = _http_url(reader, "site_url")
    reader.finish()
    return AlertSettings(tuple(webhooks), status, site_url)
