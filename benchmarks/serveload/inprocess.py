"""``Predictor.predict`` in plain processes: the rate the server is measured against.

One process on one thread (a core's share), one such process per core at once (their
summed rate), one process on every core for reference; and ``c1_rounds``, which
alternates in-process calls with the server at concurrency 1, round by round.
"""

from __future__ import annotations

import multiprocessing as mp
import statistics
import time

from .load import run_level
from .payloads import upload_requests
from .timing import percentile, time_calls


def _warm_predictor(model: str, image: bytes, threads: int = 1):
    """A ``Predictor`` on ``threads`` torch threads (one: a core's share), past its warm-up."""
    import torch

    torch.set_num_threads(threads)
    from imageclf import Predictor

    predictor = Predictor.load(model)
    for _ in range(50):
        predictor.predict(image, top_k=5)
    return predictor


def _predictor_worker(model: str, image: bytes, n: int, threads: int, barrier, out) -> None:
    predictor = _warm_predictor(model, image, threads)
    barrier.wait()
    started, cpu = time.perf_counter(), time.process_time()
    latencies = time_calls(lambda: predictor.predict(image, top_k=5), n)
    out.put((time.perf_counter() - started, latencies, time.process_time() - cpu))


def mean_of(first: dict, second: dict) -> dict:
    """Two baseline measurements averaged (rates and latencies)."""
    out = dict(first)
    for key in ("rate_per_s", "p50_ms", "p99_ms", "cpu_ms_per_call"):
        out[key] = round((first[key] + second[key]) / 2, 3)
    out["calls"] = first["calls"] + second["calls"]
    return out


def predictor_rate(model: str, image: bytes, processes: int, n: int, threads: int = 1) -> dict:
    """``processes`` plain processes (``threads`` each) calling ``Predictor.predict``."""
    ctx = mp.get_context("spawn")
    barrier, out = ctx.Barrier(processes), ctx.Queue()
    workers = [
        ctx.Process(target=_predictor_worker, args=(model, image, n, threads, barrier, out))
        for _ in range(processes)
    ]
    for worker in workers:
        worker.start()
    results = [out.get() for _ in workers]
    for worker in workers:
        worker.join()
    latencies = [s * 1000 for _, lat, _ in results for s in lat]
    wall = max(seconds for seconds, _, _ in results)
    return {
        "processes": processes,
        "threads": threads,
        "calls": processes * n,
        "rate_per_s": round(processes * n / wall, 1),
        # CPU time per call: what a call costs, whatever else shares the machine.
        "cpu_ms_per_call": round(sum(cpu for _, _, cpu in results) * 1000 / (processes * n), 3),
        "p50_ms": round(percentile(latencies, 50), 3),
        "p99_ms": round(percentile(latencies, 99), 3),
    }


def _predictor_loop(model: str, image: bytes, pipe) -> None:
    """A plain process (1 thread) that times ``n`` ``Predictor.predict`` calls each time it
    is sent ``n``, until it is sent 0."""
    predictor = _warm_predictor(model, image)
    while n := pipe.recv():
        pipe.send(time_calls(lambda: predictor.predict(image, top_k=5), n))


def c1_rounds(port: int, model: str, image: bytes, name: str, rounds: int, n: int) -> dict:
    """The server at concurrency 1 against ``Predictor.predict``, in alternating rounds.

    This VM's speed drifts by 10-15% over minutes, more than the 1 ms the goal is about:
    measuring the baseline once before and once after the server phase compared the
    server with a machine that no longer existed. Here every round times ``n``
    in-process calls, then ``n`` requests on new connections, then ``n`` kept alive, and
    the goal reads the median over rounds of each round's own difference. Each round
    also splits it: the API view's own time (``elapsed_ms`` in every answer) minus the
    in-process call, and the rest (HTTP server, Flask around the view, kernel, client).
    """
    ctx = mp.get_context("spawn")
    here, there = ctx.Pipe()
    process = ctx.Process(target=_predictor_loop, args=(model, image, there))
    process.start()
    payloads = {keep: upload_requests(name, image, keep) for keep in (False, True)}
    per_round = []
    try:
        for _ in range(rounds):
            here.send(n)
            inprocess = statistics.median(here.recv()) * 1000
            row = {"predictor_p50_ms": round(inprocess, 3)}
            for keepalive in (False, True):
                views: list[float] = []
                served = run_level(port, 1, n, payloads[keepalive], keepalive, views=views)
                name = "keep-alive" if keepalive else "new"
                row[name] = round(served["p50_ms"] - inprocess, 3)
                row[f"view {name}"] = round(statistics.median(views) - inprocess, 3)
            per_round.append(row)
    finally:
        here.send(0)
        process.join()
    return {
        "rounds": per_round,
        "requests_per_phase": n,
        "median_p50_minus_predictor_ms": {
            c: round(statistics.median(r[c] for r in per_round), 2) for c in ("new", "keep-alive")
        },
        # How much of that is inside the API view (parsing the form, the hardened decode,
        # the same forward pass, metrics) rather than around it.
        "median_view_minus_predictor_ms": {
            c: round(statistics.median(r[f"view {c}"] for r in per_round), 2)
            for c in ("new", "keep-alive")
        },
    }


def baselines(model: str, image: bytes, cores: int, n: int) -> tuple[dict, dict, dict]:
    """One process on one thread; one per core at once; one process on every core."""
    return (
        predictor_rate(model, image, 1, n),
        predictor_rate(model, image, cores, n),
        predictor_rate(model, image, 1, n, threads=cores),
    )
