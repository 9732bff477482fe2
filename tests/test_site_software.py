"""The site's software pages: each host's SBOM (downloadable, searchable), which hosts run
which package, known vulnerabilities from a feed; refused SBOMs shown, never used."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops import cli
from gitops.errors import GitopsError
from gitops.inventory.sbom import PackageQuery
from gitops.protocol import SBOM_FILE, STATUS_FILE, reports_ref
from gitops.sitegen import build as site_build
from gitops.sitegen import fleetstatus
from gitops.trust import commits
from testing.sboms import HOST_PACKAGES, NOW, NVD, WHEN, SoftwareFleet
from testing.site_helpers import broken_links


@pytest.fixture
def fleet(tmp_path: Path) -> SoftwareFleet:
    fleet = SoftwareFleet(
        tmp_path / "fleet.git", pygit2.init_repository(tmp_path / "fleet.git", True)
    )
    for name in (*HOST_PACKAGES, "new-1"):
        fleet.add_host(name)
    fleet.hosts["web-2"]["vulnerabilities"] = {
        "exemptions": [
            {"cve": "CVE-2024-35195", "reason": "no verify=False anywhere", "expires": "2099-01-01"}
        ]
    }
    fleet.vulnerabilities = {
        "feeds": [str(NVD)],
        "exemptions": [
            {"cve": "CVE-2024-2398", "reason": "no HTTP/2 push", "expires": "2020-01-01"},
            {"cve": "CVE-2025-21700", "reason": "no untrusted qdisc", "expires": "2099-12-31"},
        ],
    }
    fleet.commit_main("hosts", WHEN - timedelta(days=1))
    for name, packages in HOST_PACKAGES.items():
        fleet.send(name, packages)
    return fleet


def load(site: Path, name: str) -> Any:
    return json.loads((site / name).read_text())


def build(fleet: SoftwareFleet, out: Path, now: datetime = NOW) -> site_build.BuildStats:
    return site_build.build(fleet.path, out, now=now, workers=1)


def test_each_host_page_offers_its_sbom_and_its_packages(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    wrote = fleet.send("web-1", HOST_PACKAGES["web-1"], WHEN + timedelta(minutes=1))
    out = tmp_path / "site"
    build(fleet, out)
    assert (out / "hosts" / "web-1.cdx.json").read_bytes() == wrote  # as the host wrote it
    page = (out / "hosts" / "web-1.html").read_text()
    assert "4 store paths, 3 distinct packages" in page  # openssl-3.0.13-bin is openssl 3.0.13
    data = load(out, "software.json")
    web1 = data["sboms"]["web-1"]
    assert (web1["components"], web1["packages"], web1["stale"]) == (4, 3, False)
    assert f'href="../software/{web1["package_set"]}.html"' in page
    listing = (out / "software" / f"{web1['package_set']}.html").read_text()
    assert "<td>curl</td><td>8.6.0</td>" in listing and "openssl" in listing
    assert "No SBOM yet" in (out / "hosts" / "new-1.html").read_text()
    assert data["hosts_without_sbom"] == ["new-1"]
    assert broken_links(out) == []


def test_which_hosts_run_a_package(fleet: SoftwareFleet, tmp_path: Path) -> None:
    out = tmp_path / "site"
    build(fleet, out)
    data = load(out, "software.json")
    sets = data["sets"]

    def hosts(name: str, version: str) -> list[str]:
        (audience,) = (a for n, v, a in data["packages"] if (n, v) == (name, version))
        return sorted(h for i in data["audiences"][audience] for h in sets[i]["hosts"])

    assert hosts("openssl", "3.0.13") == ["web-1", "web-2"]
    assert hosts("openssl", "3.0.15") == ["kiosk-1"]
    assert hosts("system-path", "") == ["kiosk-1"]
    page = (out / "software.html").read_text()
    assert '<td>openssl</td><td>3.0.13</td><td data-sort="2">2</td>' in page
    index = page.split('id="package-index">')[1].split("</script>")[0]
    assert json.loads(index)["audiences"] == data["audiences"]


def test_a_refused_sbom_is_shown_and_the_older_one_kept(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    build(fleet, out)
    before = load(out, "software.json")["sboms"]
    intruder = ed25519.Ed25519PrivateKey.generate()
    fleet.send("web-1", ("backdoor-1.0",), WHEN + timedelta(minutes=1), key=intruder)
    fleet.send("web-2", (), WHEN + timedelta(minutes=1), document=b'{"bomFormat": "nonsense"')
    web1 = (out / "hosts" / "web-1.cdx.json").read_bytes()
    fleet.send("kiosk-1", (), WHEN + timedelta(minutes=2), document=web1)  # signed by kiosk-1
    build(fleet, out)
    data = load(out, "software.json")
    after = data["sboms"]
    for host, why, stale in (
        ("web-1", "not counted: unknown key", False),  # its newest verified report is older
        ("web-2", "SBOM is not JSON", True),
        ("kiosk-1", "it names host 'web-1'", True),
    ):
        assert after[host]["commit"] == before[host]["commit"], host  # the older one counts
        assert why in after[host]["refused"][0]["why"], after[host]
        assert after[host]["stale"] is stale  # the newest report runs another system
        page = (out / "hosts" / f"{host}.html").read_text()
        assert "Refused (never used)" in page and ("Out of date" in page) is stale
    assert "backdoor" not in json.dumps(data)
    assert "SBOMs refused" in (out / "software.html").read_text()
    assert broken_links(out) == []


def test_vulnerabilities_page_from_the_configured_feed(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    build(fleet, out)
    data = load(out, "vulnerabilities.json")
    assert (data["feed_configured"], data["cves_in_feed"], data["hosts_scanned"]) == (True, 7, 3)
    found = {v["cve"]: v for v in data["vulnerabilities"]}
    assert set(found) == {
        "CVE-2024-5535",
        "CVE-2024-2398",
        "CVE-2024-35195",
        "CVE-2025-21700",
        "CVE-2009-9999",
    }
    assert found["CVE-2024-5535"]["hosts"] == ["web-1", "web-2"]
    assert found["CVE-2024-5535"]["fixed_in"] == ["3.0.15"]
    assert found["CVE-2024-2398"]["hosts"] == ["web-1"]  # the fleet's exemption expired
    assert found["CVE-2024-35195"]["exempt_hosts"] == {
        "web-2": {"reason": "no verify=False anywhere", "expires": "2099-01-01"}
    }
    assert found["CVE-2025-21700"]["exempt_hosts"]["web-2"]["reason"] == "no untrusted qdisc"
    assert data["vulnerabilities"][0]["cve"] == "CVE-2024-5535"  # worst first
    page = (out / "vulnerabilities.html").read_text()
    assert 'id="CVE-2024-5535"' in page and 'id="host-web-2"' in page
    assert "until 2099-01-01: no verify=False anywhere" in page
    assert broken_links(out) == []


def test_without_a_feed_the_page_says_how_to_configure_one(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    fleet.vulnerabilities = None
    fleet.commit_main("no feed", WHEN)
    out = tmp_path / "site"
    build(fleet, out)
    assert "No vulnerability feed is configured" in (out / "vulnerabilities.html").read_text()
    assert load(out, "vulnerabilities.json")["vulnerabilities"] == []
    fleet.vulnerabilities = {"feeds": ["missing-dir"]}
    fleet.commit_main("a feed that is not there", WHEN)
    build(fleet, out)  # the rest of the site is built
    assert "could not be read" in (out / "vulnerabilities.html").read_text()
    assert (out / "hosts" / "web-1.cdx.json").exists()


def test_heartbeats_keep_the_sbom_and_a_new_one_replaces_it(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    build(fleet, out)
    first = load(out, "software.json")["sboms"]["web-1"]
    inode = (out / "hosts" / "web-1.cdx.json").stat().st_ino
    fleet.send("web-1", HOST_PACKAGES["web-1"], WHEN + timedelta(minutes=5), with_sbom=False)
    stats = build(fleet, out)
    assert stats.hosts_read == 1
    again = load(out, "software.json")["sboms"]["web-1"]
    assert again["commit"] == first["commit"]
    assert (out / "hosts" / "web-1.cdx.json").stat().st_ino == inode  # linked, not read again
    newer = fleet.send("web-1", ("openssl-3.0.15",), WHEN + timedelta(minutes=9))
    build(fleet, out)
    assert (out / "hosts" / "web-1.cdx.json").read_bytes() == newer
    data = load(out, "software.json")
    assert data["sboms"]["web-1"]["packages"] == 1
    assert "web-1" not in load(out, "vulnerabilities.json")["vulnerabilities"][0]["hosts"]


def test_a_rewritten_report_branch_is_searched_again(fleet: SoftwareFleet, tmp_path: Path) -> None:
    out = tmp_path / "site"
    first_head = commits.ref_target(fleet.repo, reports_ref("web-1"))
    assert first_head is not None
    fleet.send("web-1", ("git-2.47.0",), WHEN + timedelta(minutes=1))
    build(fleet, out)
    assert load(out, "software.json")["sboms"]["web-1"]["packages"] == 1
    fleet.set_ref(reports_ref("web-1"), str(first_head))  # back to the first report
    build(fleet, out)
    assert load(out, "software.json")["sboms"]["web-1"]["packages"] == 3


def test_the_site_sbom_is_the_commits_file(fleet: SoftwareFleet, tmp_path: Path) -> None:
    """What the site offers for download is the blob of the counted report commit."""
    out = tmp_path / "site"
    build(fleet, out)
    commit = fleet.repo.get(load(out, "software.json")["sboms"]["kiosk-1"]["commit"])
    assert isinstance(commit, pygit2.Commit)
    assert {e.name for e in commit.tree} == {STATUS_FILE, SBOM_FILE}
    blob = commit.tree[SBOM_FILE]
    assert isinstance(blob, pygit2.Blob)
    assert (out / "hosts" / "kiosk-1.cdx.json").read_bytes() == blob.data


def test_a_nixpkgs_age_policy_flips_without_a_new_report(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    fleet.policies["nixpkgs-fresh.yaml"] = (
        "name: nixpkgs-fresh\ncondition: {fact: facts.nixpkgs_date, max_age_days: 10}\n"
    )
    fleet.commit_main("nixpkgs no older than 10 days", WHEN)
    # 10 days after this date is NOW + 1 h: the answer flips between the two builds.
    fleet.send("web-1", (), WHEN, facts={"nixpkgs_date": "2026-11-10T12:00:00Z"})
    out = tmp_path / "site"

    def answer() -> str:
        return str(load(out, "compliance.json")["hosts"]["web-1"]["nixpkgs-fresh"])

    build(fleet, out)
    assert answer() == "pass"
    build(fleet, out, NOW + timedelta(hours=2))  # same day, no new commit
    assert answer() == "fail"


def test_status_package_and_the_software_page_agree(
    fleet: SoftwareFleet, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "site"
    build(fleet, out)
    data = load(out, "software.json")
    site: dict[tuple[str, str], list[str]] = {}
    for name, version, audience in data["packages"]:
        hosts = [h for i in data["audiences"][audience] for h in data["sets"][i]["hosts"]]
        site[(name, version)] = sorted(hosts)
    status = fleetstatus.read_status(fleet.path, NOW, software=True)
    for (name, version), hosts in site.items():
        found = status.select(package=PackageQuery(name, version))
        assert [r.host.name for r in found.rows] == hosts, (name, version)
        assert {r.matched for r in found.rows} == {((name, version),)}
    for name in {n for n, _v in site}:
        anyversion = sorted({h for (n, _v), hosts in site.items() if n == name for h in hosts})
        found = status.select(package=PackageQuery(name, None))
        assert [r.host.name for r in found.rows] == anyversion, name
    assert status.select(package=PackageQuery("nonexistent", None)).rows == ()

    cli.execute(["status", "--repo", str(fleet.path), "--package", "OpenSSL"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:3] == ["HOST", "VERSION", "STATE"]
    rows = {line.split()[0]: line.split()[1] for line in lines[1:4]}
    assert rows == {"kiosk-1": "3.0.15", "web-1": "3.0.13", "web-2": "3.0.13"}
    assert lines[-1].startswith("3 hosts running openssl:")
    cli.execute(["status", "--repo", str(fleet.path), "--json", "--package", "openssl@3.0.13"])
    hosts = json.loads(capsys.readouterr().out)["hosts"]
    assert [(h["name"], h["packages"]) for h in hosts] == [
        (n, [{"name": "openssl", "version": "3.0.13"}]) for n in ("web-1", "web-2")
    ]
    with pytest.raises(GitopsError, match="--package 'open ssl': name one package"):
        cli.execute(["status", "--repo", str(fleet.path), "--package", "open ssl"])


def test_host_pages_list_their_cves_as_the_vulnerabilities_page_does(
    fleet: SoftwareFleet, tmp_path: Path
) -> None:
    out = tmp_path / "site"
    build(fleet, out)
    by_cve = load(out, "vulnerabilities.json")["vulnerabilities"]
    for host in HOST_PACKAGES:
        mine = load(out, f"hosts/{host}.json")["vulnerabilities"]
        assert mine["unknown"] is None
        opened = {f["cve"] for f in mine["findings"] if f["exemption"] is None}
        exempt = {f["cve"] for f in mine["findings"] if f["exemption"] is not None}
        assert opened == {v["cve"] for v in by_cve if host in v["hosts"]}, host
        assert exempt == {v["cve"] for v in by_cve if host in v["exempt_hosts"]}, host
    web1 = load(out, "hosts/web-1.json")["vulnerabilities"]["findings"]
    assert [(f["cve"], f["severity"], f["package"], f["fixed_in"]) for f in web1] == [
        ("CVE-2024-5535", "critical", "openssl", "3.0.15"),
        ("CVE-2024-2398", "high", "curl", "8.7.0"),
    ]
    page = (out / "hosts" / "web-2.html").read_text()
    section = page.split('id="vulnerabilities"')[1].split("</section>")[0]
    assert "1 open, 2 exempt" in section
    assert '<a href="../vulnerabilities.html#CVE-2024-5535">CVE-2024-5535</a>' in section
    assert "until 2099-01-01: no verify=False anywhere" in section  # the host's own
    assert "until 2099-12-31: no untrusted qdisc" in section  # the fleet's
    assert "1 open, 0 exempt" in (out / "hosts" / "kiosk-1.html").read_text()  # hello
    assert "no SBOM from this host yet" in (out / "hosts" / "new-1.html").read_text()
    assert broken_links(out) == []
    # A host exemption added in main: its page is rendered again, the CVE exempt there.
    fleet.hosts["web-1"]["vulnerabilities"] = {
        "exemptions": [{"cve": "CVE-2024-2398", "reason": "patched", "expires": "2099-01-01"}]
    }
    fleet.commit_main("exempt web-1", WHEN)
    build(fleet, out)
    web1 = load(out, "hosts/web-1.json")["vulnerabilities"]["findings"]
    assert [f["exemption"] for f in web1 if f["cve"] == "CVE-2024-2398"] == [
        {"reason": "patched", "expires": "2099-01-01"}
    ]


def test_a_policy_on_old_critical_cves(fleet: SoftwareFleet, tmp_path: Path) -> None:
    fleet.policies["no-old-critical.yaml"] = (
        "name: no-old-critical\ncondition: {fact: vulns.oldest_days.critical, at_most: 30}\n"
    )
    fleet.policies["no-high.yaml"] = (
        "name: no-high\ncondition: {fact: vulns.open.high, equals: 0}\n"
    )
    fleet.hosts["web-2"]["vulnerabilities"]["exemptions"].append(
        {"cve": "CVE-2024-5535", "reason": "not reachable", "expires": "2099-01-01"}
    )
    fleet.commit_main("policies on known vulnerabilities", WHEN)
    out = tmp_path / "site"

    def answers() -> dict[str, dict[str, str]]:
        hosts = load(out, "compliance.json")["hosts"]
        return {h: {p: str(a) for p, a in hosts[h].items()} for h in sorted(hosts)}

    build(fleet, out)
    assert answers() == {
        "kiosk-1": {"no-old-critical": "pass", "no-high": "pass"},  # hello: medium only
        "new-1": {"no-old-critical": "unknown", "no-high": "unknown"},  # never reported
        "web-1": {"no-old-critical": "fail", "no-high": "fail"},  # openssl, curl
        "web-2": {"no-old-critical": "pass", "no-high": "pass"},  # exempt from both
    }
    status = {r.host.name: r.failing for r in fleetstatus.read_status(fleet.path, NOW).rows}
    assert status["web-1"] == ("no-high", "no-old-critical")  # the terminal agrees
    assert status["web-2"] == ()
    fleet.vulnerabilities = None  # no feed: every host's answer is unknown
    fleet.commit_main("no feed", WHEN)
    build(fleet, out)
    assert {a for host in answers().values() for a in host.values()} == {"unknown"}
    assert {r.failing for r in fleetstatus.read_status(fleet.path, NOW).rows} == {()}


def test_the_overview_shows_the_fleets_nixpkgs_spread(fleet: SoftwareFleet, tmp_path: Path) -> None:
    for host, revision, day in (
        ("web-1", "ac62194" * 5 + "a", "2026-11-10T00:00:00Z"),  # 10 days old
        ("web-2", "ac62194" * 5 + "a", "2026-11-10T00:00:00Z"),
        ("kiosk-1", "0123abc" * 5 + "d", "2026-03-01T00:00:00Z"),  # 264 days
    ):
        fleet.send(host, (), WHEN, facts={"nixpkgs_revision": revision, "nixpkgs_date": day})
    out = tmp_path / "site"
    build(fleet, out)
    spread = load(out, "index.json")["nixpkgs"]
    assert spread["by_age"] == {
        "30 days or less": 2,
        "31 to 90 days": 0,
        "91 to 180 days": 0,
        "181 to 365 days": 1,
        "over a year": 0,
        "date unknown": 0,
        "not reported": 1,  # new-1
    }
    assert [(r["revision"][:7], r["hosts"]) for r in spread["revisions"]] == [
        ("ac62194", 2),
        ("0123abc", 1),
    ]
    assert (spread["oldest"], spread["newest"]) == ("2026-03-01T00:00:00Z", "2026-11-10T00:00:00Z")
    page = (out / "index.html").read_text()
    section = page.split('id="nixpkgs"')[1].split("</section>")[0]
    assert "from 2026-03-01 to 2026-11-10" in section
    assert "<tr><td>30 days or less</td><td>2</td></tr>" in section
    assert "<tr><td><code>ac62194ac621</code></td><td>2026-11-10</td><td>2</td></tr>" in section
    # A host that says its revision but not its date, and a day later: buckets move.
    fleet.send("web-2", (), WHEN, facts={"nixpkgs_revision": "ac62194" * 5 + "a"})
    build(fleet, out, NOW + timedelta(days=25))
    spread = load(out, "index.json")["nixpkgs"]
    assert spread["by_age"]["31 to 90 days"] == 1 and spread["by_age"]["date unknown"] == 1


def test_the_inventory_row_carries_the_hosts_hardware(fleet: SoftwareFleet, tmp_path: Path) -> None:
    hardware = {
        "hardware_vendor": "Framework",
        "hardware_model": "Laptop 13",
        "memory_total_bytes": 32 << 30,
        "disk_encryption": "luks",
    }
    fleet.send("web-1", (), WHEN, facts=hardware)
    out = tmp_path / "site"
    build(fleet, out)
    page = (out / "inventory.html").read_text()
    (row,) = [line for line in page.splitlines() if 'href="hosts/web-1.html"' in line]
    assert row.startswith(
        '<tr data-vendor="Framework" data-model="Laptop 13" data-memory="32.0" '
        'data-encryption="luks">'
    )
    assert (
        '<td data-sort="34359738368">Framework Laptop 13, 32.0 GiB, disk encryption luks</td>'
        in row
    )
    (row,) = [line for line in page.splitlines() if 'href="hosts/web-2.html"' in line]
    assert 'data-memory="" data-encryption="unknown"' in row  # it did not say
    assert "unknown, memory unknown, disk encryption unknown</td>" in row
