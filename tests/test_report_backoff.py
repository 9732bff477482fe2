"""The agent's report push when the server is busy: sshd drops connections beyond
``MaxStartups`` before the handshake; the agent waits a jittered, growing time and tries
again, a bounded number of times, and loses nothing. A refusal by a gitops server (it
checked the report and said no) and an unreachable repository are not retried."""

from __future__ import annotations

import random
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pygit2
import pytest

from gitops.agent.mirror import Mirror
from gitops.agent.reporter import Backoff, Reporter
from gitops.protocol import Report, Result, reports_ref
from gitops.system import transport
from gitops.trust import commits, keys
from testing import servers


def report(host: str) -> Report:
    return Report(
        host=host,
        time=datetime.now(UTC).replace(microsecond=0),
        agent_version="test",
        result=Result.UNCHANGED,
        reason="heartbeat",
        report_id=str(uuid.uuid4()),
    )


@pytest.fixture
def busy_sshd(tmp_path: Path) -> Iterator[servers.SshServer]:
    """An sshd that takes one unauthenticated connection at a time."""
    with servers.sshd(tmp_path / "sshd", settings=("MaxStartups 1",)) as server:
        yield server


class Hog:
    """Holds sshd's only pre-authentication slot with a connection that says nothing."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection((servers.LOOPBACK, port))
        self.sock.recv(256)  # sshd's banner
        self._wait_until_full(port)

    @staticmethod
    def _wait_until_full(port: int) -> None:
        """sshd counts the hog a moment after its banner (later on a loaded machine):
        wait until a second connection is really dropped, so the test starts busy."""
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            with socket.create_connection((servers.LOOPBACK, port)) as probe:
                probe.settimeout(5)
                try:
                    banner = probe.recv(256)
                except OSError:
                    banner = b""
            if not banner.startswith(b"SSH-"):
                return
            time.sleep(0.05)
        raise AssertionError("sshd never became busy")

    def held(self) -> bool:
        """Whether sshd still keeps the hog's connection (it says nothing more until the
        client's banner, so any read that does not block means it hung up)."""
        self.sock.setblocking(False)
        try:
            self.sock.recv(1)
        except BlockingIOError:
            return True
        except OSError:
            return False
        return False  # it hung up

    def release(self) -> None:
        self.sock.close()


def test_a_busy_server_is_retried_after_a_jittered_wait(
    busy_sshd: servers.SshServer, tmp_path: Path
) -> None:
    key = busy_sshd.new_client_key(tmp_path / "id", "agent")
    credentials = transport.Credentials(
        ssh_key=key, known_hosts=busy_sshd.write_known_hosts(tmp_path / "known_hosts")
    )
    # The first attempt must meet a busy server: when sshd took it anyway (it let the
    # hog go, on a loaded machine), that run proves nothing and is made again.
    for run in range(3):
        server = tmp_path / f"server-{run}.git"
        subprocess.run(["git", "init", "-q", "--bare", server], check=True)
        mirror = Mirror(tmp_path / f"state-{run}", "web-1")
        hog = Hog(busy_sshd.port)
        waits: list[float] = []

        def sleep(seconds: float, hog: Hog = hog, waits: list[float] = waits) -> None:
            waits.append(seconds)
            hog.release()  # the busy moment passes while the agent waits

        reporter = Reporter(
            mirror,
            keys.load_signing_key(key),
            busy_sshd.url(server),
            credentials,
            backoff=Backoff(base=2.0, cap=30.0, attempts=4),
            sleep=sleep,
            rng=random.Random(7),
        )
        added = reporter.add(report("web-1"))
        outcome = reporter.push()
        hog.release()
        if waits:
            break
    assert outcome.pushed and outcome.pending == 0, outcome
    # sshd frees the slot a moment after the hog hangs up (later on a loaded machine), so
    # the agent may need more than one retry; each wait stays within its jittered bound.
    assert 1 <= len(waits) == reporter.retries < 4
    assert all(0.0 <= wait <= min(30.0, 2.0 * 2**n) for n, wait in enumerate(waits)), waits
    pushed = commits.ref_target(pygit2.Repository(str(server)), reports_ref("web-1"))
    assert pushed == added
    assert "drop connection" in busy_sshd.server_log() or "beginning MaxStartups" in (
        busy_sshd.server_log()
    )


def test_retries_are_bounded_and_the_report_stays_pending(
    busy_sshd: servers.SshServer, tmp_path: Path
) -> None:
    server = tmp_path / "server.git"
    subprocess.run(["git", "init", "-q", "--bare", server], check=True)
    key = busy_sshd.new_client_key(tmp_path / "id", "agent")
    credentials = transport.Credentials(
        ssh_key=key, known_hosts=busy_sshd.write_known_hosts(tmp_path / "known_hosts")
    )
    # The server must stay busy through every attempt: when sshd let the hog go meanwhile
    # (a loaded machine), that run proves nothing and is made again.
    for run in range(3):
        mirror = Mirror(tmp_path / f"state-{run}", "web-1")
        hog = Hog(busy_sshd.port)
        waits: list[float] = []
        try:
            reporter = Reporter(
                mirror,
                keys.load_signing_key(key),
                busy_sshd.url(server),
                credentials,
                backoff=Backoff(base=1.0, cap=3.0, attempts=4),
                sleep=waits.append,
                rng=random.Random(1),
            )
            reporter.add(report("web-1"))
            outcome = reporter.push()
        finally:
            held = hog.held()
            hog.release()
        if held:
            break
    assert held, "sshd let the hog's connection go in every run"
    assert not outcome.pushed and outcome.pending == 1
    assert "MaxStartups" in outcome.message, outcome.message
    # Three waits between four attempts, each below its doubling limit (1, 2, 3 capped).
    assert len(waits) == 3
    assert all(0.0 <= wait <= limit for wait, limit in zip(waits, (1.0, 2.0, 3.0), strict=True))
    assert len(set(waits)) == 3  # jitter: not the same wait each time


def test_the_backoff_limits_double_up_to_the_cap() -> None:
    backoff = Backoff(base=2.0, cap=30.0)
    rng = random.Random(3)
    for retry, limit in enumerate((2.0, 4.0, 8.0, 16.0, 30.0, 30.0), start=1):
        samples = [backoff.delay(retry, rng) for _ in range(200)]
        assert min(samples) >= 0.0 and max(samples) <= limit
        assert max(samples) > limit * 0.8  # the whole range is used, not just the low end


def test_an_unreachable_repository_is_not_retried(tmp_path: Path) -> None:
    key = tmp_path / "id"
    keys.new_keypair(key, "agent")
    mirror = Mirror(tmp_path / "state", "web-1")
    waits: list[float] = []
    reporter = Reporter(
        mirror,
        keys.load_signing_key(key),
        str(tmp_path / "missing.git"),
        transport.Credentials(),
        sleep=waits.append,
    )
    reporter.add(report("web-1"))
    outcome = reporter.push()
    assert not outcome.pushed and outcome.pending == 1
    assert waits == []
