"""The agent's commands: once/status/trigger through the real CLI, the run loop woken by
a trigger, and the agent configuration file's errors."""

from __future__ import annotations

import contextlib
import functools
import http.client
import http.server
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import pytest

from gitops.agent import trigger
from gitops.agent.config import AgentConfig, parse_config
from gitops.agent.cycle import CycleResult
from gitops.agent.loop import Wake, Wakeup, run_forever
from gitops.demo import standin
from gitops.demo.scenario import DemoFleet
from gitops.errors import GitopsError
from gitops.protocol import Result, parse_time
from testing.helpers import agent_config_file, gitops, published_demo

HOSTS = {"alpha": ["workstation"], "beta": ["server"]}


@pytest.fixture
def demo(tmp_path: Path) -> DemoFleet:
    return published_demo(tmp_path / "demo", HOSTS)


def test_once_and_status_json(demo: DemoFleet) -> None:
    config = agent_config_file(demo, "alpha")
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
        "agent", "--config", agent_config_file(demo, "alpha"), "--host", "Bad_Name", "status"
    )
    assert overridden.returncode == 1
    assert "host: 'Bad_Name' is not a valid host name" in overridden.stderr


def test_once_exits_non_zero_when_refused(demo: DemoFleet) -> None:
    config = agent_config_file(demo, "beta")
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

    def answer(connection: socket.socket) -> None:
        with connection:
            subprocess.run(
                [sys.executable, "-m", "gitops", *map(str, argv)],
                stdin=connection.fileno(),
                stdout=connection.fileno(),
                stderr=subprocess.DEVNULL,
                check=False,
                timeout=30,
            )

    def serve() -> None:
        while True:
            try:
                connection, _ = server.accept()
            except OSError:
                return  # the listening socket was shut down
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield server.getsockname()[1]
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        thread.join(timeout=30)


def http_request(
    port: int, method: str, headers: dict[str, str] | None = None, body: str | None = None
) -> tuple[int, dict[str, str], bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    try:
        connection.request(method, "/", body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


@pytest.fixture
def trigger_socket(demo: DemoFleet) -> Iterator[tuple[int, Path]]:
    """The module's trigger socket, answered by the real CLI; the port and the trigger file."""
    config = agent_config_file(demo, "alpha")
    with socket_activated(["agent", "--config", config, "trigger", "--http"]) as port:
        yield port, demo.agent_config("alpha").trigger_file


def requested(trigger: Path) -> bool:
    """Whether an update was asked for (the trigger file holds the time of the last one)."""
    return trigger.exists() and trigger.read_text().strip() != ""


def test_a_script_pulls_the_trigger_with_its_header_at_most_every_30_s(
    trigger_socket: tuple[int, Path],
) -> None:
    port, trigger = trigger_socket
    status, headers, body = http_request(port, "POST", {"X-Gitops-Trigger": "1"})
    assert status == 200, body
    assert body == b"update requested: the agent will fetch, verify and apply now\n"
    assert headers["Content-Length"] == str(len(body))
    assert requested(trigger)
    stamp = trigger.read_text()
    status, headers, body = http_request(port, "POST", {"X-Gitops-Trigger": "1"})
    assert status == 429, body
    assert 1 <= int(headers["Retry-After"]) <= 30
    assert trigger.read_text() == stamp, "a refused request changes nothing"


def test_the_bookmarked_page_updates_the_machine_with_its_button(
    trigger_socket: tuple[int, Path],
) -> None:
    port, trigger = trigger_socket
    status, headers, page = http_request(port, "GET", {"Sec-Fetch-Site": "none"})
    assert status == 200
    assert headers["Content-Type"] == "text/html; charset=utf-8"
    assert b'<form method="post" action="/">' in page
    assert headers["X-Frame-Options"] == "DENY"
    assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
    assert not requested(trigger), "showing the page triggers nothing"
    # The button: a same-origin form POST, as a browser sends it.
    form = {
        "Origin": f"http://127.0.0.1:{port}",
        "Sec-Fetch-Site": "same-origin",
        "Sec-Fetch-Mode": "navigate",
        "Sec-Fetch-Dest": "document",
        "Content-Type": "application/x-www-form-urlencoded",
    }
    status, _, page = http_request(port, "POST", form, body="")
    assert status == 200, page
    assert b"update requested" in page
    assert requested(trigger)
    status, _, page = http_request(port, "POST", form, body="")
    assert status == 429
    assert b"try again in" in page


@pytest.mark.parametrize(
    ("method", "headers", "status"),
    [
        pytest.param("GET", {}, 200, id="img-without-fetch-metadata"),
        pytest.param(
            "GET",
            {
                "Sec-Fetch-Site": "cross-site",
                "Sec-Fetch-Mode": "no-cors",
                "Sec-Fetch-Dest": "image",
            },
            403,
            id="img-cross-site",
        ),
        pytest.param("POST", {}, 403, id="post-without-header-or-origin"),
        pytest.param(
            "POST",
            {
                "Origin": "http://evil.example",
                "Sec-Fetch-Site": "cross-site",
                "Content-Type": "application/x-www-form-urlencoded",
            },
            403,
            id="cross-site-form",
        ),
        pytest.param(
            "POST", {"Origin": "http://evil.example"}, 403, id="cross-site-form-old-browser"
        ),
        pytest.param("POST", {"Origin": "null"}, 403, id="sandboxed-or-file-origin"),
        pytest.param(
            "POST",
            {"Origin": "http://127.0.0.1:8000", "Sec-Fetch-Site": "same-site"},
            403,
            id="another-local-service",
        ),
        pytest.param(
            "POST",
            {"Host": "rebound.example:{port}", "Origin": "http://rebound.example:{port}"},
            403,
            id="dns-rebinding",
        ),
        pytest.param(
            "POST",
            {"X-Gitops-Trigger": "1", "Sec-Fetch-Site": "cross-site"},
            403,
            id="header-but-cross-site",
        ),
        pytest.param(
            "POST",
            {
                "Origin": "http://127.0.0.1:{port}",
                "Sec-Fetch-Site": "same-origin",
                "Sec-Fetch-Dest": "iframe",
            },
            403,
            id="framed",
        ),
        pytest.param(
            "OPTIONS",
            {
                "Origin": "http://evil.example",
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "x-gitops-trigger",
            },
            405,
            id="cors-preflight",
        ),
        pytest.param("DELETE", {}, 405, id="delete"),
    ],
)
def test_requests_a_web_page_can_make_do_not_pull_the_trigger(
    trigger_socket: tuple[int, Path], method: str, headers: dict[str, str], status: int
) -> None:
    port, trigger = trigger_socket
    sent = {name: value.format(port=port) for name, value in headers.items()}
    answer, answer_headers, body = http_request(
        port, method, sent, body="" if method == "POST" else None
    )
    assert answer == status, body
    assert not requested(trigger)
    assert "Access-Control-Allow-Origin" not in answer_headers


def test_the_trigger_also_answers_on_pipes(demo: DemoFleet) -> None:
    """inetd style: the request on stdin, the answer on stdout."""
    config = agent_config_file(demo, "alpha")
    trigger_file = demo.agent_config("alpha").trigger_file
    command = [
        sys.executable,
        "-m",
        "gitops",
        "agent",
        "--config",
        str(config),
        "trigger",
        "--http",
    ]
    page = subprocess.run(
        command,
        input=b"GET / HTTP/1.1\r\nHost: 127.0.0.1:51337\r\n\r\n",
        capture_output=True,
        check=False,
    )
    assert page.stdout.startswith(b"HTTP/1.0 200 OK\r\n"), page.stderr
    assert not requested(trigger_file)
    fired = subprocess.run(
        command,
        input=b"POST / HTTP/1.1\r\nHost: 127.0.0.1:51337\r\nX-Gitops-Trigger: 1\r\n"
        b"Content-Length: 0\r\n\r\n",
        capture_output=True,
        check=False,
    )
    assert fired.returncode == 0, fired.stderr
    head, _, body = fired.stdout.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200 OK\r\n")
    assert body == b"update requested: the agent will fetch, verify and apply now\n"
    assert requested(trigger_file)


def test_run_loop_wakes_on_trigger_without_forcing_a_report(demo: DemoFleet) -> None:
    config = replace(demo.agent_config("alpha"), poll_interval=3600, poll_jitter=0)
    cycles: list[tuple[Result | None, Wake, bool]] = []
    stop = threading.Event()

    def record(result: CycleResult | None, reason: Wakeup) -> None:
        cycles.append(
            (result.result if result else None, reason.why, bool(result and result.report))
        )

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
        assert cycles == [(Result.APPLIED, Wake.START, True)]
        time.sleep(0.5)  # let the watcher start
        trigger.request_cycle(config.trigger_file, None)
        thread.join(timeout=20)
        assert not thread.is_alive(), "a trigger must wake the loop long before the hour-long poll"
        assert cycles[1] == (Result.UNCHANGED, Wake.TRIGGER, False), "a trigger is no report"
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


CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or ""
CHROMEDRIVER = shutil.which("chromedriver") or ""


@pytest.mark.skipif(
    not (CHROMIUM and CHROMEDRIVER) and not os.environ.get("CI"),
    reason="chromium and chromedriver are not installed (CI installs them)",
)
def test_in_a_real_browser_a_web_page_cannot_but_the_button_can(
    trigger_socket: tuple[int, Path], tmp_path: Path
) -> None:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    port, trigger = trigger_socket
    target = f"http://127.0.0.1:{port}/"
    # A page on another site the user opens: an image, a form that submits itself, and a
    # script that POSTs with and without the script header.
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "index.html").write_text(
        f"""<!doctype html><title>news</title>
<img src="{target}">
<iframe name="sink" id="sink"></iframe>
<form id="f" method="post" action="{target}" target="sink"><input name="a" value="1"></form>
<script>
const settled = (promise) => promise.then(() => {{}}, () => {{}});
const image = new Promise((done) => {{
  const img = new Image(); img.onload = img.onerror = done; img.src = "{target}";
}});
const framed = new Promise((done) => {{ document.getElementById("sink").onload = done; }});
document.getElementById("f").submit();
Promise.all([
  image,
  framed,
  settled(fetch("{target}", {{method: "POST", mode: "no-cors", body: "x"}})),
  settled(fetch("{target}", {{method: "POST", headers: {{"X-Gitops-Trigger": "1"}}}})),
]).then(() => {{ document.title = "done"; }});
</script>"""
    )
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0),
        functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(evil)),
    )
    threading.Thread(target=server.serve_forever, daemon=True).start()
    options = webdriver.ChromeOptions()
    options.binary_location = CHROMIUM
    for flag in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-quic",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(flag)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=CHROMEDRIVER))
    try:
        # "localhost" and "127.0.0.1" are different sites to the browser.
        browser.get(f"http://localhost:{server.server_address[1]}/")
        # Every request above has had its answer (the decision comes before it).
        WebDriverWait(browser, 20).until(lambda d: d.title == "done")
        assert not requested(trigger), "a web page pulled the trigger"
        browser.get(target)  # the user's bookmark
        browser.find_element(By.TAG_NAME, "button").click()
        WebDriverWait(browser, 10).until(lambda d: "update requested" in d.page_source)
        assert requested(trigger)
    finally:
        browser.quit()
        server.shutdown()
        server.server_close()


# -- running the agent: who, where, and what it says (issue 9) ----------------------------

NOBODY = 65534


def as_nobody(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """``python -m gitops ...`` as the unprivileged user nobody (setpriv, util-linux)."""
    return subprocess.run(
        [
            "setpriv",
            f"--reuid={NOBODY}",
            f"--regid={NOBODY}",
            "--clear-groups",
            sys.executable,
            "-m",
            "gitops",
            *map(str, args),
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "HOME": "/nonexistent"},
    )


def flags(config: AgentConfig) -> list[str | Path]:
    """The agent's settings as command-line flags (no configuration file to read)."""
    return [
        "--host", config.host,
        "--remote", config.remote,
        "--trusted-publishers", config.trusted_publishers,
        "--signing-key", config.signing_key,
        "--state-dir", config.state_dir,
        "--system-profile", config.system_profile,
    ]  # fmt: skip


needs_root = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("setpriv"),
    reason="switching to another user needs root and setpriv",
)


@needs_root
def test_the_agent_as_a_normal_user_says_run_as_root(demo: DemoFleet) -> None:
    done = as_nobody("agent", *flags(demo.agent_config("alpha")), "once")
    assert done.returncode == 1
    assert done.stderr.startswith("gitops: error: gitops agent must run as root (the agent ")
    assert done.stderr.count("\n") == 1, done.stderr
    assert "Traceback" not in done.stderr and "unexpected" not in done.stderr


@pytest.fixture
def readable_state(demo: DemoFleet) -> Iterator[AgentConfig]:
    """alpha's agent with its state where other users can reach it, as the module's 0711
    state directory (pytest's own temporary directories are 0700)."""
    top = Path(tempfile.mkdtemp(prefix="gitops-state-", dir="/tmp"))
    top.chmod(0o711)
    state_dir = top / "gitops-agent"
    state_dir.mkdir(mode=0o711)
    try:
        yield replace(demo.agent_config("alpha"), state_dir=state_dir)
    finally:
        shutil.rmtree(top)


@needs_root
def test_status_needs_no_root(readable_state: AgentConfig) -> None:
    config = readable_state
    from gitops.agent.loop import run_cycle

    applied = run_cycle(config)
    assert applied.result == Result.APPLIED
    done = as_nobody("agent", *flags(config), "status", "--json")
    assert done.returncode == 0, done.stderr
    status = json.loads(done.stdout)
    assert status["result"] == "applied"
    assert status["applied"] == applied.deploy_seen
    assert status["pending_reports"] == 0
    assert status["reboot_pending"] is False
    assert parse_time(status["time"]) and parse_time(status["last_report_time"])
    assert (config.state_dir / "status.json").stat().st_mode & 0o777 == 0o644
    # The state itself stays root's.
    denied = as_nobody("agent", *flags(config), "once")
    assert denied.returncode == 1 and "must run as root" in denied.stderr
    assert (config.state_dir / "state.json").stat().st_mode & 0o777 == 0o600
    text = as_nobody("agent", *flags(config), "status")
    assert text.stdout.startswith("alpha: applied: switched to deploy ")
    assert f"applied: {applied.deploy_seen}" in text.stdout


@needs_root
def test_status_before_any_summary_says_what_to_do(readable_state: AgentConfig) -> None:
    config = readable_state
    from gitops.agent.state import AgentState, StateStore

    StateStore(config.state_dir).save(AgentState(host="alpha"))
    done = as_nobody("agent", *flags(config), "status")
    assert done.returncode == 1
    assert "no status summary yet" in done.stderr
    assert "sudo gitops agent status" in done.stderr
    assert done.stderr.count("\n") == 1


@contextlib.contextmanager
def small_file_system(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (needs root, as the agent does)."""
    path.mkdir(parents=True, exist_ok=True)
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0700", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        check=False,
    )
    if mounted.returncode != 0 and not os.environ.get("CI"):
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip()}")
    assert mounted.returncode == 0, mounted.stderr
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(directory: Path) -> None:
    """Write until the file system is full."""
    with contextlib.suppress(OSError), (directory / "filler").open("wb") as handle:
        while True:
            handle.write(b"\0" * 65536)
            handle.flush()


def test_a_full_or_read_only_state_dir_is_one_clear_line(demo: DemoFleet) -> None:
    config = demo.agent_config("beta")
    with small_file_system(config.state_dir, "16m"):
        assert gitops("agent", *flags(config), "once").returncode == 0
        demo.merge_change({"hosts/beta/notes.txt": "a change\n"}, "beta: change")
        demo.publish()
        fill(config.state_dir)
        full = gitops("agent", *flags(config), "once")
        assert full.returncode == 1
        assert full.stderr.startswith("gitops: error: ")
        assert "no space left on the device; the agent keeps its state in " in full.stderr
        assert full.stderr.count("\n") == 1, full.stderr
        (config.state_dir / "filler").unlink()
        subprocess.run(["mount", "-o", "remount,ro", str(config.state_dir)], check=True)
        read_only = gitops("agent", *flags(config), "once")
        assert read_only.returncode == 1
        assert "read-only file system; the agent keeps its state in " in read_only.stderr
        assert read_only.stderr.count("\n") == 1, read_only.stderr
        assert "unexpected" not in full.stderr + read_only.stderr


def test_once_verbose_shows_each_step_and_the_build_log_as_it_goes(demo: DemoFleet) -> None:
    config = agent_config_file(demo, "alpha")
    demo.merge_change(
        {
            "hosts/alpha/configuration.nix": standin.host_configuration(
                HOSTS["alpha"], {"packages": '[ "$(echo compiling-step-1 >&2; /bin/sleep 3691)" ]'}
            )
        },
        "alpha: a long build",
    )
    demo.publish()
    agent = subprocess.Popen(
        [sys.executable, "-m", "gitops", "-v", "agent", "--config", config, "once"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    seen: list[str] = []
    try:
        assert agent.stderr is not None
        for line in agent.stderr:
            seen.append(line.rstrip("\n"))
            if "compiling-step-1" in line:
                break
        assert agent.poll() is None, "the build's output arrives while it builds"
        agent.send_signal(signal.SIGINT)  # Ctrl-C stops the build with its builders
        assert agent.wait(timeout=30) == 130
    finally:
        agent.kill()
        agent.wait(timeout=30)
    text = "\n".join(seen)
    assert text.index("fetching deploy/alpha") < text.index("building deploy ")
    assert "compiling-step-1" in seen[-1]
    deadline = time.monotonic() + 10
    while builder_running("sleep 3691") and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not builder_running("sleep 3691")


def builder_running(marker: str) -> bool:
    """Whether a process whose command line contains ``marker`` runs."""
    for entry in Path("/proc").iterdir():
        with contextlib.suppress(OSError):
            if entry.name.isdigit() and marker.encode() in (entry / "cmdline").read_bytes():
                return True
    return False
