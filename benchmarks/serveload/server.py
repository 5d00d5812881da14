"""The server under test: ``imageclf serve`` (gunicorn) started on a free local port,
waited for until ``/readyz`` answers, and stopped; what its log says about workers."""

from __future__ import annotations

import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from .payloads import HOST


def start_server(
    model: Path, workers: int | None, threads: int | None, log: Path
) -> tuple[subprocess.Popen, int]:
    """``imageclf serve`` on a free port (``--workers``/``--threads`` only when given,
    else serve's own defaults), its output in ``log``: (process, port)."""
    port = free_port()
    command = [sys.executable, "-m", "imageclf", "serve", "--model", str(model)]
    command += ["--host", HOST, "--port", str(port)]
    command += ["--workers", str(workers)] if workers else []
    command += ["--threads", str(threads)] if threads else []
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    return process, port


def stop_server(process: subprocess.Popen) -> None:
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=30)
    except subprocess.TimeoutExpired:
        process.kill()


def log_facts(log: Path) -> tuple[int, str | None]:
    """(workers booted, serve's own "N worker(s) x M thread(s)" line) from its log."""
    server_log = log.read_text()
    booted = server_log.count("Booting worker")
    plan = next((line for line in server_log.splitlines() if "worker(s) x" in line), None)
    return booted, plan


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
    import http.client

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"server exited with {process.returncode}")
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=2)
            conn.request("GET", "/readyz")
            if conn.getresponse().status == 200:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("server was not ready in time")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]
