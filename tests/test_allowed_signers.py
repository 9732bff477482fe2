"""OpenSSH allowed-signers: parsing, pattern lists, validity, certificates — checked
against ssh-keygen's own decisions where it can decide."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.errors import GitopsError
from gitops.trust import sshsig
from gitops.trust.allowed_signers import AllowedSigners, match_pattern_list, parse_line, parse_time
from gitops.trust.sshsig import PublicKey, SignatureError
from testing.helpers import public_line, write_key

MSG = b"payload\n"
NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def test_parses_principals_options_and_comments() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    text = (
        "# publishers\n\n"
        f'ci@example.org,*@admins.example.org namespaces="git,file",valid-after="20260101Z",'
        f'valid-before="20270101120000Z" {public_line(key)} a comment\n'
        f'"quoted principal" {public_line(key)}\n'
    )
    signers = AllowedSigners.parse(text)
    first, second = signers.entries
    assert first.principals == "ci@example.org,*@admins.example.org"
    assert first.namespaces == "git,file"
    assert first.valid_after == datetime(2026, 1, 1, tzinfo=UTC)
    assert first.valid_before == datetime(2027, 1, 1, 12, tzinfo=UTC)
    assert first.line_number == 3
    assert second.principals == "quoted principal"
    # What we write, we read back identically.
    assert AllowedSigners.parse(signers.text()).entries[0].key == first.key


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("ci@example.org", "expected"),
        ("ci@example.org bogus=1 ssh-ed25519 AAAA", "unknown option"),
        ('ci@example.org valid-after="2026" ssh-ed25519 AAAA', "bad time"),
        ("ci@example.org ssh-ed25519 !!!", "base64"),
        ('ci@example.org namespaces="git ssh-ed25519 AAAA', "unterminated"),
    ],
)
def test_bad_lines_name_the_line_and_problem(line: str, message: str) -> None:
    with pytest.raises(GitopsError, match=rf"signers:2: .*{message}"):
        AllowedSigners.parse("# ok\n" + line + "\n", source="signers")


def test_pattern_lists_like_ssh() -> None:
    assert match_pattern_list("ci@example.org", "*@example.org")
    assert match_pattern_list("a", "b,a")
    assert not match_pattern_list("ci@example.org", "*@example.org,!ci@*")
    assert match_pattern_list("web-1", "web-?")
    assert not match_pattern_list("web-10", "web-?")
    assert not match_pattern_list("x", "")


def test_times_without_z_are_local() -> None:
    assert parse_time("20260101Z").tzinfo is UTC
    local = parse_time("20260101")
    assert local.utcoffset() == datetime(2026, 1, 1).astimezone().utcoffset()
    with pytest.raises(ValueError, match="bad time"):
        parse_time("2026-01-01")


def _signers(key: ed25519.Ed25519PrivateKey, options: str = "") -> AllowedSigners:
    return AllowedSigners.parse(f"ci@example.org {options} {public_line(key)}\n".replace("  ", " "))


def test_verify_accepts_listed_key_and_names_the_principal() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    verified = _signers(key).verify(MSG, sshsig.sign(MSG, key), at=[NOW])
    assert verified.principal == "ci@example.org"
    assert verified.key == PublicKey.from_crypto(key.public_key())


def test_verify_refuses_unknown_key() -> None:
    listed, other = ed25519.Ed25519PrivateKey.generate(), ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="unknown key SHA256:"):
        _signers(listed).verify(MSG, sshsig.sign(MSG, other), at=[NOW])


def test_verify_refuses_wrong_namespace_option() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(SignatureError, match="namespace"):
        _signers(key, 'namespaces="file"').verify(MSG, sshsig.sign(MSG, key), at=[NOW])


def test_validity_is_checked_at_every_moment_given() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signers = _signers(key, 'valid-before="20260301Z"')
    armored = sshsig.sign(MSG, key)
    backdated = datetime(2026, 2, 1, tzinfo=UTC)
    assert signers.verify(MSG, armored, at=[backdated])  # git's view: the committer date
    with pytest.raises(SignatureError, match="expired"):
        signers.verify(MSG, armored, at=[backdated, NOW])  # ours: also now
    with pytest.raises(SignatureError, match="not valid before"):
        _signers(key, 'valid-after="20270101Z"').verify(MSG, armored, at=[NOW])


def test_certificate_authority(tmp_path: Path) -> None:
    ca = ed25519.Ed25519PrivateKey.generate()
    user = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path / "ca", ca)
    write_key(tmp_path / "user", user)
    subprocess.run(
        [
            "ssh-keygen",
            "-q",
            "-s",
            tmp_path / "ca",
            "-I",
            "ci",
            "-n",
            "ci@example.org",
            "-V",
            "20200101:20991231",
            tmp_path / "user.pub",
        ],
        check=True,
        capture_output=True,
    )
    (tmp_path / "msg").write_bytes(MSG)
    subprocess.run(
        [
            "ssh-keygen",
            "-Y",
            "sign",
            "-n",
            "git",
            "-f",
            tmp_path / "user-cert.pub",
            tmp_path / "msg",
        ],
        check=True,
        capture_output=True,
    )
    armored = (tmp_path / "msg.sig").read_text()
    trust = AllowedSigners.parse(f"*@example.org cert-authority {public_line(ca)}\n")
    assert trust.verify(MSG, armored, at=[NOW]).principal == "*@example.org"
    wrong_principal = AllowedSigners.parse(f"admin@example.org cert-authority {public_line(ca)}\n")
    with pytest.raises(SignatureError):
        wrong_principal.verify(MSG, armored, at=[NOW])
    plain = AllowedSigners.parse(f"ci@example.org {public_line(ca)}\n")
    with pytest.raises(SignatureError, match="unknown key"):
        plain.verify(MSG, armored, at=[NOW])


def test_parse_line_skips_blank_and_comment() -> None:
    assert parse_line("   ") is None
    assert parse_line("# x") is None
