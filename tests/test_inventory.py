"""Software inventory: names and versions as Nix reads them (checked against real Nix),
SBOMs of real closures, the agent committing one per running system, ``gitops sbom`` and
``gitops vulns`` through the real CLI, and vulnerability matching against a small NVD
CVE JSON 2.0 feed (tests/fixtures/nvd/)."""

from __future__ import annotations

import gzip
import hashlib
import json
import subprocess
import uuid
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pygit2
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from typing_extensions import override

from gitops.agent.cycle import Cycle
from gitops.agent.mirror import Mirror
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet, git
from gitops.errors import GitopsError
from gitops.fleet.model import CveExemption
from gitops.inventory import nixnames, sbom, vulns
from gitops.protocol import SBOM_FILE, Report, Result, SystemInfo, reports_ref
from gitops.report_commits import create_report_commit, read_report_commit, walk_reports
from gitops.system import nix
from gitops.trust import commits
from testing.closure import make_system
from testing.helpers import gitops, published_demo
from testing.site_helpers import Fleet as SiteFleet

FIXTURES = Path(__file__).parent / "fixtures"
SYSTEM_NAME = "nixos-system-web-1-25.05.20260102.ac62194"
PACKAGES = (
    "zlib-1.3.1",
    "openssl-3.0.13",
    "openssl-3.0.13-bin",
    "curl-8.6.0",
    "python3.12-requests-2.31.0",
    "system-path",
    "unit-script-nixos-activation-start",
    "linux-6.12.63-modules-shrunk",
    "hello-2.12.1-man",
)


def nix_eval(expression: str) -> object:
    result = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", "--expr", expression],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(result.stdout)


# -- names and versions, the way Nix reads them -------------------------------------------

NAMES = [
    "openssl-3.0.13",
    "openssl-3.0.13-bin",
    "system-path",
    "python3.12-requests-2.31.0",
    "perl5.38.2-Net-SSLeay-1.92",
    "unit-script-nixos-activation-start",
    "linux-6.12.63-modules-shrunk",
    "nixos-system-web-1-25.05.20260102.ac62194",
    "xorg-server-21.1.13",
    "glibc-2.39-52",
    "hello",
    "foo-",
    "a-b-c",
    "firefox-unwrapped-128.0.3",
    "gcc-13.3.0-lib",
]

VERSIONS = [
    ("1.0", "2.3"),
    ("2.1", "2.3"),
    ("2.3", "2.3"),
    ("2.5", "2.3"),
    ("3.1", "2.3"),
    ("2.3.1", "2.3"),
    ("2.3.1", "2.3a"),
    ("2.3pre1", "2.3"),
    ("2.3pre3", "2.3pre12"),
    ("2.3a", "2.3c"),
    ("2.3pre1", "2.3c"),
    ("2.3pre1", "2.3q"),
    ("3.0.13", "3.0.9"),
    ("6.12.63", "6.12.7"),
    ("1.2.3-rc1", "1.2.3"),
    ("2024-01-02", "2023-12-31"),
    ("unstable-2024-01-01", "0.1"),
    ("99999999999", "1"),
    ("1.0", "1.0.0"),
    ("", "1"),
]


def test_parse_drv_name_is_nixs() -> None:
    expected = nix_eval(
        "map builtins.parseDrvName [ " + " ".join(json.dumps(n) for n in NAMES) + " ]"
    )
    assert isinstance(expected, list)
    assert [
        {"name": name, "version": version} for name, version in map(nixnames.parse_drv_name, NAMES)
    ] == expected


def test_compare_versions_is_nixs() -> None:
    expected = nix_eval(
        "map (p: builtins.compareVersions (builtins.elemAt p 0) (builtins.elemAt p 1)) "
        + json.dumps([list(pair) for pair in VERSIONS]).replace(",", " ")
    )
    assert [nixnames.compare_versions(a, b) for a, b in VERSIONS] == expected


def test_output_names_are_stripped_only_when_a_version_remains() -> None:
    def name(store_name: str) -> tuple[str, str, str]:
        parsed = nixnames.package_name(f"/nix/store/{'a' * 32}-{store_name}")
        return parsed.name, parsed.version, parsed.output

    assert name("openssl-3.0.13-bin") == ("openssl", "3.0.13", "bin")
    assert name("gcc-13.3.0-lib") == ("gcc", "13.3.0", "lib")
    assert name("system-path") == ("system-path", "", "")
    assert name("linux-6.12.63-modules-shrunk") == ("linux", "6.12.63-modules", "shrunk")
    assert name("glibc-2.39-52") == ("glibc", "2.39-52", "")
    with pytest.raises(ValueError, match="not a Nix store path"):
        nixnames.package_name("/usr/lib/libssl.so")


# -- SBOMs of real closures ----------------------------------------------------------------


@pytest.fixture
def system(tmp_path: Path) -> str:
    path, _ = make_system(tmp_path / "closure", PACKAGES, SYSTEM_NAME)
    return path


def test_sbom_of_a_real_closure(system: str) -> None:
    closure = nix.closure(system)
    assert system in closure and len(closure) == len(PACKAGES) + 1
    text = sbom.build_sbom(
        host="web-1",
        system=system,
        nixos_version="25.05.20260102.ac62194",
        packages=sbom.packages_of(closure, system),
        time=datetime(2026, 11, 30, tzinfo=UTC),
    )
    document = json.loads(text)
    assert document["bomFormat"] == "CycloneDX" and document["specVersion"] == "1.6"
    assert document["metadata"]["component"]["bom-ref"] == system
    assert document["metadata"]["timestamp"].startswith("2026-11-30T00:00:00")
    by_path = {c["bom-ref"]: c for c in document["components"]}
    assert set(by_path) == set(closure) - {system}
    labels = sorted((c["name"], c.get("version", "")) for c in document["components"])
    assert ("openssl", "3.0.13") in labels and labels.count(("openssl", "3.0.13")) == 2
    assert ("python3.12-requests", "2.31.0") in labels
    assert ("system-path", "") in labels
    openssl = next(c for c in document["components"] if c["bom-ref"].endswith("openssl-3.0.13"))
    assert openssl["purl"] == "pkg:nix/openssl@3.0.13"
    assert openssl["type"] == "library"
    # Nix knows no licence or source for a store path: the SBOM does not invent one.
    assert all("licenses" not in c and "externalReferences" not in c for c in by_path.values())
    read = sbom.read_sbom(text)
    assert read.host == "web-1" and read.system == system
    assert {p.store_path for p in read.packages} == set(closure) - {system}
    # The same system gives the same bytes (so an unchanged closure is never re-sent).
    again = sbom.build_sbom(
        host="web-1",
        system=system,
        nixos_version="25.05.20260102.ac62194",
        packages=sbom.packages_of(reversed(closure), system),
        time=datetime(2026, 11, 30, tzinfo=UTC),
    )
    assert again == text


def test_licences_and_sources_are_written_when_the_caller_knows_them() -> None:
    package = sbom.Package(
        f"/nix/store/{'b' * 32}-curl-8.6.0",
        "curl",
        "8.6.0",
        licenses=("curl",),
        source_url="https://curl.se/download/curl-8.6.0.tar.xz",
    )
    text = sbom.build_sbom(
        host="web-1",
        system=f"/nix/store/{'c' * 32}-{SYSTEM_NAME}",
        nixos_version="",
        packages=[package],
        time=datetime(2026, 11, 30, tzinfo=UTC),
    )
    assert sbom.read_sbom(text).packages == (package,)


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ("{", "not JSON"),
        ("[]", "not a CycloneDX document"),
        ('{"bomFormat": "CycloneDX"}', "metadata is not an object"),
        (
            '{"bomFormat": "CycloneDX", "metadata": {"component": {"name": "x", "bom-ref": "/s"}},'
            ' "components": [{"name": 3}]}',
            "'bom-ref' is missing",
        ),
    ],
)
def test_a_malformed_sbom_says_what_is_wrong(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        sbom.read_sbom(text)


# -- the agent commits one SBOM per running system ---------------------------------------------


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", {"alpha": ["workstation"]})


def sboms_on_the_server(demo: DemoFleet, host: str) -> list[bytes | None]:
    """The SBOM (or None) of each report on the server, oldest first."""
    repo = pygit2.Repository(str(demo.server))
    head = commits.ref_target(repo, reports_ref(host))
    assert head is not None
    return [read_report_commit(repo, oid).sbom for oid in walk_reports(repo, head)][::-1]


def file_names(repo: pygit2.Repository, oid: pygit2.Oid) -> list[str]:
    commit = repo.get(oid)
    assert isinstance(commit, pygit2.Commit)
    return sorted(str(entry.name) for entry in commit.tree)


def test_the_agent_commits_an_sbom_only_when_the_running_system_changes(
    demo: DemoFleet,
) -> None:
    config = demo.agent_config("alpha")
    assert Cycle(config, sleep=lambda _: None).run().result == Result.APPLIED
    assert Cycle(config, sleep=lambda _: None, force_report=True).run().result == Result.UNCHANGED
    first, heartbeat = sboms_on_the_server(demo, "alpha")
    assert first is not None and heartbeat is None
    current = (demo.machines / "alpha" / "run" / "current-system").resolve()
    document = sbom.read_sbom(first)
    assert document.system == str(current)
    assert {p.store_path for p in document.packages} == set(nix.closure(current)) - {str(current)}
    # status.json is unchanged beside it (schema 1); the heartbeat holds status.json only.
    repo = pygit2.Repository(str(demo.server))
    head = commits.ref_target(repo, reports_ref("alpha"))
    assert head is not None
    newest, oldest = list(walk_reports(repo, head))
    assert file_names(repo, oldest) == [SBOM_FILE, "status.json"]
    assert file_names(repo, newest) == ["status.json"]
    status = read_report_commit(repo, oldest).status
    assert status is not None and Report.from_json(status).system.current_system == str(current)
    # A new system (a new deploy) gets a new SBOM.
    demo.merge_change(
        {
            "hosts/alpha/configuration.nix": standin.host_configuration(
                ["workstation"], {"kernel": '"6.6.2"'}
            )
        },
        "alpha: new kernel",
    )
    demo.publish()
    assert Cycle(config, sleep=lambda _: None).run().result == Result.APPLIED
    *_, latest = sboms_on_the_server(demo, "alpha")
    assert latest is not None and sbom.read_sbom(latest).system != document.system


def test_a_rebased_report_keeps_its_sbom(demo: DemoFleet, tmp_path: Path) -> None:
    # Someone else moved reports/alpha first: the agent's push is refused, it rebases.
    other = Mirror(tmp_path / "other-state", "alpha")
    elsewhere = Report(
        host="alpha",
        time=datetime.now(UTC),
        agent_version="0",
        result=Result.UNCHANGED,
        reason="written elsewhere",
        report_id="elsewhere-1",
    )
    oid = create_report_commit(other.repo, elsewhere, parent=None, key=demo.host_keys["alpha"])
    git("push", "-q", demo.server, f"{oid}:{reports_ref('alpha')}", cwd=other.path)
    result = Cycle(demo.agent_config("alpha"), sleep=lambda _: None).run()
    assert result.push is not None and result.push.pushed, result.push
    assert sboms_on_the_server(demo, "alpha")[0] is None  # the one written elsewhere
    rebased = sboms_on_the_server(demo, "alpha")[1]
    assert rebased is not None and sbom.read_sbom(rebased).host == "alpha"


# -- gitops sbom and gitops vulns, through the real CLI -------------------------------------

NVD = FIXTURES / "nvd"
WHEN = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)


def store(name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    return f"/nix/store/{''.join(alphabet[int(c, 16) * 2] for c in digest[:32])}-{name}"


HOST_PACKAGES = {
    "web-1": ("openssl-3.0.13", "openssl-3.0.13-bin", "curl-8.6.0", "zlib-1.3.1"),
    "web-2": ("openssl-3.0.13", "python3.12-requests-2.31.0", "linux-6.12.63"),
    "kiosk-1": ("openssl-3.0.15", "curl-8.7.1", "hello-2.12.1", "system-path"),
}


class VulnFleet(SiteFleet):
    """A test fleet whose fleet.yaml may have a ``vulnerabilities`` section."""

    vulnerabilities: dict[str, Any] | None = None

    @classmethod
    def bare(cls, path: Path) -> VulnFleet:
        return cls(path, pygit2.init_repository(str(path), bare=True))

    @override
    def fleet_yaml(self) -> str:
        data = yaml.safe_load(super().fleet_yaml())
        if self.vulnerabilities is not None:
            data["vulnerabilities"] = self.vulnerabilities
        return str(yaml.safe_dump(data))


def report_with_sbom(
    fleet: SiteFleet,
    host: str,
    names: tuple[str, ...],
    *,
    key: ed25519.Ed25519PrivateKey | None = None,
    with_sbom: bool = True,
) -> str:
    system = store(f"nixos-system-{host}-25.05.20260102.ac62194-{len(names)}")
    report = Report(
        host=host,
        time=WHEN,
        agent_version="0.1.0",
        result=Result.APPLIED,
        reason="test",
        report_id=uuid.uuid4().hex,
        system=SystemInfo(current_system=system, nixos_version="25.05.20260102.ac62194"),
    )
    document = sbom.build_sbom(
        host=host,
        system=system,
        nixos_version="25.05.20260102.ac62194",
        packages=sbom.packages_of([store(n) for n in names], system),
        time=WHEN,
    )
    ref = reports_ref(host)
    oid = create_report_commit(
        fleet.repo,
        report,
        parent=commits.ref_target(fleet.repo, ref),
        key=key or fleet.keys[host],
        sbom=document.encode() if with_sbom else None,
    )
    fleet.repo.references.create(ref, oid, force=True)
    return document


@pytest.fixture
def fleet(tmp_path: Path) -> VulnFleet:
    fleet = VulnFleet.bare(tmp_path / "fleet.git")
    for name in HOST_PACKAGES:
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
            {
                "cve": "CVE-2025-21700",
                "reason": "no untrusted qdisc users",
                "expires": "2099-12-31",
            },
        ],
    }
    fleet.commit_main("hosts", WHEN)
    for name, packages in HOST_PACKAGES.items():
        report_with_sbom(fleet, name, packages)
    return fleet


def test_gitops_sbom_prints_the_hosts_newest_sbom(fleet: VulnFleet) -> None:
    newer = report_with_sbom(fleet, "web-1", (*HOST_PACKAGES["web-1"], "git-2.47.0"))
    result = gitops("sbom", "web-1", "--repo", fleet.path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == newer  # byte for byte what the host wrote
    assert sbom.read_sbom(result.stdout).host == "web-1"


def test_an_sbom_signed_by_another_key_is_never_shown(fleet: VulnFleet) -> None:
    before = gitops("sbom", "web-1", "--repo", fleet.path).stdout
    intruder = ed25519.Ed25519PrivateKey.generate()
    report_with_sbom(fleet, "web-1", ("backdoor-1.0", "openssl-3.0.15"), key=intruder)
    result = gitops("sbom", "web-1", "--repo", fleet.path)
    assert result.returncode == 0, result.stderr
    assert result.stdout == before
    assert "backdoor" not in result.stdout
    assert "passed over" in result.stderr and "Traceback" not in result.stderr
    which = gitops("sbom", "--which", "backdoor", "--repo", fleet.path, "--json")
    assert json.loads(which.stdout)["hosts"] == []


def test_a_stale_sbom_is_shown_with_a_warning(fleet: VulnFleet) -> None:
    report_with_sbom(fleet, "kiosk-1", ("hello-2.12.2",), with_sbom=False)
    result = gitops("sbom", "kiosk-1", "--repo", fleet.path)
    assert result.returncode == 0
    assert "newest report runs" in result.stderr


def test_which_hosts_run_a_package(fleet: VulnFleet) -> None:
    result = gitops("sbom", "--which", "openssl@3.0.13", "--repo", fleet.path, "--json")
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert [(h["host"], h["version"]) for h in data["hosts"]] == [
        ("web-1", "3.0.13"),  # once, although two of its store paths are openssl 3.0.13
        ("web-2", "3.0.13"),
    ]
    assert data["hosts_without_sbom"] == []
    every = gitops("sbom", "--which", "openssl", "--repo", fleet.path)
    assert [line.split("\t")[:2] for line in every.stdout.splitlines()] == [
        ["kiosk-1", "openssl 3.0.15"],
        ["web-1", "openssl 3.0.13"],
        ["web-2", "openssl 3.0.13"],
    ]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("sbom", "nope"), "host 'nope' is not in main's hosts/"),
        (("vulns", "--host", "nope"), "host 'nope' is not in main's hosts/"),
        (("vulns", "--feed", "/nonexistent/nvd"), "/nonexistent/nvd: no such vulnerability feed"),
    ],
)
def test_bad_input_is_one_line_and_exit_1(
    fleet: VulnFleet, args: tuple[str, ...], message: str
) -> None:
    result = gitops(*args, "--repo", fleet.path)
    assert result.returncode == 1
    assert result.stderr.startswith("gitops: error: ") and message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_a_host_without_an_sbom_says_how_to_get_one(fleet: VulnFleet) -> None:
    fleet.add_host("new-1")
    fleet.commit_main("new host", WHEN)
    result = gitops("sbom", "new-1", "--repo", fleet.path)
    assert result.returncode == 1
    assert "no verified sbom.cdx.json on reports/new-1" in result.stderr


def test_an_old_format_feed_is_refused_with_a_hint(fleet: VulnFleet, tmp_path: Path) -> None:
    old = tmp_path / "nvdcve-1.1-2023.json.gz"
    old.write_bytes(gzip.compress(b'{"CVE_Items": []}'))
    result = gitops("vulns", "--feed", old, "--repo", fleet.path)
    assert result.returncode == 1
    assert "not the retired 1.1 ones" in result.stderr


def test_gitops_vulns_matches_the_fleet_against_the_feed(fleet: VulnFleet) -> None:
    result = gitops("vulns", "--repo", fleet.path, "--json")  # the feed from fleet.yaml
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["cves_in_feed"] == 7  # the rejected entry is not one
    assert data["hosts_scanned"] == ["kiosk-1", "web-1", "web-2"]
    found = {v["cve"]: v for v in data["vulnerabilities"]}
    assert set(found) == {
        "CVE-2024-5535",  # openssl 3.0.13 < 3.0.15
        "CVE-2024-2398",  # curl 8.6.0 < 8.7.0 (the fleet's exemption expired)
        "CVE-2024-35195",  # python3.12-requests 2.31.0 is requests < 2.32.0
        "CVE-2025-21700",  # linux 6.12.63 (the product is linux_kernel)
        "CVE-2009-9999",  # hello 2.12.1 exactly
    }
    assert "CVE-2023-45853" not in found  # zlib 1.3.1 is past "through 1.3"
    openssl = found["CVE-2024-5535"]
    assert (openssl["severity"], openssl["score"]) == ("critical", 9.1)
    assert openssl["hosts"] == ["web-1", "web-2"]  # not kiosk-1's 3.0.15
    assert openssl["packages"] == ["openssl 3.0.13"]
    assert openssl["fixed_in"] == ["3.0.15"]  # the range 3.0.13 is in (not 3.1's)
    assert found["CVE-2024-2398"]["hosts"] == ["web-1"]
    assert found["CVE-2024-35195"]["hosts"] == []
    assert found["CVE-2024-35195"]["exempt_hosts"] == {
        "web-2": {"reason": "no verify=False anywhere", "expires": "2099-01-01"}
    }
    assert found["CVE-2025-21700"]["exempt_hosts"] == {
        "web-2": {"reason": "no untrusted qdisc users", "expires": "2099-12-31"}
    }
    assert found["CVE-2009-9999"]["severity"] == "medium"  # from CVSS v2
    assert next(iter(found)) == "CVE-2024-5535"  # worst first


def test_gitops_vulns_for_one_host_in_text(fleet: VulnFleet) -> None:
    result = gitops("vulns", "--repo", fleet.path, "--host", "kiosk-1", "--feed", NVD)
    assert result.returncode == 0, result.stderr
    assert result.stdout.splitlines() == ["CVE-2009-9999\tmedium 5.0\thello 2.12.1\thosts: kiosk-1"]
    assert "matching is by name and version" in result.stderr


# -- matching rules --------------------------------------------------------------------------


def test_version_ranges_compare_as_nix_does() -> None:
    span = vulns.VersionRange(start_including="3.0.0", end_excluding="3.0.15")
    assert span.contains("3.0.13") and span.contains("3.0.0") and span.contains("3.0.9")
    assert not span.contains("3.0.15") and not span.contains("2.9.9") and not span.contains("3.1")
    assert span.fixed_in == "3.0.15"
    through = vulns.VersionRange(end_including="1.3")
    assert through.contains("1.3") and not through.contains("1.3.1") and through.fixed_in is None
    after = vulns.VersionRange(start_excluding="2.0")
    assert not after.contains("2.0") and after.contains("2.0.1")
    assert vulns.VersionRange(exact="2.12.1").contains("2.12.1")
    assert not vulns.VersionRange(exact="2.12.1").contains("2.12")
    assert vulns.VersionRange().contains("0.1")  # any version, no range: every version


def test_names_match_cpe_products() -> None:
    assert vulns.package_keys("python3.12-requests") == {"python3.12-requests", "requests"}
    assert vulns.package_keys("perl5.38.2-Net-SSLeay") == {"perl5.38.2-net-ssleay", "net-ssleay"}
    assert vulns.package_keys("xorg-server") == {"xorg-server"}
    assert vulns.normalise("linux_kernel") == "linux"
    exemption = CveExemption("CVE-2024-5535", "fleet", date(2099, 1, 1))
    mine = CveExemption("CVE-2024-5535", "host", date(2099, 1, 1))
    assert vulns.exemptions_for([exemption], [mine])["CVE-2024-5535"] is mine


def test_fleet_yaml_cve_exemptions_are_checked(tmp_path: Path) -> None:
    fleet = VulnFleet.bare(tmp_path / "f.git")
    fleet.add_host("web-1")
    fleet.vulnerabilities = {
        "exemptions": [{"cve": "2024-5535", "reason": "x", "expires": "2099-01-01"}]
    }
    fleet.commit_main("bad", WHEN)
    result = gitops("sbom", "web-1", "--repo", fleet.path)
    assert result.returncode == 1
    assert "vulnerabilities.exemptions[0].cve: '2024-5535' is not a CVE id" in result.stderr


def test_a_gzip_bomb_feed_is_refused_before_it_fills_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A feed that unpacks beyond the bound is one clear error, not an out-of-memory kill;
    a truncated one too; a good one still reads."""
    good = gzip.compress(b'{"vulnerabilities": []}')
    assert vulns._gunzip(good) == b'{"vulnerabilities": []}'
    with pytest.raises(ValueError, match="unpacks to more than"):
        vulns._gunzip(gzip.compress(b"0" * 5 * 1024**2), limit=1024**2)
    with pytest.raises(EOFError):
        vulns._gunzip(good[:-12])
    monkeypatch.setattr(vulns, "MAX_FEED_BYTES", 1024**2)
    bomb = tmp_path / "nvdcve-2.0-2099.json.gz"
    bomb.write_bytes(gzip.compress(b" " * (3 * 1024**2)))
    with pytest.raises(GitopsError, match=r"not a readable NVD CVE JSON feed \(unpacks to more"):
        list(vulns._read_feed(bomb))
