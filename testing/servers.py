"""Real git servers on loopback, for the transport tests and the benchmarks.

- :func:`sshd`: OpenSSH's own ``sshd`` on 127.0.0.1 with its own host key, serving
  repositories by absolute path (``ssh://root@127.0.0.1:PORT/abs/path/repo.git``).
- :func:`git_http_server`: git's real smart-HTTP CGI, ``git-http-backend``, behind a small
  HTTP/1.1 server that requires ``Authorization: Basic`` with a token (any user name).
- :func:`git_daemon`: ``git daemon`` (the ``git://`` protocol), for the benchmarks.
- :class:`CountingProxy`: a TCP forwarder that counts the bytes each way, so a benchmark
  or a test can measure what a fetch costs on the wire.
- :func:`add_fleet_refs`: a bare repository with ``deploy/<host>`` and ``reports/<host>``
  branches for thousands of hosts, written with ``git fast-import``.

Every server is a context manager: it is stopped (and waited for) on exit, also when the
body raises. Tests and benchmarks run the servers directly with :mod:`subprocess`; the
code under test (gitops/) goes through gitops.system.process.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import getpass
import hmac
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from socketserver import BaseRequestHandler
from typing import ClassVar

from typing_extensions import override

from gitops.trust import keys

LOOPBACK = "127.0.0.1"
SSHD_CANDIDATES = ("/usr/sbin/sshd", "/usr/bin/sshd", "/run/current-system/sw/bin/sshd")
HTTP_BACKEND_CANDIDATES = (
    "/usr/lib/git-core/git-http-backend",
    "/usr/libexec/git-core/git-http-backend",
)
START_TIMEOUT = 10.0


class ServerError(RuntimeError):
    """A server did not start; the message carries its log."""


# -- finding the programs ------------------------------------------------------------------


def find_sshd() -> str | None:
    found = shutil.which("sshd")
    if found:
        return found
    return next((c for c in SSHD_CANDIDATES if Path(c).is_file()), None)


def find_http_backend() -> str | None:
    exec_path = subprocess.run(
        ["git", "--exec-path"], check=False, capture_output=True, text=True
    ).stdout.strip()
    candidates = ([f"{exec_path}/git-http-backend"] if exec_path else []) + list(
        HTTP_BACKEND_CANDIDATES
    )
    return next((c for c in candidates if Path(c).is_file()), None)


# -- processes and ports -----------------------------------------------------------------


@contextlib.contextmanager
def serving(handler: Callable[..., BaseRequestHandler]) -> Iterator[int]:
    """Serve HTTP with ``handler`` on loopback from a thread; yields the port."""
    server = ThreadingHTTPServer((LOOPBACK, 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def _wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServerError(f"{process.args!r} exited with {process.returncode}:\n{_read(log)}")
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), 0.2):
            return
        time.sleep(0.05)
    raise ServerError(f"{process.args!r} did not listen on {port}:\n{_read(log)}")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ""


def stop_process(process: subprocess.Popen[bytes]) -> None:
    """SIGTERM, then SIGKILL after 5 s; always reaped."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)


# -- sshd ------------------------------------------------------------------------------------


@dataclass
class SshServer:
    root: Path
    port: int
    user: str
    host_public_key: str  # "ssh-ed25519 AAAA..." (no comment)
    authorized_keys: Path
    log: Path
    process: subprocess.Popen[bytes]

    def url(self, repo: Path) -> str:
        return f"ssh://{self.user}@{LOOPBACK}:{self.port}{repo.resolve()}"

    def known_hosts_line(self, public_key: str | None = None) -> str:
        """The known_hosts entry for this server; ``public_key`` to list another key."""
        return f"[{LOOPBACK}]:{self.port} {public_key or self.host_public_key}\n"

    def write_known_hosts(self, path: Path, public_key: str | None = None) -> Path:
        path.write_text(self.known_hosts_line(public_key), encoding="utf-8")
        return path

    def authorize(self, public_line: str, options: str = "restrict") -> None:
        """Let the holder of ``public_line`` log in (``restrict``: no pty, no forwarding)."""
        line = f"{options} {public_line.strip()}" if options else public_line.strip()
        with self.authorized_keys.open("a", encoding="utf-8") as file:
            file.write(line + "\n")

    def new_client_key(self, path: Path, comment: str, *, authorize: bool = True) -> Path:
        """An ed25519 key pair at ``path`` / ``path.pub`` (OpenSSH format, mode 0600)."""
        keys.new_keypair(path, comment)
        if authorize:
            self.authorize(path.with_name(path.name + ".pub").read_text(encoding="utf-8"))
        return path

    def server_log(self) -> str:
        return _read(self.log)


def _host_public_key(key_path: Path) -> str:
    fields = key_path.with_name(key_path.name + ".pub").read_text(encoding="utf-8").split()
    return f"{fields[0]} {fields[1]}"


@contextlib.contextmanager
def sshd(
    root: Path,
    *,
    accept_git_protocol: bool = True,
    authorized_keys: Path | None = None,
    settings: Sequence[str] = ("MaxStartups 100",),
) -> Iterator[SshServer]:
    """A real sshd on 127.0.0.1 with its own ed25519 host key.

    ``accept_git_protocol``: ``AcceptEnv GIT_PROTOCOL``, without which git over ssh falls
    back to protocol v0 (the whole ref advertisement) whatever the client asks for.
    ``authorized_keys``: the file sshd reads keys from (a gitops server's generated one);
    by default an empty file of its own that :meth:`SshServer.authorize` appends to.
    ``settings``: more sshd_config lines (e.g. ``MaxStartups``, or a gitops server's
    generated snippet, which ends in a ``Match`` block).
    """
    program = find_sshd()
    if program is None:
        raise ServerError("sshd is not installed (Debian: openssh-server)")
    root.mkdir(parents=True, exist_ok=True)
    # sshd refuses to start without its privilege separation directory.
    Path("/run/sshd").mkdir(mode=0o755, parents=True, exist_ok=True)
    host_key = root / "ssh_host_ed25519_key"
    keys.new_keypair(host_key, "sshd-test-host-key")
    authorized = authorized_keys or root / "authorized_keys"
    if authorized_keys is None:
        authorized.touch(mode=0o600)
    port = free_port()
    config = root / "sshd_config"
    lines = [
        f"Port {port}",
        f"ListenAddress {LOOPBACK}",
        f"HostKey {host_key}",
        f"AuthorizedKeysFile {authorized}",
        "AuthenticationMethods publickey",
        "PubkeyAuthentication yes",
        "PasswordAuthentication no",
        "KbdInteractiveAuthentication no",
        "PermitRootLogin prohibit-password",
        "UsePAM no",
        "StrictModes no",
        f"PidFile {root / 'sshd.pid'}",
        "LogLevel VERBOSE",
    ]
    if accept_git_protocol:
        lines.append("AcceptEnv GIT_PROTOCOL")
    lines += settings  # last: they may end in a Match block
    config.write_text("\n".join(lines) + "\n", encoding="utf-8")
    log = root / "sshd.log"
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [program, "-D", "-e", "-f", str(config)],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
        )
    try:
        _wait_for_port(port, process, log)
        yield SshServer(
            root=root,
            port=port,
            user=getpass.getuser(),
            host_public_key=_host_public_key(host_key),
            authorized_keys=authorized,
            log=log,
            process=process,
        )
    finally:
        stop_process(process)


def gitops_command() -> str:
    """How sshd's forced commands and git's hooks run the gitops under test: this Python,
    with this checkout on its path (sshd passes no PYTHONPATH of ours)."""
    root = Path(__file__).resolve().parent.parent
    return f"env PYTHONPATH={root} {sys.executable} -m gitops"


# -- git-http-backend behind Basic auth ----------------------------------------------------


@dataclass
class HttpStats:
    """What the HTTP server saw, for assertions (request lines and auth outcomes)."""

    requests: list[str] = field(default_factory=list)
    unauthorized: int = 0
    with_authorization: int = 0  # requests that carried an Authorization header
    bytes_in: int = 0  # request bodies
    bytes_out: int = 0  # response bodies
    lock: threading.Lock = field(default_factory=threading.Lock)


class _GitHttpHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body are separate writes
    # Set on the per-server subclass made by git_http_server().
    project_root: ClassVar[Path]
    backend: ClassVar[str]
    token: ClassVar[str | None]
    stats: ClassVar[HttpStats]

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    @override
    def log_message(self, format: str, *args: object) -> None:
        pass  # quiet: the stats record the requests

    def _user(self) -> str | None:
        """The authenticated user name, "anonymous" without a token, else None."""
        if self.token is None:
            return "anonymous"
        header = self.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() != "basic":
            return None
        try:
            user, _, password = base64.b64decode(value, validate=True).decode().partition(":")
        except (binascii.Error, UnicodeDecodeError):
            return None
        if not hmac.compare_digest(password.encode(), self.token.encode()):
            return None
        return user or "token"

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip(), 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _send(self, status: int, headers: Sequence[tuple[str, str]], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers:
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        with self.stats.lock:
            self.stats.bytes_out += len(body)

    def _serve(self) -> None:
        body = self._body() if self.command == "POST" else b""
        with self.stats.lock:
            self.stats.requests.append(f"{self.command} {self.path}")
            self.stats.bytes_in += len(body)
            if "Authorization" in self.headers:
                self.stats.with_authorization += 1
        user = self._user()
        if user is None:
            with self.stats.lock:
                self.stats.unauthorized += 1
            self._send(
                401,
                [("WWW-Authenticate", 'Basic realm="git"'), ("Content-Type", "text/plain")],
                b"authentication required\n",
            )
            return
        path, _, query = self.path.partition("?")
        env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.project_root),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_PROJECT_ROOT": str(self.project_root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GATEWAY_INTERFACE": "CGI/1.1",
            "SERVER_PROTOCOL": "HTTP/1.1",
            "SERVER_SOFTWARE": "gitops-test-http",
            "REQUEST_METHOD": self.command,
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REMOTE_ADDR": self.client_address[0],
            # Set only for authenticated users: git-http-backend then enables receive-pack.
            "REMOTE_USER": user,
            "CONTENT_LENGTH": str(len(body)),
        }
        for header, variable in (
            ("Content-Type", "CONTENT_TYPE"),
            ("Content-Encoding", "HTTP_CONTENT_ENCODING"),
            ("Git-Protocol", "HTTP_GIT_PROTOCOL"),
        ):
            value = self.headers.get(header)
            if value is not None:
                env[variable] = value
        result = subprocess.run(
            [self.backend], check=False, input=body, capture_output=True, env=env, timeout=300
        )
        head, separator, payload = result.stdout.partition(b"\r\n\r\n")
        if not separator:
            self._send(500, [("Content-Type", "text/plain")], result.stderr or b"backend failed")
            return
        status = 200
        headers = []
        for line in head.decode("latin-1").split("\r\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.strip().split()[0])
            elif name:
                headers.append((name.strip(), value.strip()))
        self._send(status, headers, payload)


@dataclass
class HttpServer:
    project_root: Path
    port: int
    stats: HttpStats

    @property
    def base_url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def url(self, repo: Path) -> str:
        return f"{self.base_url}/{repo.resolve().relative_to(self.project_root.resolve())}"


@contextlib.contextmanager
def git_http_server(project_root: Path, *, token: str | None) -> Iterator[HttpServer]:
    """git's smart-HTTP CGI for every repository under ``project_root``.

    With ``token``, every request needs ``Authorization: Basic`` whose password is the token;
    pushing is allowed to authenticated users. Without, anyone may fetch and push.
    """
    backend = find_http_backend()
    if backend is None:
        raise ServerError("git-http-backend is not installed (it ships with git)")
    stats = HttpStats()
    handler = type(
        "GitHttpHandler",
        (_GitHttpHandler,),
        {"project_root": project_root, "backend": backend, "token": token, "stats": stats},
    )
    with serving(handler) as port:
        yield HttpServer(project_root, port, stats)


# -- git daemon ----------------------------------------------------------------------------


@dataclass
class GitDaemon:
    base: Path
    port: int

    def url(self, repo: Path) -> str:
        return f"git://{LOOPBACK}:{self.port}/{repo.resolve().relative_to(self.base.resolve())}"


@contextlib.contextmanager
def git_daemon(base: Path, log: Path) -> Iterator[GitDaemon]:
    """``git daemon`` exporting every repository under ``base`` (read only)."""
    port = free_port()
    env = {**os.environ, "GIT_CONFIG_NOSYSTEM": "1", "GIT_CONFIG_GLOBAL": "/dev/null"}
    with log.open("wb") as log_file:
        process = subprocess.Popen(
            [
                "git",
                "daemon",
                "--reuseaddr",
                f"--listen={LOOPBACK}",
                f"--port={port}",
                f"--base-path={base}",
                "--export-all",
                "--informative-errors",
                str(base),
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=log_file,
            env=env,
        )
    try:
        _wait_for_port(port, process, log)
        yield GitDaemon(base, port)
    finally:
        stop_process(process)


# -- counting TCP proxy ------------------------------------------------------------------


class CountingProxy:
    """Forwards 127.0.0.1:``port`` to ``target_port`` and counts the bytes each way."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.to_server = 0
        self.from_server = 0
        self.connections = 0
        self._lock = threading.Lock()
        self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind((LOOPBACK, 0))
        self._listener.listen(64)
        self.port: int = self._listener.getsockname()[1]
        self._sockets: list[socket.socket] = []
        self._threads: list[threading.Thread] = []
        self._closed = False
        self._acceptor = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)

    def __enter__(self) -> CountingProxy:
        self._acceptor.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def reset(self) -> None:
        with self._lock:
            self.to_server = self.from_server = self.connections = 0

    @property
    def total(self) -> int:
        return self.to_server + self.from_server

    def close(self) -> None:
        self._closed = True
        with contextlib.suppress(OSError):
            self._listener.close()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(OSError):
                sock.close()
        self._acceptor.join(timeout=5)
        for thread in self._threads:
            thread.join(timeout=5)

    def _accept(self) -> None:
        while not self._closed:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return
            try:
                upstream = socket.create_connection((LOOPBACK, self.target_port))
            except OSError:
                client.close()
                continue
            # No Nagle on the relay: its small writes must not wait for delayed ACKs.
            for sock in (client, upstream):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self.connections += 1
                self._sockets += [client, upstream]
            for source, sink, upward in ((client, upstream, True), (upstream, client, False)):
                thread = threading.Thread(
                    target=self._pump, args=(source, sink, upward), daemon=True
                )
                self._threads.append(thread)
                thread.start()

    def _pump(self, source: socket.socket, sink: socket.socket, upward: bool) -> None:
        try:
            while True:
                data = source.recv(65536)
                if not data:
                    break
                with self._lock:
                    if upward:
                        self.to_server += len(data)
                    else:
                        self.from_server += len(data)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)


# -- fleets of refs --------------------------------------------------------------------------

FIXED_DATE = "1700000000 +0000"


def host_names(count: int) -> list[str]:
    width = max(4, len(str(count)))
    return [f"host-{i:0{width}d}" for i in range(count)]


def add_fleet_refs(repo: Path, hosts: Sequence[str]) -> None:
    """Give every host in ``hosts`` a ``deploy/<host>`` and a ``reports/<host>`` branch,
    each one commit with a small tree of its own, in the bare repository ``repo``.

    Dates are fixed, so a host's commits have the same ids in every repository. The refs
    end up packed (``git pack-refs --all``).
    """
    stream: list[bytes] = []
    mark = 0

    def blob(text: str) -> int:
        nonlocal mark
        mark += 1
        data = text.encode()
        stream.append(b"blob\nmark :%d\ndata %d\n%s\n" % (mark, len(data), data))
        return mark

    def commit(ref: str, message: str, files: dict[str, int]) -> None:
        data = message.encode()
        lines = [
            f"commit {ref}",
            f"author Publisher <publisher@example.org> {FIXED_DATE}",
            f"committer Publisher <publisher@example.org> {FIXED_DATE}",
            f"data {len(data)}",
        ]
        stream.append("\n".join(lines).encode() + b"\n" + data + b"\n")
        for path, blob_mark in files.items():
            stream.append(f"M 100644 :{blob_mark} {path}\n".encode())
        stream.append(b"\n")

    for host in hosts:
        host_yaml = blob(f"profiles: [workstation]\nowner: {host}@example.org\n")
        commit(
            f"refs/heads/deploy/{host}", f"deploy {host}", {f"hosts/{host}/host.yaml": host_yaml}
        )
        status = blob(f'{{"schema": 1, "host": "{host}", "result": "applied"}}\n')
        commit(f"refs/heads/reports/{host}", f"report {host}", {"status.json": status})
    stream.append(b"done\n")
    subprocess.run(
        ["git", "--git-dir", str(repo), "fast-import", "--quiet", "--done"],
        check=True,
        input=b"".join(stream),
    )
    # As on a real server after gc: thousands of loose ref files would slow every request.
    subprocess.run(["git", "--git-dir", str(repo), "pack-refs", "--all"], check=True)
