"""Where the templates and assets are: inside the installed wheel (``gitops/_site``, which
pyproject force-includes from the top-level ``site/``) or, in an editable install or a
checkout, ``site/`` beside the package."""

from __future__ import annotations

import hashlib
from pathlib import Path

import gitops
from gitops.errors import GitopsError

PACKAGE_DIR = Path(gitops.__file__).resolve().parent


def site_dir() -> Path:
    for candidate in (PACKAGE_DIR / "_site", PACKAGE_DIR.parent / "site"):
        if (candidate / "templates" / "base.html").is_file():
            return candidate
    raise GitopsError(
        f"the site templates are missing (looked in {PACKAGE_DIR / '_site'} and "
        f"{PACKAGE_DIR.parent / 'site'}); reinstall nixos-gitops"
    )


def templates_dir() -> Path:
    return site_dir() / "templates"


def assets_dir() -> Path:
    return site_dir() / "assets"


def code_id() -> str:
    """Changes whenever the code or templates that render the site change (cache key)."""
    digest = hashlib.sha256(gitops.__version__.encode())
    sources = sorted((PACKAGE_DIR / "sitegen").glob("*.py"))
    sources += [PACKAGE_DIR / "fleet" / "policies.py", PACKAGE_DIR / "protocol.py"]
    sources += sorted(p for p in site_dir().rglob("*") if p.is_file())
    for path in sources:
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:16]
