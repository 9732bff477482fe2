"""Binary caches for tests and benchmarks: a Nix signing key on disk, a ``file://`` cache
served over HTTP on loopback (counting the bytes it sends), and dropping a path from the
local store so that the next realisation really substitutes it.

The tests share one Nix store with the "build host": a system built there is already
valid on the "agent", and Nix would check no signature. :func:`forget` deletes it, so the
agent must fetch it from the cache, through Nix's signature and hash checks.
"""

from __future__ import annotations

import contextlib
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import partial
from http.server import SimpleHTTPRequestHandler
from pathlib import Path

from typing_extensions import override

from gitops.system import nix
from testing.servers import LOOPBACK, serving


@dataclass(frozen=True)
class SigningKey:
    secret_file: Path
    public: str  # name:base64, what trusted-public-keys lists


def signing_key(directory: Path, name: str = "fleet-cache-1") -> SigningKey:
    secret, public = nix.generate_signing_key(name)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"{name}.secret"
    path.write_text(secret + "\n")
    path.chmod(0o600)
    return SigningKey(path, public)


def forget(path: str | Path) -> None:
    """Delete ``path`` from the local store (it must not be alive: no roots, no referrers)."""
    subprocess.run(["nix-store", "--delete", str(path)], check=True, capture_output=True, text=True)
    assert not Path(path).exists(), path


def valid(path: str | Path) -> bool:
    """Whether the local store holds ``path`` as a valid path (a failed substitution may
    leave an unregistered directory behind)."""
    return nix.is_valid(str(path))


@dataclass
class CacheServer:
    url: str
    sent: list[int] = field(default_factory=lambda: [0])  # body bytes, all requests
    requests: list[str] = field(default_factory=list)

    @property
    def bytes_sent(self) -> int:
        return self.sent[0]


class _Handler(SimpleHTTPRequestHandler):
    server_state: CacheServer

    @override
    def log_message(self, format: str, *args: object) -> None:
        pass

    @override
    def copyfile(self, source, outputfile) -> None:  # type: ignore[no-untyped-def]
        data = source.read()
        self.server_state.sent[0] += len(data)
        outputfile.write(data)

    @override
    def send_head(self):  # type: ignore[no-untyped-def]
        self.server_state.requests.append(self.path)
        return super().send_head()


@contextlib.contextmanager
def http_cache(directory: Path) -> Iterator[CacheServer]:
    """Serve ``directory`` (a ``file://`` cache) as a static HTTP binary cache on loopback."""
    state = CacheServer("")
    own = type("CacheHandler", (_Handler,), {"server_state": state})  # one per server
    with serving(partial(own, directory=str(directory))) as port:
        state.url = f"http://{LOOPBACK}:{port}"
        yield state
