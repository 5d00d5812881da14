"""Load on the real server: raw-socket clients at a concurrency level (a new connection
per request, or kept alive), the server's CPU per request and images per forward pass,
and a soak that samples every worker's memory."""

from __future__ import annotations

import itertools
import json
import os
import socket
import statistics
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from .payloads import HOST
from .timing import percentile


class Client:
    """One client connection: sends pre-built requests in turn, reads one response each."""

    def __init__(
        self, port: int, payloads: list[bytes], keepalive: bool, views: list | None = None
    ) -> None:
        self.port, self.keepalive = port, keepalive
        self.payloads = itertools.cycle(payloads)
        self.sock: socket.socket | None = None
        # The API's own elapsed_ms of each answer (the view's time), where asked for.
        self.views = views

    def close(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None

    def _exchange(self, payload: bytes) -> tuple[int, bool]:
        if self.sock is None:
            self.sock = socket.create_connection((HOST, self.port), timeout=60)
            self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.sock.sendall(payload)
        data = b""
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed before the response")
            data += chunk
        head, _, rest = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {
            k.strip().lower(): v.strip() for k, _, v in (x.partition(":") for x in lines[1:])
        }
        length = int(headers.get("content-length", "0"))
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionResetError("closed mid-response")
            rest += chunk
        if self.views is not None and status == 200:
            self.views.append(json.loads(rest[:length])["elapsed_ms"])
        closes = headers.get("connection", "").lower() == "close" or not self.keepalive
        return status, closes

    def request(self) -> tuple[float, int | str]:
        payload = next(self.payloads)
        started = time.perf_counter()
        reused = self.sock is not None
        try:
            try:
                status, closes = self._exchange(payload)
            except (ConnectionResetError, BrokenPipeError):
                if not reused:
                    raise
                self.close()  # the server dropped an idle kept-alive connection: retry once
                status, closes = self._exchange(payload)
            if closes:
                self.close()
        except OSError as exc:
            self.close()
            return time.perf_counter() - started, type(exc).__name__
        return time.perf_counter() - started, status


CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def server_cpu_s(master: int) -> float:
    """CPU seconds of the server so far: the master, its live workers, and the workers it
    has already reaped (recycled ones), from /proc."""

    def fields(pid: int) -> list[str]:
        text = Path(f"/proc/{pid}/stat").read_text()
        return text[text.rindex(")") + 2 :].split()

    own = fields(master)  # utime, stime, cutime, cstime are fields 14-17 (index 11-14 here)
    total = sum(int(v) for v in own[11:15])
    children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    for pid in children:
        try:
            total += sum(int(v) for v in fields(int(pid))[11:13])
        except OSError:
            continue  # exited meanwhile: counted in the master's cutime once reaped
    return total / CLOCK_TICKS


def forward_passes(port: int) -> tuple[float, float]:
    """(passes, pictures) the server's model has run so far, from its /metrics."""
    import http.client

    conn = http.client.HTTPConnection(HOST, port, timeout=10)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    found = {"count": 0.0, "sum": 0.0}
    for line in text.splitlines():
        for key in found:
            if line.startswith(f"imageclf_forward_pass_images_{key} "):
                found[key] = float(line.split()[1])
    return found["count"], found["sum"]


def run_level(
    port: int,
    concurrency: int,
    requests: int,
    payloads: list[bytes],
    keepalive: bool,
    master: int | None = None,
    views: list | None = None,
) -> dict:
    tickets = itertools.count()
    cpu_before = server_cpu_s(master) if master else None
    passes_before = forward_passes(port) if master else None

    def client_loop(_) -> list[tuple[float, int | str]]:
        client, out = Client(port, payloads, keepalive, views), []
        while next(tickets) < requests:
            out.append(client.request())
        client.close()
        return out

    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = [r for chunk in pool.map(client_loop, range(concurrency)) for r in chunk]
    wall = time.perf_counter() - started
    latencies = [seconds * 1000 for seconds, _ in results]
    errors = sum(1 for _, status in results if status != 200)
    cpu = (server_cpu_s(master) - cpu_before) if master else None
    per_pass = None
    if passes_before:
        passes, pictures = (b - a for a, b in zip(passes_before, forward_passes(port), strict=True))
        per_pass = round(pictures / passes, 2) if passes else None
    return {
        "server_cpu_ms_per_request": round(cpu * 1000 / requests, 3) if master else None,
        # Concurrent requests share forward passes (web/forward.py).
        "images_per_forward_pass": per_pass,
        "concurrency": concurrency,
        "connection": "keep-alive" if keepalive else "new",
        "requests": requests,
        "errors": errors,
        "throughput_rps": round(requests / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 2),
        "p99_ms": round(percentile(latencies, 99), 2),
        "mean_ms": round(statistics.fmean(latencies), 2),
        "wall_s": round(wall, 2),
    }


def worker_rss_mb(master: int) -> dict[int, float]:
    """Resident memory of each gunicorn worker (the master's children), from /proc."""
    rss: dict[int, float] = {}
    try:
        children = Path(f"/proc/{master}/task/{master}/children").read_text().split()
    except OSError:
        return rss
    for pid in map(int, children):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    rss[pid] = int(line.split()[1]) / 1024
        except OSError:
            continue
    return rss


_QUANTILES = (0.1, 0.25, 0.5, 0.75, 1.0)


def soak(port: int, master: int, requests: int, payloads: list[bytes], keepalive: bool) -> dict:
    """``requests`` at concurrency 8 while sampling every worker's memory twice a second."""
    samples: list[dict[int, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(worker_rss_mb(master))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_level(port, 8, requests, payloads, keepalive, master)
    finally:
        done.set()
        sampler.join()
    per_worker: dict[int, list[float]] = {}
    for snapshot in samples:
        for pid, mb in snapshot.items():
            per_worker.setdefault(pid, []).append(mb)

    def trajectory(values: list[float]) -> list[float]:
        # RSS at 10%, 25%, 50%, 75% and 100% of the worker's sampled life
        picks = [values[min(len(values) - 1, int(q * (len(values) - 1)))] for q in _QUANTILES]
        return [round(mb, 1) for mb in picks]

    return {
        **result,
        "workers_seen": len(per_worker),  # more than --workers: recycled by max_requests
        "worker_rss_mb": {
            str(pid): {"samples": len(v), "at_10_25_50_75_100pct": trajectory(v)}
            for pid, v in per_worker.items()
        },
        "max_worker_rss_mb": round(max((max(v) for v in per_worker.values()), default=0), 1),
    }
