"""Signed commits with the git CLI as the independent peer, both ways, and every refusal."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.trust import commits, sshsig
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PrivateKeyTypes, SignatureError
from testing.helpers import (
    KEY_TYPES,
    git,
    git_out,
    gitops,
    init_repo,
    make_key,
    public_line,
    write_key,
)
from testing.ssh import SkSignature, certify, sk_public_key, sk_sign

FIXED = {
    "GIT_AUTHOR_DATE": "2026-01-02T03:04:05+0000",
    "GIT_COMMITTER_DATE": "2026-01-02T03:04:05+0000",
}


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = init_repo(tmp_path / "repo")
    (path / "file").write_text("hello\n")
    git("add", "file", cwd=path)
    git("commit", "-q", "-m", "first", cwd=path)
    return path


def _trust(path: Path, *keys: PrivateKeyTypes, options: str = 'namespaces="git"') -> AllowedSigners:
    text = "".join(f"signer@example.org {options} {public_line(k)}\n" for k in keys)
    path.write_text(text)
    return AllowedSigners.load(path)


def _git_verify(repo: Path, rev: str, signers: Path) -> tuple[int, str]:
    result = git(
        "-c", f"gpg.ssh.allowedSignersFile={signers}", "verify-commit", rev, cwd=repo, check=False
    )
    status = git_out(
        "-c", f"gpg.ssh.allowedSignersFile={signers}", "log", "-1", "--format=%G?", rev, cwd=repo
    )
    return result.returncode, status


def _sign_with_pygit2(
    repo_path: Path, key: PrivateKeyTypes, message: str = "signed\n"
) -> pygit2.Oid:
    repo = pygit2.Repository(str(repo_path))
    head = repo.head.peel(pygit2.Commit)
    who = commits.signature_of(
        "Pub Lisher", "signer@example.org", datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    )
    oid = commits.create_signed_commit(
        repo, tree=head.tree_id, parents=[head.id], message=message, author=who, key=key
    )
    repo.head.set_target(oid)
    return oid


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_git_signs_we_verify(repo: Path, tmp_path: Path, kind: str) -> None:
    key = make_key(kind)
    write_key(tmp_path / "key", key)
    git(
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={tmp_path / 'key'}",
        "commit",
        "-q",
        "-S",
        "--allow-empty",
        "-m",
        "signed by git",
        cwd=repo,
    )
    trust = _trust(tmp_path / "allowed", key)
    oid = git_out("rev-parse", "HEAD", cwd=repo)
    verified = commits.verify_commit(pygit2.Repository(str(repo)), oid, trust)
    assert verified.principal == "signer@example.org"


@pytest.mark.parametrize("kind", KEY_TYPES)
def test_we_sign_git_verifies(repo: Path, tmp_path: Path, kind: str) -> None:
    key = make_key(kind)
    _trust(tmp_path / "allowed", key)
    oid = _sign_with_pygit2(repo, key)
    code, status = _git_verify(repo, str(oid), tmp_path / "allowed")
    assert (code, status) == (0, "G")
    assert git("fsck", "--strict", cwd=repo, check=False).returncode == 0


def test_same_object_as_git_commit_tree(repo: Path, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path / "key", key)
    tree = git_out("rev-parse", "HEAD^{tree}", cwd=repo)
    parent = git_out("rev-parse", "HEAD", cwd=repo)
    env = {
        **FIXED,
        "GIT_AUTHOR_NAME": "Pub Lisher",
        "GIT_AUTHOR_EMAIL": "signer@example.org",
        "GIT_COMMITTER_NAME": "Pub Lisher",
        "GIT_COMMITTER_EMAIL": "signer@example.org",
    }
    by_git = git(
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={tmp_path / 'key'}",
        "commit-tree",
        "-S",
        tree,
        "-p",
        parent,
        "-m",
        "signed",
        cwd=repo,
        env=env,
    ).stdout.strip()
    ours = _sign_with_pygit2(repo, key, "signed\n")
    assert str(ours) == by_git


def _raw(repo: Path, rev: str) -> bytes:
    repository = pygit2.Repository(str(repo))
    return commits.read_raw(repository, git_out("rev-parse", rev, cwd=repo))


def _write_raw(repo: Path, raw: bytes) -> str:
    repository = pygit2.Repository(str(repo))
    return str(repository.odb.write(pygit2.enums.ObjectType.COMMIT, raw))


def _refused_by_both(
    repo: Path, tmp_path: Path, trust: AllowedSigners, oid: str, reason: str
) -> None:
    with pytest.raises(SignatureError, match=reason):
        commits.verify_commit(pygit2.Repository(str(repo)), oid, trust)
    code, _ = _git_verify(repo, oid, tmp_path / "allowed")
    assert code != 0, "git verify-commit should refuse it too"


def test_unsigned_is_refused(repo: Path, tmp_path: Path) -> None:
    trust = _trust(tmp_path / "allowed", ed25519.Ed25519PrivateKey.generate())
    _refused_by_both(repo, tmp_path, trust, git_out("rev-parse", "HEAD", cwd=repo), "not signed")


@pytest.mark.parametrize(
    ("old", "new"),
    [
        (b"signed\n", b"signeD\n"),  # message
        (b"tree ", b"tree "),  # placeholder: replaced below by another tree
        (b"parent ", b"parent "),  # placeholder: replaced below by another parent
    ],
    ids=["message", "tree", "parent"],
)
def test_tampered_is_refused(repo: Path, tmp_path: Path, old: bytes, new: bytes) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    trust = _trust(tmp_path / "allowed", key)
    first = git_out("rev-parse", "HEAD", cwd=repo)
    empty_tree = git_out("hash-object", "-t", "tree", "-w", "/dev/null", cwd=repo)
    oid = _sign_with_pygit2(repo, key)
    raw = _raw(repo, str(oid))
    if old == b"tree ":
        tree_line = raw.split(b"\n", 1)[0]
        raw = raw.replace(tree_line, b"tree " + empty_tree.encode(), 1)
    elif old == b"parent ":
        other = git("commit-tree", empty_tree, "-m", "other", cwd=repo).stdout.strip()
        raw = raw.replace(first.encode(), other.encode(), 1)
    else:
        raw = raw.replace(old, new)
    _refused_by_both(repo, tmp_path, trust, _write_raw(repo, raw), "changed")


def test_unknown_key_is_refused(repo: Path, tmp_path: Path) -> None:
    trust = _trust(tmp_path / "allowed", ed25519.Ed25519PrivateKey.generate())
    oid = _sign_with_pygit2(repo, ed25519.Ed25519PrivateKey.generate())
    _refused_by_both(repo, tmp_path, trust, str(oid), "unknown key")


def test_expired_key_is_refused(repo: Path, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    trust = _trust(tmp_path / "allowed", key, options='namespaces="git",valid-before="20250101Z"')
    oid = _sign_with_pygit2(repo, key)  # committed 2026-01-02
    _refused_by_both(repo, tmp_path, trust, str(oid), "expired")


def test_backdated_commit_from_expired_key_is_refused_at_now(repo: Path, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    trust = _trust(tmp_path / "allowed", key, options='namespaces="git",valid-before="20260201Z"')
    oid = _sign_with_pygit2(repo, key)  # backdated to 2026-01-02: git accepts
    code, _ = _git_verify(repo, str(oid), tmp_path / "allowed")
    assert code == 0
    repository = pygit2.Repository(str(repo))
    # Accepted while the key was valid: at the committer date and at that "now".
    assert commits.verify_commit(repository, oid, trust, now=datetime(2026, 1, 20, tzinfo=UTC))
    with pytest.raises(SignatureError, match="expired"):
        commits.verify_commit(repository, oid, trust, now=datetime(2026, 11, 1, tzinfo=UTC))
    with pytest.raises(SignatureError, match="expired"):
        commits.verify_commit(repository, oid, trust)  # the default "now" is the clock


def test_wrong_namespace_is_refused(repo: Path, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    trust = _trust(tmp_path / "allowed", key)
    repository = pygit2.Repository(str(repo))
    head = repository.head.peel(pygit2.Commit)
    who = commits.signature_of("X", "signer@example.org")
    content = str(
        repository.create_commit_string(who, who, "file namespace\n", head.tree_id, [head.id])
    )
    armored = sshsig.sign(content.encode(), key, namespace="file")
    oid = repository.create_commit_with_signature(content, armored.rstrip("\n"))
    _refused_by_both(repo, tmp_path, trust, str(oid), "namespace")


def test_signature_moved_into_message_is_unsigned(repo: Path, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    trust = _trust(tmp_path / "allowed", key)
    oid = _sign_with_pygit2(repo, key)
    split = commits.split_signature(_raw(repo, str(oid)))
    assert split.signature is not None
    # The payload with the armor appended to the message: the header is gone.
    moved = split.payload + b"\n" + b"gpgsig " + split.signature.replace(b"\n", b"\n ").rstrip(b" ")
    forged = _write_raw(repo, moved)
    repository = pygit2.Repository(str(repo))
    forged_commit = repository.get(forged)
    assert isinstance(forged_commit, pygit2.Commit)
    # pygit2 (libgit2) scans the message too and would call this signed:
    assert forged_commit.gpg_signature[0] is not None
    # git and we read headers only:
    _refused_by_both(repo, tmp_path, trust, forged, "not signed")


def test_split_signature_follows_git() -> None:
    raw = (
        b"tree t\nparent p\nauthor a\ncommitter c\n"
        b"gpgsig -----BEGIN SSH SIGNATURE-----\n abc\n -----END SSH SIGNATURE-----\n"
        b"gpgsig-sha256 other\n continued\n"
        b"\nmessage\ngpgsig not a header\n"
    )
    split = commits.split_signature(raw)
    assert split.signature == b"-----BEGIN SSH SIGNATURE-----\nabc\n-----END SSH SIGNATURE-----\n"
    assert (
        split.payload
        == b"tree t\nparent p\nauthor a\ncommitter c\n\nmessage\ngpgsig not a header\n"
    )


def test_trailers() -> None:
    message = "deploy web-1: x\n\nChanged: a\n\nSource-Commit: abc\nGitops-Host: web-1\n"
    assert commits.trailers(message) == {"Source-Commit": "abc", "Gitops-Host": "web-1"}
    assert commits.trailers("subject only\n") == {}
    assert commits.trailers("s\n\nnot: a trailer block\nbecause this line is prose\n") == {}


# --- `gitops verify`: the CLI, with the clock as well as the committer date -------------


def _git_commit_signed_by(repo: Path, signing_key: Path, date: str, message: str) -> str:
    """``git commit -S`` with gpg.format=ssh, committer date chosen by the signer."""
    git(
        "-c",
        "gpg.format=ssh",
        "-c",
        f"user.signingkey={signing_key}",
        "commit",
        "-q",
        "-S",
        "--allow-empty",
        "-m",
        message,
        cwd=repo,
        env={"GIT_COMMITTER_DATE": date, "GIT_AUTHOR_DATE": date},
    )
    return git_out("rev-parse", "HEAD", cwd=repo)


def test_cli_refuses_a_2019_certificate_on_a_commit_backdated_to_2019(
    repo: Path, tmp_path: Path
) -> None:
    """Hole 7: a publisher certificate valid only in 2019, the commit dated 2019."""
    ca = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path / "ca", ca)
    write_key(tmp_path / "publisher", ed25519.Ed25519PrivateKey.generate())
    cert = certify(
        tmp_path / "ca",
        tmp_path / "publisher.pub",
        principals="publisher@example.org",
        validity="20190101:20191231",
    )
    signers = tmp_path / "allowed"
    signers.write_text(f'*@example.org cert-authority,namespaces="git" {public_line(ca)}\n')
    oid = _git_commit_signed_by(repo, cert, "2019-06-01T12:00:00+0000", "backdated")
    code, status = _git_verify(repo, oid, signers)
    assert (code, status) == (0, "G"), "git checks the committer date only, and accepts"

    refused = gitops("verify", "--repo", repo, oid, "--allowed-signers", signers)
    assert refused.returncode == 1
    assert refused.stdout == ""
    (line,) = refused.stderr.splitlines()
    assert line.startswith(f"gitops: error: {oid} ({oid[:7]}): certificate SHA256:")
    assert "expired at 2019-12-31" in line

    verdict = gitops("verify", "--repo", repo, oid, "--allowed-signers", signers, "--json")
    assert verdict.returncode == 1
    data = json.loads(verdict.stdout)
    assert data["good"] is False
    assert data["refusal"] == "not-allowed"
    assert data["committer_time"] == "2019-06-01T12:00:00Z"
    assert "expired" in data["reason"]

    repository = pygit2.Repository(str(repo))
    with pytest.raises(SignatureError, match=r"certificate .* expired"):
        commits.verify_commit(repository, oid, AllowedSigners.load(signers))
    assert (
        commits.verify_commit(
            repository, oid, AllowedSigners.load(signers), now=datetime(2019, 7, 1, tzinfo=UTC)
        ).principal
        == "publisher@example.org"
    )


def test_cli_refuses_a_plain_key_past_valid_before_on_a_backdated_commit(
    repo: Path, tmp_path: Path
) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path / "key", key)
    signers = tmp_path / "allowed"
    signers.write_text(
        f'p@example.org namespaces="git",valid-before="20200101Z" {public_line(key)}\n'
    )
    oid = _git_commit_signed_by(repo, tmp_path / "key", "2019-06-01T12:00:00+0000", "old")
    assert _git_verify(repo, oid, signers) == (0, "G")
    refused = gitops("verify", "--repo", repo, oid, "--allowed-signers", signers)
    assert refused.returncode == 1
    assert "expired at 2020-01-01T00:00:00Z" in refused.stderr


def test_cli_verify_json_for_a_good_signature(repo: Path, tmp_path: Path) -> None:
    key = ed25519.Ed25519PrivateKey.generate()
    write_key(tmp_path / "key", key)
    signers = tmp_path / "allowed"
    signers.write_text(f"p@example.org {public_line(key)}\n")
    oid = _git_commit_signed_by(repo, tmp_path / "key", "2026-01-02T03:04:05+0000", "good")
    done = gitops("verify", "--repo", repo, "HEAD", "--allowed-signers", signers, "--json")
    assert done.returncode == 0, done.stderr
    data = json.loads(done.stdout)
    assert data == {
        "rev": "HEAD",
        "commit": oid,
        "good": True,
        "principal": "p@example.org",
        "key_type": "ssh-ed25519",
        "fingerprint": sshsig.PublicKey.from_crypto(key.public_key()).fingerprint,
        "refusal": None,
        "reason": None,
        "committer_time": "2026-01-02T03:04:05Z",
        "checked_at": data["checked_at"],
    }
    plain = gitops("verify", "--repo", repo, "HEAD", "--allowed-signers", signers)
    assert plain.stdout.startswith('Good "git" signature for p@example.org with ssh-ed25519')


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"p@example.org ssh-ed25519 AAAA\xff\n", "allowed:1: not UTF-8 text (byte 0xff"),
        (b"# ok\nssh-ed25519 AAAAC3NzaC1lZDI1NTE5 me@laptop\n", "allowed:2: this is a public key"),
    ],
    ids=["not-utf8", "public-key-line"],
)
def test_cli_bad_allowed_signers_file_is_one_line(
    repo: Path, tmp_path: Path, content: bytes, message: str
) -> None:
    signers = tmp_path / "allowed"
    signers.write_bytes(content)
    done = gitops("verify", "--repo", repo, "HEAD", "--allowed-signers", signers)
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    assert line.startswith(f"gitops: error: {tmp_path}/{message}"), line


@pytest.mark.parametrize(
    "committer",
    [b"99999999999999999999 +0000", b"253402300800 +0000", b"1700000000 +9999"],
    ids=["past-time_t", "year-10000", "offset-over-a-day"],
)
def test_an_impossible_committer_date_is_refused_not_a_crash(
    repo: Path, tmp_path: Path, committer: bytes
) -> None:
    """Anyone can write a commit: its date is read before its signature is checked."""
    key = ed25519.Ed25519PrivateKey.generate()
    trust = _trust(tmp_path / "allowed", key)
    raw = _raw(repo, str(_sign_with_pygit2(repo, key)))
    forged = _write_raw(
        repo, re.sub(rb"(?m)^(committer .*) \d+ [+-]\d{4}$", rb"\1 " + committer, raw, count=1)
    )
    with pytest.raises(SignatureError, match="impossible committer date"):
        commits.verify_commit(pygit2.Repository(str(repo)), forged, trust)
    done = gitops("verify", "--repo", repo, forged, "--allowed-signers", tmp_path / "allowed")
    assert done.returncode == 1
    (line,) = done.stderr.splitlines()
    # libgit2 itself cannot parse some of these ("no such revision"): either way one line.
    assert line.startswith(f"gitops: error: {forged}"), line


def test_a_fido_signed_commit_verifies_in_git_and_here_and_a_touchless_one_only_in_git(
    repo: Path, tmp_path: Path
) -> None:
    token = ed25519.Ed25519PrivateKey.generate()  # what a FIDO token holds
    public = sk_public_key(token)
    signers = tmp_path / "allowed"
    signers.write_text(f'signer@example.org namespaces="git" {public.openssh()}\n')
    repository = pygit2.Repository(str(repo))
    head = repository.head.peel(pygit2.Commit)
    who = commits.signature_of("Pub Lisher", "signer@example.org")
    made = {}
    for name, flags in (("touched", 0x01), ("untouched", 0x00)):
        content = str(repository.create_commit_string(who, who, name, head.tree_id, [head.id]))
        armored = sk_sign(content.encode(), token, token=SkSignature(flags=flags))
        made[name] = str(repository.create_commit_with_signature(content, armored.rstrip("\n")))
    for name in made:
        assert _git_verify(repo, made[name], signers) == (0, "G"), name
    assert (
        gitops("verify", "--repo", repo, made["touched"], "--allowed-signers", signers).returncode
        == 0
    )
    refused = gitops("verify", "--repo", repo, made["untouched"], "--allowed-signers", signers)
    assert refused.returncode == 1
    assert "signed without a touch" in refused.stderr
