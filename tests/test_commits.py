"""Signed commits with the git CLI as the independent peer, both ways, and every refusal."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest
from cryptography.hazmat.primitives.asymmetric import ed25519

from gitops.trust import commits, sshsig
from gitops.trust.allowed_signers import AllowedSigners
from gitops.trust.sshsig import PrivateKeyTypes, SignatureError
from testing.helpers import KEY_TYPES, git, git_out, init_repo, make_key, public_line, write_key

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
    assert commits.verify_commit(repository, oid, trust)  # at the committer date, like git
    with pytest.raises(SignatureError, match="expired"):
        commits.verify_commit(repository, oid, trust, now=datetime(2026, 11, 1, tzinfo=UTC))


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
