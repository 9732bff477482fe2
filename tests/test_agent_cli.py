"""The agent's commands: once/status/trigger through the real CLI, the run loop woken by
a trigger, and the agent configuration file's errors."""

from __future__ import annotations

import contextlib
import http.client
import json
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import yaml

from gitops.agent.config import parse_config
from gitops.agent.cycle import CycleResult
from gitops.agent.loop import Wake, Wakeup, run_forever
from gitops.demo.scenario import DemoFleet
from gitops.errors import GitopsError
from gitops.protocol import Result
from testing.helpers import published_demo

HOSTS = {"alpha": ["workstation"], "beta": ["server"]}


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


def write_config(demo: DemoFleet, host: str) -> Path:
    config = demo.agent_config(host)
    data = {
        "host": config.host,
        "remote": config.remote,
        "trusted_publishers": str(config.trusted_publishers),
        "signing_key": str(config.signing_key),
        "state_dir": str(config.state_dir),
        "system_profile": str(config.system_profile),
        "root": str(config.root),
        "health": {"grace": 0, "commands": [list(config.health.commands[0])]},
    }
    path = demo.root / f"{host}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def gitops(*args: str | Path, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "gitops", *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        input=input,
    )


def test_once_and_status_json(demo: DemoFleet) -> None:
    config = write_config(demo, "alpha")
    done = gitops("agent", "--config", config, "once", "--json")
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["result"] == "applied"
    assert result["reported"] and result["pushed"]
    status = json.loads(gitops("agent", "--config", config, "status", "--json").stdout)
    assert status["applied"] == result["deploy_seen"]
    assert status["pending_reports"] == 0
    text = gitops("agent", "--config", config, "status").stdout
    assert f"applied: {result['deploy_seen']}" in text


def test_flags_override_and_replace_the_file(demo: DemoFleet) -> None:
    config = demo.agent_config("beta")
    flags_only = gitops(
        "agent",
        "--host", "beta",
        "--remote", config.remote,
        "--trusted-publishers", config.trusted_publishers,
        "--signing-key", config.signing_key,
        "--state-dir", config.state_dir,
        "--system-profile", config.system_profile,
        "--action", "test",
        "once", "--json",
    )  # fmt: skip
    assert flags_only.returncode == 0, flags_only.stderr
    assert json.loads(flags_only.stdout)["result"] == "applied"
    overridden = gitops(
        "agent", "--config", write_config(demo, "alpha"), "--host", "Bad_Name", "status"
    )
    assert overridden.returncode == 1
    assert "host: 'Bad_Name' is not a valid host name" in overridden.stderr


def test_once_exits_non_zero_when_refused(demo: DemoFleet) -> None:
    config = write_config(demo, "beta")
    demo.push_unsigned("beta")
    done = gitops("agent", "--config", config, "once")
    assert done.returncode == 1
    assert done.stdout.startswith("beta: rejected: deploy commit ")
    assert "not signed" in done.stdout


@contextlib.contextmanager
def socket_activated(argv: list[str | Path]) -> Iterator[int]:
    """Listen on loopback and run ``argv`` per connection with the connection as its stdin
    and stdout, as systemd's socket units with ``Accept=yes`` do; yields the port."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return  # the listening socket was shut down
            with connection:
                subprocess.run(
                    [sys.executable, "-m", "gitops", *map(str, argv)],
                    stdin=connection.fileno(),
                    stdout=connection.fileno(),
                    stderr=subprocess.DEVNULL,
                    check=False,
                    timeout=30,
                )

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=30)


def http_request(
    port: int, method: str, headers: dict[str, str] | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, "/", headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def test_trigger_over_http_touches_the_trigger_file(demo: DemoFleet) -> None:
    config = write_config(demo, "alpha")
    trigger = demo.agent_config("alpha").trigger_file
    with socket_activated(["agent", "--config", config, "trigger", "--http"]) as port:
        status, headers, body = http_request(port, "POST")
        assert status == 200
        assert headers["Content-Length"] == str(len(body))
        assert body.startswith(b"update requested")
        assert trigger.exists()
        trigger.unlink()
        status, _, _ = http_request(port, "DELETE")
        assert status == 405
        assert not trigger.exists()


def test_run_loop_wakes_on_trigger(demo: DemoFleet) -> None:
    config = replace(demo.agent_config("alpha"), poll_interval=3600, poll_jitter=0)
    cycles: list[tuple[Result | None, Wake]] = []
    stop = threading.Event()

    def record(result: CycleResult | None, reason: Wakeup) -> None:
        cycles.append((result.result if result else None, reason.why))

    thread = threading.Thread(
        target=run_forever,
        args=(config,),
        kwargs={"stop": stop, "max_cycles": 2, "on_cycle": record},
    )
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while not cycles and time.monotonic() < deadline:
            time.sleep(0.05)
        assert cycles == [(Result.APPLIED, Wake.START)]
        time.sleep(0.5)  # let the watcher start
        config.trigger_file.touch()
        thread.join(timeout=20)
        assert not thread.is_alive(), "a trigger must wake the loop long before the hour-long poll"
        assert len(cycles) == 2
        assert cycles[1][1] == Wake.TRIGGER
        assert cycles[1][0] == Result.UNCHANGED
    finally:
        stop.set()
        thread.join(timeout=5)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "host: Bad_Name\nremote: x\ntrusted_publishers: /p\n",
            "host: 'Bad_Name' is not a valid host name",
        ),
        ("host: a\nremote: x\n", "trusted_publishers: is missing"),
        (
            "host: a\nremote: x\ntrusted_publishers: relative\n",
            "'relative' must be an absolute path",
        ),
        (
            "host: a\nremote: ssh://git@h/x.git\ntrusted_publishers: /p\n",
            "known_hosts: is required for an ssh remote",
        ),
        (
            "host: a\nremote: x\ntrusted_publishers: /p\naction: reboot\n",
            "'reboot' is not switch, boot or test",
        ),
        (
            "host: a\nremote: x\ntrusted_publishers: /p\npoll_intervall: 5m\n",
            "poll_intervall: unknown setting",
        ),
        (
            "host: a\nremote: x\ntrusted_publishers: /p\nhealth: {commands: [[]]}\n",
            "health.commands[0]",
        ),
    ],
)
def test_config_errors_name_the_field(text: str, message: str) -> None:
    with pytest.raises(GitopsError) as caught:
        parse_config(text, "/etc/gitops/agent.yaml")
    assert message in str(caught.value)
    assert str(caught.value).startswith("/etc/gitops/agent.yaml: invalid agent configuration")


def test_missing_config_is_one_clear_line(tmp_path: Path) -> None:
    done = gitops("agent", "--config", tmp_path / "nope.yaml", "once")
    assert done.returncode == 1
    assert (
        done.stderr
        == f"gitops: error: {tmp_path / 'nope.yaml'}: cannot read the agent configuration (No such file or directory); pass --config\n"
    )


def test_debug_shows_the_traceback(tmp_path: Path) -> None:
    done = gitops("--debug", "agent", "--config", tmp_path / "nope.yaml", "once")
    assert done.returncode != 0
    assert "Traceback" in done.stderr


def test_usage_errors_exit_2() -> None:
    done = gitops("publish")
    assert done.returncode == 2
    assert "the following arguments are required: --key" in done.stderr
