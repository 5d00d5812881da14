"""Start ``imageclf serve`` (gunicorn) on a free local port for a test, and stop it."""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

STARTUP_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RunningServer:
    def __init__(self, port: int, process: subprocess.Popen, log: Path) -> None:
        self.port, self.process, self.log = port, process, log

    def request(self, method: str, path: str, body=None, headers=None):
        """One request on a new connection: (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return sorted(int(pid) for pid in path.read_text().split())

    def wait_ready(self, timeout_s: float = STARTUP_S) -> None:
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.text()}")
            with contextlib.suppress(OSError):
                if self.request("GET", "/readyz")[0] == 200:
                    return
            if time.monotonic() > deadline:
                raise RuntimeError(f"server not ready after {timeout_s}s:\n{self.text()}")
            time.sleep(0.2)

    def text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> int:
        return stop_process(self.process)


def stop_process(process: subprocess.Popen) -> int:
    """SIGTERM (a clean gunicorn shutdown), then SIGKILL after 30 s; the exit status."""
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    return process.returncode


@contextlib.contextmanager
def serving(
    model: Path, folder: Path, *, workers: int = 2, env: dict[str, str] | None = None
) -> Iterator[RunningServer]:
    """``imageclf serve --model MODEL`` until the block ends; its log is ``folder/server.log``."""
    port = free_port()
    log = folder / "server.log"
    command = [sys.executable, "-m", "imageclf", "serve", "--model", str(model)]
    command += ["--port", str(port), "--workers", str(workers)]
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=full_env)
    server = RunningServer(port, process, log)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()
