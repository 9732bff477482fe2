"""A host's software bill of materials: its running system's closure as CycloneDX JSON.

Every store path of the closure (``nix-store --query --requisites <system>``) is one
component: its name and version as Nix parses them (:mod:`.nixnames`), ``bom-ref`` the
store path (unique, and what an admin can look up with ``nix path-info``), a ``pkg:nix``
package URL. The system itself is the BOM's subject (``metadata.component``).

What the store does not know, the SBOM cannot say: a licence is ``meta.license`` in
nixpkgs, which only an evaluation of nixpkgs sees, and neither the store nor a
substituted system keeps it. Components carry a licence or source URL only when the
caller has them (``Package.licenses``, ``Package.source_url``); the agent has not.

Written with cyclonedx-python-lib (CycloneDX 1.6); read back with :func:`read_sbom`, a
small strict reader of what we write (one bad file refuses itself, nothing else).
"""

from __future__ import annotations

import uuid
import warnings
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

from typing_extensions import override

from gitops import __version__
from gitops.inventory.nixnames import package_name
from gitops.protocol import SBOM_FILE, parse_json

if TYPE_CHECKING:
    from cyclonedx.model.component import Component

__all__ = ["SBOM_FILE", "Package", "Sbom", "build_sbom", "packages_of", "read_sbom"]

SPEC_VERSION: Final = "1.6"
PURL_TYPE: Final = "nix"
MAX_COMPONENTS: Final = 50_000  # a reader refuses more: no closure is that large
MAX_SBOM_BYTES: Final = 32 << 20


@dataclass(frozen=True)
class Package:
    """One store path of a closure, as a package."""

    store_path: str
    name: str
    version: str  # "" when the store path name has none
    licenses: tuple[str, ...] = ()  # SPDX expressions, when known
    source_url: str | None = None

    @classmethod
    def from_store_path(cls, path: str) -> Package:
        parsed = package_name(path)
        return cls(path, parsed.name, parsed.version)

    @property
    def label(self) -> str:
        return f"{self.name} {self.version}" if self.version else self.name


@dataclass(frozen=True)
class Sbom:
    """What :func:`read_sbom` returns: the subject system and its packages."""

    host: str
    system: str  # the system's store path
    nixos_version: str
    time: str
    packages: tuple[Package, ...]


def parse_packages(text: str) -> list[tuple[str, str]]:
    """A package set's ``name<TAB>version`` lines (sitegen/software.py ``packages_text``)."""
    pairs = []
    for line in text.splitlines():
        name, _, version = line.partition("\t")
        pairs.append((name, version))
    return pairs


@dataclass(frozen=True)
class PackageQuery:
    """ "Which hosts run package X (version Y)?": ``NAME`` in any version, or
    ``NAME@VERSION`` exactly; letter case does not count. The site's software page reads
    its filter box the same way for ``name@`` and ``name@version`` (site/assets/software.js),
    and a bare word there also narrows to names that contain it, as one types."""

    name: str
    version: str | None  # None: any version

    @classmethod
    def parse(cls, text: str) -> PackageQuery:
        name, _, version = text.strip().lower().partition("@")
        if not name or any(c.isspace() for c in name + version):
            raise ValueError(f"{text[:80]!r}: name one package, as NAME or NAME@VERSION")
        return cls(name, version or None)

    @override
    def __str__(self) -> str:
        return self.name + (f"@{self.version}" if self.version is not None else "")

    def matches(self, name: str, version: str) -> bool:
        return name.lower() == self.name and (
            self.version is None or version.lower() == self.version
        )


def packages_of(closure: Iterable[str], system: str) -> list[Package]:
    """The closure's store paths (the system itself excluded) as packages, in path order."""
    return [Package.from_store_path(path) for path in sorted(set(closure)) if path != system]


def build_sbom(
    *,
    host: str,
    system: str,
    nixos_version: str,
    packages: Iterable[Package],
    time: datetime,
) -> str:
    """The CycloneDX 1.6 JSON text for ``system`` (a store path) and its ``packages``.

    The same inputs give the same bytes: the serial number is derived from the system's
    store path, the timestamp is ``time``."""
    # CycloneDX is loaded here, by the agent that writes SBOMs: the site and the server
    # only read them (plain JSON), and its import costs a tenth of their start-up.
    from cyclonedx.model.bom import Bom
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.output.json import JsonV1Dot6

    bom = Bom(serial_number=uuid.uuid5(uuid.NAMESPACE_URL, f"nix:{system}"))
    bom.metadata.timestamp = time
    bom.metadata.component = Component(
        type=ComponentType.OPERATING_SYSTEM,
        name=host,
        version=nixos_version or None,
        bom_ref=system,
        description="NixOS system",
    )
    bom.metadata.tools.components.add(
        Component(type=ComponentType.APPLICATION, name="nixos-gitops", version=__version__)
    )
    for package in packages:
        bom.components.add(_component(package))
    # The closure's reference graph is left out (it would triple the size): "dependencies"
    # absent means unknown. The library's Bom.validate (deprecated there) would add an
    # empty entry per component, i.e. claim that no package depends on anything, and
    # finds each with a linear search: 20 s for 3,000 components. It is skipped.
    setattr(bom, "validate", _valid)  # noqa: B010 - mypy refuses assigning to a method
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "the subject has no dependencies"
        return JsonV1Dot6(bom).output_as_string(indent=None) + "\n"


def _valid() -> bool:
    return True


def _component(package: Package) -> Component:
    from cyclonedx.model import ExternalReference, ExternalReferenceType, XsUri
    from cyclonedx.model.component import Component, ComponentType
    from cyclonedx.model.license import LicenseExpression
    from packageurl import PackageURL

    component = Component(
        type=ComponentType.LIBRARY if package.version else ComponentType.FILE,
        name=package.name,
        version=package.version or None,
        bom_ref=package.store_path,
        purl=PackageURL(type=PURL_TYPE, name=package.name, version=package.version or None),
    )
    for expression in package.licenses:
        component.licenses.add(LicenseExpression(expression))
    if package.source_url:
        component.external_references.add(
            ExternalReference(
                type=ExternalReferenceType.DISTRIBUTION, url=XsUri(package.source_url)
            )
        )
    return component


def read_sbom(text: bytes | str) -> Sbom:
    """Parse an SBOM this module wrote; ValueError says what is wrong."""
    if len(text) > MAX_SBOM_BYTES:
        raise ValueError(f"SBOM larger than {MAX_SBOM_BYTES >> 20} MiB")
    try:
        data = parse_json(text)  # bounded: a host wrote it (nesting, NaN, bad UTF-8)
    except ValueError as err:
        raise ValueError(f"SBOM is {err}") from err
    if not isinstance(data, dict) or data.get("bomFormat") != "CycloneDX":
        raise ValueError("not a CycloneDX document")
    metadata = _mapping(data.get("metadata"), "metadata")
    subject = _mapping(metadata.get("component"), "metadata.component")
    components = data.get("components", [])
    if not isinstance(components, list) or len(components) > MAX_COMPONENTS:
        raise ValueError(f"components must be a list of at most {MAX_COMPONENTS}")
    return Sbom(
        host=_string(subject, "name"),
        system=_string(subject, "bom-ref"),
        nixos_version=_string(subject, "version", ""),
        time=_string(metadata, "timestamp", ""),
        packages=tuple(_package(_mapping(c, "component")) for c in components),
    )


def _package(data: dict[str, Any]) -> Package:
    licenses = tuple(
        str(entry["expression"])
        for entry in data.get("licenses") or []
        if isinstance(entry, dict) and "expression" in entry
    )
    sources = [
        str(ref["url"])
        for ref in data.get("externalReferences") or []
        if isinstance(ref, dict) and ref.get("type") == "distribution" and "url" in ref
    ]
    return Package(
        store_path=_string(data, "bom-ref"),
        name=_string(data, "name"),
        version=_string(data, "version", ""),
        licenses=licenses,
        source_url=sources[0] if sources else None,
    )


def _mapping(value: object, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise ValueError(f"SBOM {where} is not an object")
    return value


def _string(data: dict[str, Any], key: str, default: str | None = None) -> str:
    value = data.get(key, default)
    if not isinstance(value, str):
        raise ValueError(f"SBOM field {key!r} is missing or not a string")
    return value
