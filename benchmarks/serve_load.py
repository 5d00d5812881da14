"""Serving benchmark: ``imageclf serve`` under load, against the in-process ``Predictor``.

One run measures, with the same model and the same picture:

1. the in-process rate: ``Predictor.predict(jpeg_bytes)`` (decode, resize, forward,
   top-5) in one plain process alone (p50/p99), then in one process per core, one
   thread each, all at once (their summed rate), and for reference in one process on
   every core; before and after the server runs, averaged, since other work may change
   the load meanwhile;
2. the per-stage latency budget of one API request, in-process: read body, parse
   multipart, decode, resize, forward, encode JSON, and the whole Flask app; and the
   app's WSGI call against ``Predictor.predict`` with the forward pass stubbed in both
   (what the app adds, the pass aside);
3. the real server (gunicorn on 127.0.0.1) at each concurrency level, with clients
   that open a new connection per request and clients that keep it alive; and at
   concurrency 1 in rounds that alternate with in-process calls (``c1_rounds``), which
   is what the "within 1 ms of Predictor" goal reads;
4. optionally a soak (``--soak N`` requests at concurrency 8) sampling worker memory.

    python benchmarks/serve_load.py                        # the bundled model
    python benchmarks/serve_load.py --model tiny           # a random-weight seed-a bundle
    python benchmarks/serve_load.py --soak 10000
    python benchmarks/serve_load.py --stages-only          # in-process budget, no server
    IMAGECLF_MAX_REQUESTS=0 python benchmarks/serve_load.py --workers 1 --soak 10000

The clients are raw sockets sending one pre-built request, so the load generator
takes as little of the shared CPU as it can. Nothing leaves the machine.

This file is the command line and the order of the phases; the phases themselves are in
``benchmarks/serveload/`` (see its ``__init__``).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import loadavg  # noqa: E402
from serveload.inprocess import baselines, c1_rounds, mean_of  # noqa: E402
from serveload.load import run_level, soak, worker_rss_mb  # noqa: E402
from serveload.payloads import health_request, multipart, resolve_model, upload_requests  # noqa: E402
from serveload.report import full_report, print_budget, print_report, stages_report  # noqa: E402
from serveload.server import log_facts, start_server, stop_server, wait_ready  # noqa: E402
from serveload.stages import app_overhead, stage_budget  # noqa: E402

EXAMPLE = HERE.parent / "src" / "imageclf" / "web" / "static" / "examples" / "cat.jpg"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bundle or .onnx (default: bundled)")
    parser.add_argument("--requests", type=int, default=1000, help="per concurrency level")
    parser.add_argument("--concurrency", default="1,8,32", help="comma-separated levels")
    parser.add_argument("--workers", type=int, default=None, help="default: serve's own")
    parser.add_argument("--threads", type=int, default=None, help="default: serve's own")
    parser.add_argument("--soak", type=int, default=0, help="then N more, sampling memory")
    parser.add_argument("--baseline-calls", type=int, default=2000, help="per process")
    parser.add_argument("--stage-repeats", type=int, default=500)
    parser.add_argument(
        "--stages-only", action="store_true", help="only the in-process stage budget"
    )
    parser.add_argument("--c1-rounds", type=int, default=10, help="alternating c1 rounds")
    parser.add_argument("--c1-requests", type=int, default=200, help="per phase of a round")
    parser.add_argument("--image", type=Path, default=EXAMPLE, help="image to post")
    parser.add_argument("--out", type=Path, default=None, help="default: results/serve_load*.json")
    args = parser.parse_args(argv)
    suffix = "_stages" if args.stages_only else ""
    args.out = args.out or HERE / "results" / f"serve_load{suffix}.json"
    args.levels = [int(level) for level in args.concurrency.split(",")]
    return args


def measure_stages(args: argparse.Namespace, model: str, image: bytes) -> dict:
    """2. The per-stage budget, and what the app adds to an in-process call."""
    print("per-stage budget ...", flush=True)
    body, ctype = multipart(args.image.name, image)
    budget = stage_budget(model, body, ctype, args.stage_repeats)
    return budget | app_overhead(model, image, body, ctype, args.stage_repeats * 4)


def measure_server(
    port: int, master: int, args: argparse.Namespace, model: str, image: bytes
) -> dict:
    """3 and 4. The running server: the /healthz floor, the alternating c1 rounds, every
    concurrency level on new and kept-alive connections, and the soak if asked for."""
    name = args.image.name
    workers = len(worker_rss_mb(master))
    for keepalive in (False, True):  # warm-up, not reported
        run_level(port, 4, 100, upload_requests(name, image, keepalive), keepalive)
    print("server ...", flush=True)
    # The floor: a request that does nothing (GET /healthz) through the same server.
    floor = {
        keepalive: run_level(port, 1, args.requests, [health_request(keepalive)], keepalive, master)
        for keepalive in (False, True)
    }
    print("concurrency 1 against Predictor, alternating ...", flush=True)
    c1 = c1_rounds(port, model, image, name, args.c1_rounds, args.c1_requests)
    results = [
        run_level(
            port, c, args.requests, upload_requests(name, image, keepalive), keepalive, master
        )
        for keepalive in (False, True)
        for c in args.levels
    ]
    soaked = (
        soak(port, master, args.soak, upload_requests(name, image, False), False)
        if args.soak
        else None
    )
    return {"workers": workers, "floor": floor, "c1": c1, "results": results, "soaked": soaked}


def server_phase(args: argparse.Namespace, model: Path, image: bytes, scratch: Path) -> dict:
    """Start the server, measure it, stop it whatever happened; what its log said."""
    log = scratch / "server.log"
    process, port = start_server(model, args.workers, args.threads, log)
    try:
        wait_ready(port, process)
        found = measure_server(port, process.pid, args, str(model), image)
    finally:
        stop_server(process)
    found["booted"], found["plan"] = log_facts(log)
    return found


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    # The baseline is the issue's: one plain process per core, one thread each, whatever
    # the server runs; the server gets --workers only when asked (else serve's default).
    cores = len(os.sched_getaffinity(0))

    with tempfile.TemporaryDirectory() as scratch:
        model = resolve_model(args.model, Path(scratch))
        image = args.image.read_bytes()
        run = {"model": model, "image": image, "load_before": loadavg()}
        if not args.stages_only:
            print("in-process Predictor.predict ...", flush=True)
            before = baselines(str(model), image, cores, args.baseline_calls)
        run["budget"] = measure_stages(args, str(model), image)
        if args.stages_only:
            print_budget(run["budget"])
            report = stages_report(args.model, model, run["budget"])
            args.out.write_text(json.dumps(report, indent=2) + "\n")
            return
        run["server"] = server_phase(args, model, image, Path(scratch))
        # Again after the server: on a shared machine the load may have changed meanwhile,
        # so the goals compare the server with the mean of before and after.
        print("in-process Predictor.predict again ...", flush=True)
        after = baselines(str(model), image, cores, args.baseline_calls)
    averaged = tuple(mean_of(b, a) for b, a in zip(before, after, strict=True))
    report = full_report(args, argv, run, before, after, averaged)
    print_report(report, cores)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
