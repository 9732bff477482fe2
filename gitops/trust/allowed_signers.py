"""OpenSSH allowed-signers files (``ssh-keygen(1)``, ALLOWED SIGNERS) and trust decisions.

The same file an admin gives ``git config gpg.ssh.allowedSignersFile`` works here:
principals as an ssh pattern-list, options ``namespaces=``, ``valid-after=``,
``valid-before=`` and ``cert-authority``, then the key. Two options are ours, for FIDO
keys, borrowed from ``authorized_keys``: ``no-touch-required`` and ``verify-required``
(OpenSSH's ssh-keygen skips a line that has them).

Every time rule is checked at every moment the caller passes: the committer date (what
git checks, and what the signer chooses) and the verifier's clock, so a backdated
signature from an expired key or certificate is refused.
"""

from __future__ import annotations

import codecs
import functools
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Final

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.hazmat.primitives.serialization.ssh import (
    SSHCertificate,
    SSHCertificateType,
)

from gitops import protocol
from gitops.errors import GitopsError
from gitops.trust import sshsig
from gitops.trust.sshsig import PublicKey, Refusal, SignatureError

_TIME_FORMATS = {8: "%Y%m%d", 12: "%Y%m%d%H%M", 14: "%Y%m%d%H%M%S"}
MAX_FILE_BYTES: Final = 16 * 1024 * 1024  # one line per trusted key: far below this
_FLAG_OPTIONS: Final = frozenset({"cert-authority", "no-touch-required", "verify-required"})
_VALUE_OPTIONS: Final = frozenset({"namespaces", "valid-after", "valid-before"})
_FOREVER: Final = 2**64 - 1  # a certificate's "valid before" when it never expires


@functools.lru_cache(maxsize=1024)
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
    if fmt is None or not digits.isdigit() or not digits.isascii():
        raise ValueError(f"bad time {text!r}: use YYYYMMDD[HHMM[SS]]Z")
    try:
        parsed = datetime.strptime(digits, fmt)
        return parsed.replace(tzinfo=UTC) if utc else parsed.astimezone()
    except (ValueError, OverflowError) as err:
        raise ValueError(f"bad time {text!r}: not a real date; use YYYYMMDD[HHMM[SS]]Z") from err


def format_time(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y%m%d%H%M%SZ")


def _when(moment: datetime) -> str:
    return protocol.format_time(moment)


def _when_stamp(stamp: int) -> str:
    if stamp >= _FOREVER:
        return "forever"
    try:
        return protocol.format_time(datetime.fromtimestamp(stamp, UTC))
    except (ValueError, OverflowError, OSError):
        return str(stamp)


@dataclass(frozen=True)
class AllowedSigner:
    principals: str
    key: PublicKey
    namespaces: str | None = None
    valid_after: datetime | None = None
    valid_before: datetime | None = None
    cert_authority: bool = False
    # FIDO keys: refuse a signature the token made without a touch (sshd's default for
    # authorized_keys; ssh-keygen -Y verify does not check it) ...
    touch_required: bool = True
    # ... and, with verify-required, one made without a PIN or biometric check.
    verify_required: bool = False
    line_number: int = 0

    def options(self) -> list[str]:
        options = []
        if self.cert_authority:
            options.append("cert-authority")
        if self.namespaces is not None:
            options.append(f'namespaces="{self.namespaces}"')
        if self.valid_after is not None:
            options.append(f'valid-after="{format_time(self.valid_after)}"')
        if self.valid_before is not None:
            options.append(f'valid-before="{format_time(self.valid_before)}"')
        if not self.touch_required:
            options.append("no-touch-required")
        if self.verify_required:
            options.append("verify-required")
        return options

    def line(self) -> str:
        principals = (
            f'"{self.principals}"' if any(c.isspace() for c in self.principals) else self.principals
        )
        parts = [principals, ",".join(self.options()), self.key.openssh()]
        return " ".join(p for p in parts if p)

    def to_json(self) -> dict[str, object]:
        """The entry for ``--json`` output (documented in docs/keys.md)."""
        return {
            "principals": self.principals,
            "key_type": self.key.key_type,
            "key": self.key.openssh(),
            "fingerprint": self.key.fingerprint,
            "cert_authority": self.cert_authority,
            "namespaces": self.namespaces,
            "valid_after": None if self.valid_after is None else _when(self.valid_after),
            "valid_before": None if self.valid_before is None else _when(self.valid_before),
            "touch_required": self.touch_required,
            "verify_required": self.verify_required,
            "line": self.line(),
        }

    def identifies(self, key: PublicKey) -> bool:
        """Whether this entry is about ``key``: the key itself, or for ``cert-authority``
        a certificate its key signed. Whether it *allows* the signature is :func:`_judge`."""
        if not self.cert_authority:
            return self.key.blob == key.blob
        return key.is_certificate and _certificate_authority(key) == self.key.blob

    def validity_problem(self, moment: datetime) -> str | None:
        if self.valid_after is not None and moment < self.valid_after:
            return f"is not valid before {_when(self.valid_after)} (checked at {_when(moment)})"
        if self.valid_before is not None and moment >= self.valid_before:
            return f"expired at {_when(self.valid_before)} (checked at {_when(moment)})"
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


def _parse_options(text: str) -> dict[str, str | None]:
    options: dict[str, str | None] = {}
    for option in _split_options(text):
        name, equals, value = option.partition("=")
        name = name.lower()
        if not name:
            raise ValueError("empty option (a stray comma?)")
        if name not in _FLAG_OPTIONS | _VALUE_OPTIONS:
            raise ValueError(f"unknown option {name!r}")
        if name in options:
            raise ValueError(f"option {name!r} is given twice")
        if name in _FLAG_OPTIONS and equals:
            raise ValueError(f"option {name!r} takes no value")
        if name in _VALUE_OPTIONS and not equals:
            raise ValueError(f'option {name!r} needs a value: {name}="..."')
        options[name] = value.strip('"') if equals else None
    return options


def _refuse_public_key_line(tokens: list[str]) -> None:
    """A ``.pub`` line pasted as is would otherwise read as principal ``ssh-ed25519``
    with an unknown option ``AAAA...``."""
    if len(tokens) >= 2 and _looks_like_key_type(tokens[0]) and tokens[1].startswith("AAAA"):
        raise ValueError(
            "this is a public key, not an allowed-signers line; write `principal KEY`, "
            f"e.g. `publisher@example.org {tokens[0]} {tokens[1][:12]}...`"
        )


def parse_line(line: str, line_number: int = 0) -> AllowedSigner | None:
    """One line; None for blank lines and comments; ValueError says what is wrong."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return None
    tokens = _tokens(stripped)
    _refuse_public_key_line(tokens)
    if len(tokens) < 3:
        raise ValueError("expected 'principals [options] keytype base64key'")
    principals = tokens[0].strip('"')
    rest = tokens[1:]
    options: dict[str, str | None] = {}
    if not _looks_like_key_type(rest[0]):
        options = _parse_options(rest[0])
        rest = rest[1:]
    valid_after = parse_time(v) if (v := options.get("valid-after")) else None
    valid_before = parse_time(v) if (v := options.get("valid-before")) else None
    if valid_after is not None and valid_before is not None and valid_before <= valid_after:
        raise ValueError("valid-before is not after valid-after")
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
        touch_required="no-touch-required" not in options,
        verify_required="verify-required" in options,
        line_number=line_number,
    )


def _looks_like_key_type(token: str) -> bool:
    return token.startswith(("ssh-", "ecdsa-", "sk-"))


def _decode(data: bytes, source: str) -> str:
    """UTF-8 text (a leading BOM dropped), or one line naming where it is not."""
    data = data.removeprefix(codecs.BOM_UTF8)
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as err:
        line = data.count(b"\n", 0, err.start) + 1
        column = err.start - (data.rfind(b"\n", 0, err.start) + 1) + 1
        raise GitopsError(
            f"{source}:{line}: not UTF-8 text (byte 0x{data[err.start]:02x} at column "
            f"{column}); save the file as UTF-8 or remove that byte"
        ) from err


# --- trust decisions -----------------------------------------------------------------


class _NotAllowedError(Exception):
    """An entry identifies the key but does not allow this signature; the text says why."""


@dataclass(frozen=True)
class Verified:
    """A signature that a trusted entry accepts."""

    principal: str  # for a certificate: its principal that the entry allows
    key: PublicKey
    signer: AllowedSigner


def _signature_key(cert: SSHCertificate) -> sshsig.PublicKeyTypes:
    key = cert.signature_key()
    if not isinstance(key, ed25519.Ed25519PublicKey | rsa.RSAPublicKey | ec.EllipticCurvePublicKey):
        raise ValueError("unsupported certificate authority key")
    return key


@functools.lru_cache(maxsize=1024)
def _certificate_authority(key: PublicKey) -> bytes | None:
    """The blob of the CA key that signed certificate ``key``, when its CA signature is
    valid; None otherwise (cached: a site build checks many signatures by one cert)."""
    try:
        cert = key.certificate()
        cert.verify_cert_signature()
        return PublicKey.from_crypto(_signature_key(cert)).blob
    except (InvalidSignature, ValueError, TypeError, UnsupportedAlgorithm, SignatureError):
        return None


def _certificate_principal(entry: AllowedSigner, key: PublicKey, at: Sequence[datetime]) -> str:
    """The certificate's first principal that ``entry`` allows, if the certificate is a
    user certificate valid at every moment in ``at`` (as sshkey_cert_check_authority)."""
    cert = key.certificate()
    name = f"certificate {key.fingerprint} (id {cert.key_id.decode('utf-8', 'replace')!r})"
    if cert.type != SSHCertificateType.USER:
        raise _NotAllowedError(f"{name} is a host certificate, not a user certificate")
    for moment in at:
        stamp = moment.timestamp()
        if stamp < cert.valid_after:
            raise _NotAllowedError(
                f"{name} is not valid before {_when_stamp(cert.valid_after)} "
                f"(checked at {_when(moment)})"
            )
        if stamp >= cert.valid_before:
            raise _NotAllowedError(
                f"{name} expired at {_when_stamp(cert.valid_before)} (checked at {_when(moment)})"
            )
    for raw in cert.valid_principals:
        principal = raw.decode("utf-8", "replace")
        if match_pattern_list(principal, entry.principals):
            return principal
    raise _NotAllowedError(f"{name} names no principal that {entry.principals!r} allows")


def _check_presence(entry: AllowedSigner, parsed: sshsig.ParsedSignature) -> None:
    flags = parsed.sk_flags or 0
    fingerprint = parsed.public_key.fingerprint
    if entry.touch_required and not flags & sshsig.SK_USER_PRESENT:
        raise _NotAllowedError(
            f"key {fingerprint} signed without a touch (the token's user-presence flag is "
            "not set); if that is intended, add no-touch-required to its allowed-signers line"
        )
    if entry.verify_required and not flags & sshsig.SK_USER_VERIFIED:
        raise _NotAllowedError(
            f"key {fingerprint} signed without user verification (PIN), which its "
            "allowed-signers line demands (verify-required)"
        )


def _judge(
    entry: AllowedSigner, parsed: sshsig.ParsedSignature, namespace: str, at: Sequence[datetime]
) -> str:
    """The principal ``entry`` allows the signature for; _NotAllowedError says why not."""
    key = parsed.public_key
    if entry.namespaces is not None and not match_pattern_list(namespace, entry.namespaces):
        raise _NotAllowedError(f"key {key.fingerprint} is not allowed for namespace {namespace!r}")
    for moment in at:
        if (problem := entry.validity_problem(moment)) is not None:
            raise _NotAllowedError(f"key {key.fingerprint} {problem}")
    principal = entry.principals
    if entry.cert_authority:
        principal = _certificate_principal(entry, key, at)
    if key.is_security_key:
        _check_presence(entry, parsed)
    return principal


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
            with path.open("rb") as handle:
                data = handle.read(MAX_FILE_BYTES + 1)
        except OSError as err:
            raise GitopsError(f"{path}: cannot read allowed signers: {err.strerror}") from err
        if len(data) > MAX_FILE_BYTES:
            raise GitopsError(
                f"{path}: larger than {MAX_FILE_BYTES // 2**20} MiB, which no allowed-signers "
                "file is (one line per trusted key); is it the right file?"
            )
        return cls.parse(_decode(data, str(path)), source=str(path))

    @classmethod
    def of(
        cls, signers: Iterable[tuple[str, PublicKey]], *, namespace: str = "git"
    ) -> AllowedSigners:
        return cls(
            tuple(AllowedSigner(principal, key, namespaces=namespace) for principal, key in signers)
        )

    def text(self) -> str:
        return "".join(entry.line() + "\n" for entry in self.entries)

    def to_json(self) -> list[dict[str, object]]:
        return [entry.to_json() for entry in self.entries]

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
        callers add "now" to stop backdated signatures from expired keys and
        certificates)."""
        if not at:
            raise ValueError("verify needs at least one moment to check validity at")
        parsed = sshsig.verify(message, armored, namespace=namespace)
        key = parsed.public_key
        reasons: list[str] = []
        for entry in self.entries:
            if not entry.identifies(key):
                continue
            try:
                principal = _judge(entry, parsed, namespace, at)
            except _NotAllowedError as refused:
                reasons.append(str(refused))
                continue
            return Verified(principal, key, entry)
        if reasons:
            raise SignatureError(reasons[0], Refusal.NOT_ALLOWED)
        raise SignatureError(
            f"signed by unknown key {key.fingerprint} ({key.key_type})", Refusal.UNKNOWN_KEY
        )
