"""A real Prometheus (Debian's ``prometheus``) on loopback, scraping given targets, and a
static HTTP server for files to scrape: for tests that check what Prometheus reads."""

from __future__ import annotations

import contextlib
import functools
import json
import shutil
import subprocess
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from http.server import SimpleHTTPRequestHandler
from pathlib import Path
from typing import Any

from typing_extensions import override

from testing.servers import (
    LOOPBACK,
    ServerError,
    _wait_for_port,
    free_port,
    serving,
    stop_process,
)

UP_TIMEOUT = 20.0  # seconds for Prometheus to start and scrape every target once


def find_prometheus() -> str | None:
    return shutil.which("prometheus")


class _Quiet(SimpleHTTPRequestHandler):
    @override
    def log_message(self, format: str, *args: object) -> None:
        pass


@contextlib.contextmanager
def static_server(directory: Path) -> Iterator[str]:
    """Serve ``directory`` on loopback; yields its base URL (host:port)."""
    with serving(functools.partial(_Quiet, directory=str(directory))) as port:
        yield f"{LOOPBACK}:{port}"


@dataclass
class Prometheus:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def api(self, path: str, **params: str) -> Any:
        query = f"?{urllib.parse.urlencode(params)}" if params else ""
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}{query}", timeout=5) as answer:
            data = json.load(answer)
        assert data["status"] == "success", data
        return data["data"]

    def query(self, expr: str) -> dict[tuple[tuple[str, str], ...], float]:
        """An instant query: each series' labels (without job and instance) -> its value."""
        found = {}
        for item in self.api("query", query=expr)["result"]:
            labels = tuple(
                sorted((k, v) for k, v in item["metric"].items() if k not in ("job", "instance"))
            )
            found[labels] = float(item["value"][1])
        return found

    def value(self, expr: str) -> float:
        (found,) = self.query(expr).values()
        return found

    def wait_until_up(self, jobs: int) -> None:
        """Until each of ``jobs`` targets was scraped, and scraped fine."""
        deadline = time.monotonic() + UP_TIMEOUT
        targets: list[dict[str, Any]] = []
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise ServerError(f"prometheus exited:\n{self.log.read_text(errors='replace')}")
            with contextlib.suppress(OSError):
                targets = self.api("targets")["activeTargets"]
                if len(targets) == jobs and all(t["health"] == "up" for t in targets):
                    return
                bad = [t for t in targets if t["health"] == "down"]
                if bad:
                    raise ServerError(f"a target is down: {bad}")
            time.sleep(0.1)
        raise ServerError(f"targets not up after {UP_TIMEOUT} s: {targets}")


@contextlib.contextmanager
def prometheus(work: Path, targets: Mapping[str, tuple[str, str]]) -> Iterator[Prometheus]:
    """Prometheus scraping each job name -> (host:port, metrics path) every second."""
    binary = find_prometheus()
    if binary is None:
        raise ServerError("prometheus is not installed (.ci/setup test installs it)")
    work.mkdir(parents=True, exist_ok=True)
    jobs = [
        {
            "job_name": job,
            "scrape_interval": "1s",
            "metrics_path": path,
            "static_configs": [{"targets": [address]}],
        }
        for job, (address, path) in targets.items()
    ]
    config = work / "prometheus.yml"
    config.write_text(json.dumps({"global": {"scrape_interval": "1s"}, "scrape_configs": jobs}))
    port = free_port()
    log = work / "prometheus.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={work / 'tsdb'}",
                f"--web.listen-address={LOOPBACK}:{port}",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            cwd=work,
        )
    try:
        _wait_for_port(port, process, log)
        yield Prometheus(f"http://{LOOPBACK}:{port}", process, log)
    finally:
        stop_process(process)
