"""What `serve --max-batch` and `--batch-wait-ms` do to the real server under load.

    python benchmarks/batching.py                          # the bundled model
    python benchmarks/batching.py --settings 32:0,8:0,32:5 --concurrency 8,32

For each setting (max batch : wait in ms) one `imageclf serve` starts (serve's own
worker count), the same JPEG is posted by raw-socket clients that keep their connection,
at each concurrency level; the table gives throughput, p50/p99 latency and pictures per
forward pass (from /metrics). A table on stdout, JSON in benchmarks/results/.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result
from serveload.load import run_level
from serveload.payloads import resolve_model, upload_requests
from serveload.server import start_server, stop_server, wait_ready

EXAMPLE = Path(__file__).resolve().parents[1] / "src/imageclf/web/static/examples/cat.jpg"


def measure(model: Path, setting: str, levels: list[int], requests: int, scratch: Path) -> list:
    max_batch, wait_ms = setting.split(":")
    os.environ["IMAGECLF_MAX_BATCH"] = max_batch
    os.environ["IMAGECLF_BATCH_WAIT_MS"] = wait_ms
    os.environ["IMAGECLF_CLIENT_DECODE_SECONDS"] = "1e9"  # one client address, on purpose
    process, port = start_server(model, None, None, scratch / f"serve-{setting}.log")
    rows = []
    try:
        wait_ready(port, process)
        payloads = upload_requests("cat.jpg", EXAMPLE.read_bytes(), keepalive=True)
        run_level(port, 4, 40, payloads, True)  # warm-up
        for level in levels:
            row = run_level(port, level, requests, payloads, True, master=process.pid)
            rows.append({"max_batch": int(max_batch), "wait_ms": float(wait_ms), **row})
    finally:
        stop_server(process)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bundle or .onnx (default: bundled)")
    parser.add_argument("--settings", default="32:0,8:0,1:0,32:5,32:20")
    parser.add_argument("--concurrency", default="8,32")
    parser.add_argument("--requests", type=int, default=600, help="per level")
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/batching.json"))
    args = parser.parse_args()
    levels = [int(c) for c in args.concurrency.split(",")]
    started_load = loadavg()
    with tempfile.TemporaryDirectory() as folder:
        scratch = Path(folder)
        model = resolve_model(args.model, scratch)
        rows = []
        for setting in args.settings.split(","):
            rows += measure(model, setting, levels, args.requests, scratch)
    print("| max batch | wait ms | clients | req/s | p50 ms | p99 ms | pictures/pass |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['max_batch']} | {r['wait_ms']:g} | {r['concurrency']} | "
              f"{r['throughput_rps']} | {r['p50_ms']} | {r['p99_ms']} | "
              f"{r['images_per_forward_pass']} |")  # fmt: skip
    write_result(args.out, rows, started_load, model=args.model or "bundled")


if __name__ == "__main__":
    main()
