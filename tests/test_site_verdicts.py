"""Signature verdicts are checked once per commit, ever: they outlive the rest of the
site cache (a new gitops version, new templates), not a change of key or of the checking
code."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.sitegen import build as site_build
from gitops.sitegen import resources, verdicts
from gitops.sitegen.cache import cache_dir_for
from gitops.trust.allowed_signers import AllowedSigner, AllowedSigners
from gitops.trust.sshsig import PublicKey
from testing.site_helpers import NOW, Fleet, standard_fleet


def build(fleet: Fleet, out: Path, **kwargs: Any) -> site_build.BuildStats:
    return site_build.build(fleet.path, out, now=NOW, workers=1, **kwargs)


def load(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text())


def upgrade(monkeypatch: pytest.MonkeyPatch, version: str) -> None:
    """What a new gitops version does to the cache: every row and page is invalid."""
    monkeypatch.setattr(resources, "code_id", lambda: version)


def test_a_new_version_rebuilds_everything_but_checks_no_signature_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    first = build(fleet, out)
    assert first.verified_now > 13
    upgrade(monkeypatch, "next-version")
    again = build(fleet, out)
    assert (again.hosts_read, again.pages_rendered) == (13, 13)  # everything read again ...
    assert again.verified_now == 0  # ... and no signature checked twice
    fresh = tmp_path / "fresh"
    build(fleet, fresh, use_cache=False)
    for name in ("inventory.json", "audit.json", "hosts/forged.json", "hosts/failed.json"):
        assert load(out, name) == load(fresh, name), name
    # A new report after the upgrade: only its commit is checked.
    fleet.report("pending", NOW - timedelta(minutes=5))
    upgrade(monkeypatch, "third-version")
    third = build(fleet, out)
    assert third.verified_now == 1


def test_a_new_host_key_checks_that_hosts_commits_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = Fleet.create(tmp_path / "fleet.git")
    fleet.add_host("web")
    fleet.commit_main("Import", NOW - timedelta(days=1))
    fleet.publish(NOW - timedelta(days=1))
    fleet.report("web", NOW - timedelta(hours=1))
    out = tmp_path / "out"
    build(fleet, out)
    assert load(out, "inventory.json")["hosts"][0]["state"] == "up to date"
    fleet.add_host("web")  # a new key: the stored "verified" is not this key's verdict
    fleet.commit_main("Re-key web", NOW - timedelta(minutes=30))
    upgrade(monkeypatch, "next-version")
    stats = build(fleet, out)
    assert stats.verified_now == 1  # the report again; the deploy commits' publishers kept
    assert load(out, "inventory.json")["hosts"][0]["state"] == "unverified"


def test_new_checking_code_empties_the_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fleet = standard_fleet(tmp_path / "fleet.git")
    out = tmp_path / "out"
    first = build(fleet, out)
    upgrade(monkeypatch, "next-version")
    monkeypatch.setattr(verdicts, "VERIFIER_ID", "a-fixed-verifier")
    again = build(fleet, out)
    assert again.verified_now == first.verified_now
    assert (cache_dir_for(out) / verdicts.FILE).is_file()


def test_only_timeless_trust_lists_are_stored() -> None:
    key = PublicKey.from_crypto(ed25519.Ed25519PrivateKey.generate().public_key())
    plain = AllowedSigners((AllowedSigner("web", key, namespaces="git"),))
    bounded = AllowedSigners(
        (AllowedSigner("web", key, namespaces="git", valid_before=NOW + timedelta(days=1)),)
    )
    authority = AllowedSigners((AllowedSigner("*", key, cert_authority=True),))
    assert verdicts.storable(plain)
    assert not verdicts.storable(bounded)
    assert not verdicts.storable(authority)
    assert verdicts.trust_key(plain) != verdicts.trust_key(bounded)
