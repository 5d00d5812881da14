"""Bounded load test of ``imageclf serve`` on this machine (127.0.0.1 only).

Starts the server (gunicorn) on a free local port, waits for /readyz, then sends a
fixed number of single-image ``POST /api/v1/predict`` requests at each concurrency
level, and prints throughput, p50/p99 latency and errors as a table and JSON.

    python benchmarks/serve_load.py --model tiny            # a random-weight seed-a bundle
    python benchmarks/serve_load.py --model runs/x/model.safetensors --requests 1000
    python benchmarks/serve_load.py --soak 10000    # then 10k more, sampling worker memory
    IMAGECLF_MAX_REQUESTS=0 python benchmarks/serve_load.py --workers 1 --soak 10000

Nothing leaves the machine: the server binds 127.0.0.1 and the client only talks to it.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import describe, loadavg  # noqa: E402

EXAMPLE = HERE.parent / "src" / "imageclf" / "web" / "static" / "examples" / "cat.jpg"
HOST = "127.0.0.1"


def tiny_bundle(folder: Path) -> Path:
    """The same random-weight 10-class seed-a bundle the tests use."""
    import torch

    from imageclf.bundle import save_bundle
    from imageclf.models import build

    torch.manual_seed(0)
    model = build("seed-a", num_classes=10, input_size=32)
    return save_bundle(
        folder / "tiny.safetensors",
        model.state_dict(),
        {
            "name": "tiny-seed-a",
            "architecture": "seed-a",
            "arch_kwargs": {},
            "classes": [f"class{i}" for i in range(10)],
            "input_size": 32,
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        },
    )


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return sock.getsockname()[1]


def multipart(filename: str, data: bytes) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{filename}"\r\n'
        "Content-Type: image/jpeg\r\n\r\n"
    ).encode()
    return (
        head + data + f"\r\n--{boundary}--\r\n".encode(),
        f"multipart/form-data; boundary={boundary}",
    )


def one_request(port: int, body: bytes, content_type: str) -> tuple[float, int | str]:
    started = time.perf_counter()
    conn = http.client.HTTPConnection(HOST, port, timeout=60)
    try:
        conn.request("POST", "/api/v1/predict", body, {"Content-Type": content_type})
        response = conn.getresponse()
        response.read()
        status: int | str = response.status
    except OSError as exc:
        status = type(exc).__name__
    finally:
        conn.close()
    return time.perf_counter() - started, status


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run_level(port: int, concurrency: int, requests: int, body: bytes, ctype: str) -> dict:
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=concurrency) as pool:
        results = list(pool.map(lambda _: one_request(port, body, ctype), range(requests)))
    wall = time.perf_counter() - started
    latencies = [seconds * 1000 for seconds, _ in results]
    errors = sum(1 for _, status in results if status != 200)
    return {
        "concurrency": concurrency,
        "requests": requests,
        "errors": errors,
        "throughput_rps": round(requests / wall, 1),
        "p50_ms": round(percentile(latencies, 50), 1),
        "p99_ms": round(percentile(latencies, 99), 1),
        "mean_ms": round(statistics.fmean(latencies), 1),
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


def soak(port: int, master: int, requests: int, body: bytes, ctype: str) -> dict:
    """``requests`` at concurrency 8 while sampling every worker's memory twice a second."""
    samples: list[dict[int, float]] = []
    done = threading.Event()

    def sample() -> None:
        while not done.wait(0.5):
            samples.append(worker_rss_mb(master))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        result = run_level(port, 8, requests, body, ctype)
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


def wait_ready(port: int, process: subprocess.Popen, timeout_s: float = 120) -> None:
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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="tiny", help="bundle path, or 'tiny' (default)")
    parser.add_argument("--requests", type=int, default=400, help="per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--workers", type=int, default=None, help="gunicorn workers (cores)")
    parser.add_argument("--soak", type=int, default=0, help="then N more, sampling memory")
    parser.add_argument("--image", type=Path, default=EXAMPLE, help="image to post")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "serve_load.json")
    args = parser.parse_args(argv)
    levels = [int(level) for level in args.concurrency.split(",")]

    with tempfile.TemporaryDirectory() as scratch:
        model = tiny_bundle(Path(scratch)) if args.model == "tiny" else Path(args.model)
        port = free_port()
        command = [sys.executable, "-m", "imageclf", "serve", "--model", str(model)]
        command += ["--host", HOST, "--port", str(port)]
        if args.workers:
            command += ["--workers", str(args.workers)]
        log = Path(scratch) / "server.log"
        with open(log, "wb") as out:
            process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
        try:
            wait_ready(port, process)
            body, ctype = multipart(args.image.name, args.image.read_bytes())
            run_level(port, 4, 40, body, ctype)  # warm-up, not reported
            load_before = loadavg()
            results = [run_level(port, c, args.requests, body, ctype) for c in levels]
            soaked = soak(port, process.pid, args.soak, body, ctype) if args.soak else None
        finally:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
        workers = log.read_text().count("Booting worker")

    report = {
        "benchmark": "serve_load",
        "command": " ".join(["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
        "machine": describe(),
        "loadavg_1min_before": load_before,
        "model": "tiny-seed-a (random weights)" if args.model == "tiny" else str(model),
        "image": f"{args.image.name} ({args.image.stat().st_size} bytes)",
        "server": {
            "workers": args.workers or os.cpu_count(),
            "workers_booted": workers,
            "max_requests": os.environ.get("IMAGECLF_MAX_REQUESTS", "default (2000)"),
        },
        "results": results,
        "soak": soaked,
    }
    header = f"{'conc':>5} {'requests':>9} {'errors':>7} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8}"
    print(header)
    for r in results:
        print(
            f"{r['concurrency']:>5} {r['requests']:>9} {r['errors']:>7} {r['throughput_rps']:>8}"
            f" {r['p50_ms']:>8} {r['p99_ms']:>8}"
        )
    if soaked:
        print(
            f"soak: {soaked['requests']} requests at concurrency 8, {soaked['errors']} errors, "
            f"{soaked['throughput_rps']} req/s; {soaked['workers_seen']} worker processes seen, "
            f"largest worker RSS {soaked['max_worker_rss_mb']} MB"
        )
        for pid, rss in soaked["worker_rss_mb"].items():
            path = " -> ".join(f"{mb}" for mb in rss["at_10_25_50_75_100pct"])
            print(f"  worker {pid} ({rss['samples']} samples): RSS {path} MB")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
