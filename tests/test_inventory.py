"""Software inventory: names and versions as Nix reads them (checked against real Nix),
SBOMs of real closures, the agent committing one per running system, ``gitops sbom`` and
``gitops vulns`` through the real CLI, and vulnerability matching against a small NVD
CVE JSON 2.0 feed (tests/fixtures/nvd/)."""

from __future__ import annotations

import json
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest

from gitops.agent.cycle import Cycle
from gitops.agent.mirror import Mirror
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet, git
from gitops.inventory import nixnames, sbom
from gitops.protocol import SBOM_FILE, Report, Result, reports_ref
from gitops.report_commits import create_report_commit, read_report_commit, walk_reports
from gitops.system import nix
from gitops.trust import commits
from testing.closure import make_system
from testing.helpers import published_demo

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
    assert Cycle(config, health_sleep=False).run().result == Result.APPLIED
    assert Cycle(config, health_sleep=False, force_report=True).run().result == Result.UNCHANGED
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
    assert Cycle(config, health_sleep=False).run().result == Result.APPLIED
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
    result = Cycle(demo.agent_config("alpha"), health_sleep=False).run()
    assert result.push is not None and result.push.pushed, result.push
    assert sboms_on_the_server(demo, "alpha")[0] is None  # the one written elsewhere
    rebased = sboms_on_the_server(demo, "alpha")[1]
    assert rebased is not None and sbom.read_sbom(rebased).host == "alpha"
