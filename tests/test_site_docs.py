"""The handbook builds with ``mkdocs build --strict`` (mkdocs>=1.6,<2, no plugins), and
its navigation lists every page in docs/."""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path

import pytest
import yaml

from gitops.system import process
from testing.site_helpers import ROOT

HAVE_MKDOCS = importlib.util.find_spec("mkdocs") is not None


def _nav_pages(items: object) -> list[str]:
    pages: list[str] = []
    if isinstance(items, list):
        for item in items:
            pages += _nav_pages(item)
    elif isinstance(items, dict):
        for value in items.values():
            pages += _nav_pages(value)
    elif isinstance(items, str):
        pages.append(items)
    return pages


def test_nav_lists_every_page_and_only_pages() -> None:
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    nav = _nav_pages(config["nav"])
    assert len(nav) == len(set(nav))
    for page in ("index.md", "concepts.md", "protocol.md", "dashboard.md", "benchmarks.md"):
        assert page in nav
    on_disk = {p.relative_to(ROOT / "docs").as_posix() for p in (ROOT / "docs").rglob("*.md")}
    assert on_disk <= set(nav), f"pages missing from the nav: {sorted(on_disk - set(nav))}"


@pytest.mark.skipif(
    not HAVE_MKDOCS and not os.environ.get("CI"), reason="mkdocs is not installed (CI has it)"
)
def test_handbook_builds_strict(tmp_path: Path) -> None:
    out = tmp_path / "handbook"
    result = process.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", out],
        check=False,
        cwd=ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]
    assert (out / "index.html").is_file()
    assert (out / "dashboard.html").is_file()
