"""OpenSSH allowed-signers files (``ssh-keygen(1)``, ALLOWED SIGNERS) and trust decisions.

The same file an admin gives ``git config gpg.ssh.allowedSignersFile`` works here:
principals as an ssh pattern-list, options ``namespaces=``, ``valid-after=``,
``valid-before=`` and ``cert-authority``, then the key.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization.ssh import SSHCertificate

from gitops.errors import GitopsError
from gitops.trust import sshsig
from gitops.trust.sshsig import PublicKey, Refusal, SignatureError

_TIME_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    return re.compile(
        "".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in pattern) + r"\Z",
        re.DOTALL,
    )


def match_pattern_list(value: str, pattern_list: str) -> bool:
    """ssh's ``match_pattern_list``: any positive match, and no negated one."""
    matched = False
    for raw in pattern_list.split(","):
        negated = raw.startswith("!")
        pattern = raw[1:] if negated else raw
        if _pattern_regex(pattern).match(value):
            if negated:
                return False
            matched = True
    return matched


def parse_time(text: str) -> datetime:
    """``YYYYMMDD[HHMM[SS]][Z]``; without ``Z`` it is local time, as in OpenSSH."""
    utc = text.endswith(("Z", "z"))
    digits = text[:-1] if utc else text
    fmt = _TIME_FORMATS.get(len(digits))
    if fmt is None or not digits.isdigit():
        raise ValueError(f"bad time {text!r}: use YYYYMMDD[HHMM[SS]]Z")
    parsed = datetime.strptime(digits, fmt)
    return parsed.replace(tzinfo=UTC) if utc else parsed.astimezone()


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


@dataclass(frozen=True)
class AllowedSigner:
    principals: str
    key: PublicKey
    namespaces: str | None = None
    valid_after: datetime | None = None
    valid_before: datetime | None = None
    cert_authority: bool = False
    line_number: int = 0

    def line(self) -> str:
        options = []
        if self.cert_authority:
            options.append("cert-authority")
        if self.namespaces is not None:
            options.append(f'namespaces="{self.namespaces}"')
        if self.valid_after is not None:
            options.append(f'valid-after="{format_time(self.valid_after)}"')
        if self.valid_before is not None:
            options.append(f'valid-before="{format_time(self.valid_before)}"')
        principals = (
            f'"{self.principals}"' if any(c.isspace() for c in self.principals) else self.principals
        )
        parts = [principals, ",".join(options), self.key.openssh()]
        return " ".join(p for p in parts if p)

    def validity_problem(self, moment: datetime) -> str | None:
        if self.valid_after is not None and moment < self.valid_after:
            return f"not valid before {format_time(self.valid_after)}"
        if self.valid_before is not None and moment >= self.valid_before:
            return f"expired at {format_time(self.valid_before)}"
        return None


def _split_unquoted(text: str, separator: Callable[[str], bool], *, keep_empty: bool) -> list[str]:
    """Split ``text`` where ``separator`` matches outside double quotes (quotes kept)."""
    parts: list[str] = []
    current = ""
    quoted = False
    for char in text:
        if char == '"':
            quoted = not quoted
        if separator(char) and not quoted:
            if current or keep_empty:
                parts.append(current)
            current = ""
        else:
            current += char
    if quoted:
        raise ValueError("unterminated quote")
    if current or keep_empty:
        parts.append(current)
    return parts


def _tokens(line: str) -> list[str]:
    """Whitespace-separated fields, as sshauthopt reads them."""
    return _split_unquoted(line, str.isspace, keep_empty=False)


def _split_options(text: str) -> list[str]:
    return _split_unquoted(text, lambda char: char == ",", keep_empty=True)


def parse_line(line: str, line_number: int = 0) -> AllowedSigner | None:
    """One line; None for blank lines and comments; ValueError says what is wrong."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    tokens = _tokens(stripped)
    if len(tokens) < 3:
        raise ValueError("expected 'principals [options] keytype base64key'")
    principals = tokens[0].strip('"')
    rest = tokens[1:]
    options: dict[str, str | None] = {}
    if not _looks_like_key_type(rest[0]):
        for option in _split_options(rest[0]):
            name, _, value = option.partition("=")
            name = name.lower()
            if name not in {"cert-authority", "namespaces", "valid-after", "valid-before"}:
                raise ValueError(f"unknown option {name!r}")
            options[name] = value.strip('"') if value else None
        rest = rest[1:]
    valid_after = parse_time(v) if (v := options.get("valid-after")) else None
    valid_before = parse_time(v) if (v := options.get("valid-before")) else None
    if len(rest) < 2:
        raise ValueError("missing key")
    key = PublicKey.parse(" ".join(rest[:2]))
    return AllowedSigner(
        principals=principals,
        key=key,
        namespaces=options.get("namespaces"),
        valid_after=valid_after,
        valid_before=valid_before,
        cert_authority="cert-authority" in options,
        line_number=line_number,
    )


def _looks_like_key_type(token: str) -> bool:
    return token.startswith(("ssh-", "ecdsa-", "sk-"))


@dataclass(frozen=True)
class Verified:
    """A signature that a trusted entry accepts."""

    principal: str
    key: PublicKey
    signer: AllowedSigner


@dataclass(frozen=True)
class AllowedSigners:
    entries: tuple[AllowedSigner, ...] = field(default_factory=tuple)
    source: str = "<allowed signers>"

    @classmethod
    def parse(cls, text: str, *, source: str = "<allowed signers>") -> AllowedSigners:
        entries = []
        for number, line in enumerate(text.splitlines(), start=1):
            try:
                entry = parse_line(line, number)
            except ValueError as err:
                raise GitopsError(
                    f"{source}:{number}: {err}; see ssh-keygen(1) ALLOWED SIGNERS for the format"
                ) from err
            if entry is not None:
                entries.append(entry)
        return cls(tuple(entries), source)

    @classmethod
    def load(cls, path: Path) -> AllowedSigners:
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as err:
            raise GitopsError(f"{path}: cannot read allowed signers: {err.strerror}") from err
        return cls.parse(text, source=str(path))

    @classmethod
    def of(
        cls, signers: Iterable[tuple[str, PublicKey]], *, namespace: str = "git"
    ) -> AllowedSigners:
        return cls(
            tuple(AllowedSigner(principal, key, namespaces=namespace) for principal, key in signers)
        )

    def text(self) -> str:
        return "".join(entry.line() + "\n" for entry in self.entries)

    def _matches_key(self, entry: AllowedSigner, key: PublicKey, moment: datetime) -> str | None:
        """None when ``entry`` vouches for ``key``; else why not (for the message)."""
        if entry.cert_authority:
            if not key.is_certificate:
                return "not a certificate"
            cert = key.certificate()
            if PublicKey.from_crypto(_signature_key(cert)).blob != entry.key.blob:
                return "certificate from another authority"
            try:
                cert.verify_cert_signature()
            except Exception:  # cryptography raises InvalidSignature or ValueError
                return "certificate signature is invalid"
            stamp = moment.timestamp()
            if not cert.valid_after <= stamp < cert.valid_before:
                return "certificate is outside its validity"
            names = [p.decode("utf-8", "replace") for p in cert.valid_principals]
            if not any(match_pattern_list(name, entry.principals) for name in names):
                return "certificate principals are not allowed"
            return None
        return None if entry.key.blob == key.blob else "another key"

    def verify(
        self,
        message: bytes,
        armored: str | bytes,
        *,
        at: Sequence[datetime],
        namespace: str = sshsig.GIT_NAMESPACE,
    ) -> Verified:
        """Accept the signature only if it is valid and a trusted entry allows its key for
        ``namespace`` at every moment in ``at`` (git checks the committer date only;
        callers add "now" to stop backdated signatures from expired keys)."""
        parsed = sshsig.verify(message, armored, namespace=namespace)
        key = parsed.public_key
        reasons: list[str] = []
        for entry in self.entries:
            if self._matches_key(entry, key, at[0]) is not None:
                continue
            if entry.namespaces is not None and not match_pattern_list(namespace, entry.namespaces):
                reasons.append(f"key {key.fingerprint} is not allowed for namespace {namespace!r}")
                continue
            problems = [p for moment in at if (p := entry.validity_problem(moment))]
            if problems:
                reasons.append(f"key {key.fingerprint} is {problems[0]}")
                continue
            return Verified(entry.principals, key, entry)
        if reasons:
            raise SignatureError(reasons[0], Refusal.NOT_ALLOWED)
        raise SignatureError(
            f"signed by unknown key {key.fingerprint} ({key.key_type})", Refusal.UNKNOWN_KEY
        )


def _signature_key(cert: SSHCertificate) -> sshsig.PublicKeyTypes:
    key = cert.signature_key()
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise SignatureError("unsupported certificate authority key")
    return key
