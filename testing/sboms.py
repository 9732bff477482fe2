"""A fleet whose hosts send SBOMs (for the site's software pages)."""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta
from typing import Any

import yaml
from cryptography.hazmat.primitives.asymmetric import ed25519
from typing_extensions import override

from gitops.inventory import sbom
from gitops.protocol import Report, Result, SystemInfo, reports_ref
from gitops.report_commits import create_report_commit
from gitops.trust import commits
from testing.site_helpers import ROOT
from testing.site_helpers import Fleet as SiteFleet

NVD = ROOT / "tests" / "fixtures" / "nvd"
WHEN = datetime(2026, 11, 20, 9, 0, tzinfo=UTC)
NOW = WHEN + timedelta(hours=2)
HOST_PACKAGES = {
    "web-1": ("openssl-3.0.13", "openssl-3.0.13-bin", "curl-8.6.0", "zlib-1.3.1"),
    "web-2": ("openssl-3.0.13", "python3.12-requests-2.31.0", "linux-6.12.63"),
    "kiosk-1": ("openssl-3.0.15", "curl-8.7.1", "hello-2.12.1", "system-path"),
}


def store(name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()
    alphabet = "0123456789abcdfghijklmnpqrsvwxyz"
    return f"/nix/store/{''.join(alphabet[int(c, 16) * 2] for c in digest[:32])}-{name}"


class SoftwareFleet(SiteFleet):
    vulnerabilities: dict[str, Any] | None = None

    @override
    def fleet_yaml(self) -> str:
        data = yaml.safe_load(super().fleet_yaml())
        if self.vulnerabilities is not None:
            data["vulnerabilities"] = self.vulnerabilities
        return str(yaml.safe_dump(data))

    def send(
        self,
        host: str,
        names: tuple[str, ...],
        when: datetime = WHEN,
        *,
        document: bytes | None = None,
        with_sbom: bool = True,
        key: ed25519.Ed25519PrivateKey | None = None,
        facts: dict[str, Any] | None = None,
    ) -> bytes:
        """A signed report running a system of ``names``, with its SBOM (or ``document``)."""
        system = store(f"nixos-system-{host}-25.05.20260102.ac62194-{'-'.join(names)}")
        report = Report(
            host=host,
            time=when,
            agent_version="0.1.0",
            result=Result.APPLIED,
            reason="test",
            report_id=uuid.uuid4().hex,
            system=SystemInfo(current_system=system, nixos_version="25.05.20260102.ac62194"),
            facts=facts or {},
        )
        text = (
            document
            or sbom.build_sbom(
                host=host,
                system=system,
                nixos_version="25.05.20260102.ac62194",
                packages=sbom.packages_of([store(n) for n in names], system),
                time=when,
            ).encode()
        )
        ref = reports_ref(host)
        oid = create_report_commit(
            self.repo,
            report,
            parent=commits.ref_target(self.repo, ref),
            key=key or self.keys[host],
            sbom=text if with_sbom else None,
        )
        self.repo.references.create(ref, oid, force=True)
        return text
