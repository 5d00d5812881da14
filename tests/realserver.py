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
    def __init__(self, port: int, process: subprocess.Popen, log: Path, home: Path) -> None:
        self.port, self.process, self.log, self.home = port, process, log, home

    def request(self, method: str, path: str, body=None, headers=None, chunked=False):
        """One request on a new connection: (status, headers, body)."""
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()

    def worker_pids(self) -> list[int]:
        path = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
        return sorted(int(pid) for pid in path.read_text().split())

    def wait_ready(self, workers: int, timeout_s: float = STARTUP_S) -> None:
        """Until /readyz answers 200 and all ``workers`` have started."""
        deadline = time.monotonic() + timeout_s
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"server exited ({self.process.returncode}):\n{self.text()}")
            with contextlib.suppress(OSError):
                ready = self.request("GET", "/readyz")[0] == 200
                if ready and len(self.worker_pids()) == workers:
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


def stop_group(process: subprocess.Popen, sig: int, timeout: float) -> None:
    """Send ``sig`` to the process's group (started with ``start_new_session``) and wait;
    past ``timeout`` SIGKILL the group, then raise TimeoutExpired: a test that expected a
    prompt exit fails, and no process outlives it either way."""
    os.killpg(process.pid, sig)
    try:
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
        raise


@contextlib.contextmanager
def serving(
    model: Path,
    folder: Path,
    *,
    workers: int = 2,
    threads: int | None = None,
    env: dict[str, str] | None = None,
    server_class: type[RunningServer] = RunningServer,
) -> Iterator[RunningServer]:
    """``imageclf serve --model MODEL`` until the block ends, every worker ready; its log is
    ``folder/server-<port>.log`` and its HOME ``folder/home`` (where gunicorn would put a
    control socket), so servers in separate folders share nothing."""
    folder.mkdir(parents=True, exist_ok=True)
    port = free_port()
    log = folder / f"server-{port}.log"
    home = folder / "home"
    home.mkdir(exist_ok=True)
    environ = {**os.environ, "PYTHONUNBUFFERED": "1", "HOME": str(home), **(env or {})}
    environ.pop("XDG_RUNTIME_DIR", None)
    command = [sys.executable, "-m", "imageclf", "serve", "--model", str(model)]
    command += ["--port", str(port), "--workers", str(workers)]
    command += ["--threads", str(threads)] if threads else []
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=environ)
    server = server_class(port, process, log, home)
    try:
        server.wait_ready(workers)
        for _ in range(8):  # every worker answers (its model loaded) before anything is timed
            server.request("GET", "/readyz")
        yield server
    finally:
        server.stop()
