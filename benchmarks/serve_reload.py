"""How long a model reload takes to reach every worker of a real server, under load.

    python benchmarks/serve_reload.py                 # the bundled model and a tiny one
    python benchmarks/serve_reload.py --reloads 10 --workers 2 --clients 3

For each model one `imageclf serve --workers N` starts; clients keep posting a picture
to /api/v1/predict (a new connection each) while the model file is replaced (an atomic
rename) by another version of the same model, alternately. Each worker logs the switch
with its pid; the time from the rename until the last worker logged it is the switch
time (serve's default --reload-poll-s 1: the file is looked at once a second). The
requests that failed (none expected) and the latency while reloading are counted too.
A table on stdout, JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import hashlib
import http.client
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result
from serveload.payloads import HOST, multipart, tiny_bundle
from serveload.server import free_port, stop_server, wait_ready

EXAMPLE = Path(__file__).resolve().parents[1] / "src/imageclf/web/static/examples/cat.jpg"


def second_version(model: Path, out: Path) -> Path:
    """The same weights under another name: another file, so another version."""
    from imageclf.models.bundle import load_bundle, save_bundle

    bundle = load_bundle(model)
    meta = dict(bundle.metadata)  # the stored JSON, as a dict
    meta["name"] = f"{meta.get('name', 'model')}-v2"
    return save_bundle(out, bundle.state_dict, meta)


def post_forever(port: int, stop: threading.Event, times: list, failures: list) -> None:
    body, ctype = multipart("cat.jpg", EXAMPLE.read_bytes())
    while not stop.is_set():
        started = time.perf_counter()
        try:
            conn = http.client.HTTPConnection(HOST, port, timeout=60)
            conn.request("POST", "/api/v1/predict", body=body, headers={"Content-Type": ctype})
            response = conn.getresponse()
            response.read()
            conn.close()
        except OSError as exc:
            failures.append(str(exc))
            continue
        if response.status != 200:
            failures.append(str(response.status))
        else:
            times.append((time.perf_counter() - started) * 1000.0)


def switch_time(log: Path, start: int, version: str, workers: int, bound: float) -> float:
    began = time.monotonic()
    pattern = rf"now serving version {version} \(was \w+\) in process (\d+)"
    while len(set(re.findall(pattern, log.read_text()[start:]))) < workers:
        if time.monotonic() - began > bound:
            raise SystemExit(f"no switch to {version} within {bound}s: see {log}")
        time.sleep(0.02)
    return time.monotonic() - began


def measure(label: str, model: Path, args, scratch: Path) -> dict:
    live = scratch / f"{label}.safetensors"
    other = second_version(model, scratch / f"{label}-v2.safetensors")
    versions = [model.read_bytes(), other.read_bytes()]
    names = [hashlib.sha256(v).hexdigest()[:16] for v in versions]
    live.write_bytes(versions[0])
    port, log = free_port(), scratch / f"serve-{label}.log"
    command = [sys.executable, "-m", "imageclf", "serve", "--model", f"{label}={live}"]
    command += ["--host", HOST, "--port", str(port), "--workers", str(args.workers)]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    stop, times, failures, switches = threading.Event(), [], [], []
    try:
        wait_ready(port, process)
        while len(set(re.findall(r"in process (\d+):", log.read_text()))) < args.workers:
            time.sleep(0.1)
        clients = [
            threading.Thread(target=post_forever, args=(port, stop, times, failures))
            for _ in range(args.clients)
        ]
        for client in clients:
            client.start()
        time.sleep(1.0)
        for i in range(1, args.reloads + 1):
            start = len(log.read_text())
            staged = live.with_name(live.name + ".new")
            staged.write_bytes(versions[i % 2])
            staged.replace(live)
            switches.append(switch_time(log, start, names[i % 2], args.workers, 60.0))
            time.sleep(0.5)
        stop.set()
        for client in clients:
            client.join()
    finally:
        stop.set()
        stop_server(process)
    cuts = statistics.quantiles(times, n=100) if len(times) > 2 else [float("nan")] * 99
    return {
        "model": label,
        "workers": args.workers,
        "reloads": args.reloads,
        "switch_s_median": round(statistics.median(switches), 3),
        "switch_s_max": round(max(switches), 3),
        "requests": len(times) + len(failures),
        "failed": len(failures),
        "p50_ms": round(cuts[49], 1),
        "p99_ms": round(cuts[98], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reloads", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--clients", type=int, default=3)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/serve_reload.json"))
    args = parser.parse_args()
    from imageclf.prediction.predictor import default_model_path

    started_load = loadavg()
    scratch = Path(tempfile.mkdtemp(prefix="serve-reload-"))
    try:
        rows = [
            measure("bundled", default_model_path(), args, scratch),
            measure("tiny", tiny_bundle(scratch), args, scratch),
        ]
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("| model | workers | reloads | all workers switched: median s | max s "
          "| requests | failed | p50 ms | p99 ms |")  # fmt: skip
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['model']} | {r['workers']} | {r['reloads']} | {r['switch_s_median']} | "
              f"{r['switch_s_max']} | {r['requests']} | {r['failed']} | {r['p50_ms']} | "
              f"{r['p99_ms']} |")  # fmt: skip
    write_result(args.out, rows, started_load)


if __name__ == "__main__":
    main()
