"""OpenSSH allowed-signers: parsing, pattern lists, validity, certificates — checked
against ssh-keygen's own decisions where it can decide."""

from __future__ import annotations

import base64
import json
import struct
import subprocess
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.errors import GitopsError
from gitops.trust import keys, sshsig
from gitops.trust.allowed_signers import AllowedSigners, match_pattern_list, parse_line, parse_time
from gitops.trust.sshsig import PublicKey, Refusal, SignatureError
from testing.helpers import gitops, init_repo, public_line, write_fleet, write_key
from testing.ssh import SkSignature, certify, keygen_verify, sk_public_key, sk_sign

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
    # The certificate's principal that the entry allows, as ssh-keygen find-principals says.
    assert trust.verify(MSG, armored, at=[NOW]).principal == "ci@example.org"
    wrong_principal = AllowedSigners.parse(f"admin@example.org cert-authority {public_line(ca)}\n")
    with pytest.raises(SignatureError):
        wrong_principal.verify(MSG, armored, at=[NOW])
    plain = AllowedSigners.parse(f"ci@example.org {public_line(ca)}\n")
    with pytest.raises(SignatureError, match="unknown key"):
        plain.verify(MSG, armored, at=[NOW])


def test_parse_line_skips_blank_and_comment() -> None:
    assert parse_line("   ") is None
    assert parse_line("# x") is None


# --- every rule at every moment ("now" as well as the signer-chosen committer date) ---

Y2019 = datetime(2019, 6, 1, tzinfo=UTC)


def _cert_signature(tmp_path: Path, validity: str, *, host: bool = False) -> tuple[str, str]:
    """A signature by a certificate (CA-signed, principal ci@example.org) valid over
    ``validity``; returns (CA public line, armored signature)."""
    ca = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path / "ca", ca)
    write_key(tmp_path / "user", ed25519.Ed25519PrivateKey.generate())
    cert = certify(
        tmp_path / "ca",
        tmp_path / "user.pub",
        principals="ci@example.org",
        validity=validity,
        host=host,
    )
    (tmp_path / "msg").write_bytes(MSG)
    subprocess.run(
        ["ssh-keygen", "-Y", "sign", "-n", "git", "-f", cert, tmp_path / "msg"],
        check=True,
        capture_output=True,
    )
    return public_line(ca), (tmp_path / "msg.sig").read_text()


def test_a_certificate_valid_only_in_2019_is_refused_now(tmp_path: Path) -> None:
    ca, armored = _cert_signature(tmp_path, "20190101:20191231")
    trust = AllowedSigners.parse(f"*@example.org cert-authority {ca}\n")
    assert trust.verify(MSG, armored, at=[Y2019]).principal == "ci@example.org"  # git's view
    for moments in ([Y2019, NOW], [NOW, Y2019]):
        with pytest.raises(SignatureError, match=r"certificate .* expired at 2019-12-31") as err:
            trust.verify(MSG, armored, at=moments)
        assert err.value.refusal == Refusal.NOT_ALLOWED


def test_a_certificate_not_yet_valid_now_is_refused_even_if_forward_dated(tmp_path: Path) -> None:
    ca, armored = _cert_signature(tmp_path, "20400101:20410101")
    trust = AllowedSigners.parse(f"*@example.org cert-authority {ca}\n")
    forward = datetime(2040, 6, 1, tzinfo=UTC)
    assert trust.verify(MSG, armored, at=[forward])
    with pytest.raises(SignatureError, match="not valid before 2040-01-01"):
        trust.verify(MSG, armored, at=[forward, NOW])


def test_a_host_certificate_is_not_a_publisher(tmp_path: Path) -> None:
    ca, armored = _cert_signature(tmp_path, "20200101:20991231", host=True)
    line = f"*@example.org cert-authority {ca}\n"
    (tmp_path / "allowed").write_text(line)
    assert (
        keygen_verify(
            tmp_path / "allowed", tmp_path / "msg.sig", MSG, principal="ci@example.org"
        ).returncode
        != 0
    )
    with pytest.raises(SignatureError, match="host certificate"):
        AllowedSigners.parse(line).verify(MSG, armored, at=[NOW])


@pytest.mark.parametrize(
    ("options", "good", "bad", "message"),
    [
        ('valid-before="20260301Z"', datetime(2026, 2, 1, tzinfo=UTC), NOW, "expired"),
        ('valid-after="20260501Z"', NOW, datetime(2026, 4, 1, tzinfo=UTC), "not valid before"),
    ],
    ids=["valid-before", "valid-after"],
)
def test_plain_key_options_hold_at_every_moment(
    options: str, good: datetime, bad: datetime, message: str
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signers = _signers(key, options)
    armored = sshsig.sign(MSG, key)
    assert signers.verify(MSG, armored, at=[good])
    for moments in ([good, bad], [bad, good], [good, good, bad]):
        with pytest.raises(SignatureError, match=message):
            signers.verify(MSG, armored, at=moments)


def test_a_cert_authority_line_with_its_own_expiry_holds_at_every_moment(tmp_path: Path) -> None:
    ca, armored = _cert_signature(tmp_path, "20200101:20991231")
    trust = AllowedSigners.parse(f'*@example.org cert-authority,valid-before="20260301Z" {ca}\n')
    assert trust.verify(MSG, armored, at=[datetime(2026, 2, 1, tzinfo=UTC)])
    with pytest.raises(SignatureError, match="expired at 2026-03-01"):
        trust.verify(MSG, armored, at=[datetime(2026, 2, 1, tzinfo=UTC), NOW])


def test_no_moment_is_an_error_not_an_acceptance() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ValueError, match="moment"):
        _signers(key).verify(MSG, sshsig.sign(MSG, key), at=[])


# --- FIDO keys: the token's touch -----------------------------------------------------


def test_security_key_signature_without_a_touch_needs_no_touch_required(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    public = sk_public_key(key)
    untouched = sk_sign(MSG, key, token=SkSignature(flags=0))
    touched = sk_sign(MSG, key)
    strict = AllowedSigners.parse(f"ci@example.org {public.openssh()}\n")
    assert strict.verify(MSG, touched, at=[NOW]).principal == "ci@example.org"
    with pytest.raises(SignatureError, match=r"without a touch.*no-touch-required") as err:
        strict.verify(MSG, untouched, at=[NOW])
    assert err.value.refusal == Refusal.NOT_ALLOWED
    # ssh-keygen -Y verify (and so git) does not look at the flag; sshd and we do.
    (tmp_path / "allowed").write_text(strict.text())
    (tmp_path / "m.sig").write_text(untouched)
    assert (
        keygen_verify(
            tmp_path / "allowed", tmp_path / "m.sig", MSG, principal="ci@example.org"
        ).returncode
        == 0
    )
    relaxed = AllowedSigners.parse(f"ci@example.org no-touch-required {public.openssh()}\n")
    assert relaxed.verify(MSG, untouched, at=[NOW])
    pin = AllowedSigners.parse(f"ci@example.org verify-required {public.openssh()}\n")
    with pytest.raises(SignatureError, match="user verification"):
        pin.verify(MSG, touched, at=[NOW])
    assert pin.verify(MSG, sk_sign(MSG, key, token=SkSignature(flags=0x05)), at=[NOW])
    assert AllowedSigners.parse(relaxed.text()).entries[0].touch_required is False


# --- files people actually write -------------------------------------------------------


def test_a_non_utf8_file_names_file_line_and_byte(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "allowed_signers"
    path.write_bytes(
        b"# publishers\n" + f"ci@example.org {public_line(key)}\n".encode() + b"caf\xe9 x\n"
    )
    with pytest.raises(GitopsError, match=rf"^{path}:3: not UTF-8 text \(byte 0xe9 at column 4\)"):
        AllowedSigners.load(path)


def test_a_utf8_bom_is_ignored(tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    path = tmp_path / "allowed_signers"
    path.write_bytes(
        b"\xef\xbb\xbf# from a Windows editor\n" + f"ci@example.org {public_line(key)}\n".encode()
    )
    assert len(AllowedSigners.load(path).entries) == 1


@pytest.mark.parametrize("comment", ["", " admin@laptop"])
def test_a_public_key_line_says_what_to_write(comment: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(GitopsError) as err:
        AllowedSigners.parse(f"{public_line(key)}{comment}\n", source="signers")
    message = str(err.value)
    assert message.startswith("signers:1: this is a public key, not an allowed-signers line")
    assert "write `principal KEY`" in message
    assert "unknown option" not in message


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ('namespaces="git",namespaces="file"', "given twice"),
        ("cert-authority=yes", "takes no value"),
        ("valid-before", "needs a value"),
        ("cert-authority,", "empty option"),
        (
            'valid-after="20270101Z",valid-before="20260101Z"',
            "valid-before is not after valid-after",
        ),
        ('valid-after="20261301Z"', "not a real date"),
    ],
)
def test_bad_options_are_refused_with_the_reason(options: str, message: str) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(GitopsError, match=rf"^signers:1: .*{message}"):
        AllowedSigners.parse(f"ci@example.org {options} {public_line(key)}\n", source="signers")


def test_an_unsupported_key_type_is_a_clear_error() -> None:
    blob = struct.pack(">I", 7) + b"ssh-dss" + struct.pack(">I", 1) + b"\x01"
    line = f"ci@example.org ssh-dss {base64.b64encode(blob).decode()}\n"
    with pytest.raises(GitopsError, match=r"^signers:1: unsupported or invalid key"):
        AllowedSigners.parse(line, source="signers")


def test_entries_as_json() -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    signers = _signers(key, 'namespaces="git",valid-before="20270101Z"')
    (entry,) = json.loads(json.dumps(signers.to_json()))
    assert entry["principals"] == "ci@example.org"
    assert entry["key_type"] == "ssh-ed25519"
    assert entry["fingerprint"] == PublicKey.from_crypto(key.public_key()).fingerprint
    assert entry["namespaces"] == "git"
    assert entry["valid_before"] == "2027-01-01T00:00:00Z"
    assert entry["valid_after"] is None
    assert (entry["cert_authority"], entry["touch_required"]) == (False, True)
    assert AllowedSigners.parse(entry["line"]).entries[0].key == signers.entries[0].key


# --- `gitops keys ... --json` -----------------------------------------------------------


def test_keys_new_and_allowed_signers_as_json(tmp_path: Path) -> None:
    made = gitops("keys", "new", tmp_path / "publisher", "--comment", "ci@example.org", "--json")
    assert made.returncode == 0, made.stderr
    key = json.loads(made.stdout)
    printed = subprocess.run(
        ["ssh-keygen", "-l", "-f", tmp_path / "publisher.pub"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert key["fingerprint"] in printed.stdout
    assert key["public_key"] == f"{tmp_path}/publisher.pub"

    root = init_repo(tmp_path / "fleet")
    publisher = keys.load_signing_key(tmp_path / "publisher")
    write_fleet(
        root,
        publisher=publisher,
        hosts={"web-1": ["server"]},
        host_keys={"web-1": ed25519.Ed25519PrivateKey.generate()},
        machines=tmp_path / "machines",
    )
    listed = gitops("keys", "allowed-signers", "--repo", root, "--json")
    assert listed.returncode == 0, listed.stderr
    (signer,) = json.loads(listed.stdout)["signers"]
    assert signer["principals"] == "publisher@example.org"
    assert signer["fingerprint"] == key["fingerprint"]
    assert signer["namespaces"] == "git"
    text = gitops("keys", "allowed-signers", "--repo", root).stdout
    assert text == signer["line"] + "\n"
