"""What a run reports: the goals read from the measurements, the JSON report (its keys
in a fixed order), and the console summary and tables."""

from __future__ import annotations

import os
import sys

from _machine import describe, loadavg

MODEL_NAMES = {"tiny": "tiny-seed-a (random weights)", None: "bundled (default.safetensors)"}


def _find(results: list[dict], concurrency: int, connection: str) -> dict | None:
    return next(
        (r for r in results if r["concurrency"] == concurrency and r["connection"] == connection),
        None,
    )


def goals(results: list[dict], together: dict, c1: dict) -> dict:
    """Per connection kind: the server's c8 rate and CPU cost against the in-process
    processes together, and its c1 p50 against ``Predictor``'s."""
    found = {}
    for connection in ("new", "keep-alive"):
        c8 = _find(results, 8, connection)
        found[connection] = {
            "c8_throughput_vs_inprocess": (
                round(c8["throughput_rps"] / together["rate_per_s"], 3) if c8 else None
            ),
            # Median over alternating rounds of (server p50 - Predictor p50), see c1_rounds.
            "c1_p50_minus_predictor_p50_ms": c1["median_p50_minus_predictor_ms"][connection],
            # Load-independent: what a request costs the server's workers in CPU against
            # one in-process call; the rate the server could reach on otherwise idle cores.
            "c8_cpu_cost_ratio": (
                round(together["cpu_ms_per_call"] / c8["server_cpu_ms_per_request"], 3)
                if c8
                else None
            ),
        }
    return found


def stages_report(model_arg: str | None, model: object, budget: dict) -> dict:
    """The report of ``--stages-only``: the machine, the model, the budget."""
    report = {"machine": describe(), "model": MODEL_NAMES.get(model_arg, str(model))}
    report["stage_budget_us"] = budget
    return report


def full_report(
    args, argv: list[str] | None, run: dict, before: tuple, after: tuple, averaged: tuple
) -> dict:
    """The whole run as one JSON document (``run`` holds the server phase's results,
    the model, the image and the stage budget)."""
    alone, together, all_cores = averaged
    server = run["server"]
    return {
        "benchmark": "serve_load",
        "command": " ".join(["python", "benchmarks/serve_load.py", *(argv or sys.argv[1:])]),
        "machine": describe(),
        "loadavg_1min_before": run["load_before"],
        "loadavg_1min_after": loadavg(),
        "model": MODEL_NAMES.get(args.model, str(run["model"])),
        "image": f"{args.image.name} ({len(run['image'])} bytes)",
        "server": {
            "workers": server["workers"],
            "threads": args.threads or "serve's default",
            "plan": server["plan"],  # serve's own line: workers x threads
            "workers_booted": server["booted"],
            "max_requests": os.environ.get("IMAGECLF_MAX_REQUESTS", "default (2000)"),
        },
        "predictor_alone": alone,
        "predictor_parallel": together,
        # Not a goal's baseline: what one call gets with every core to itself.
        "predictor_alone_all_cores": all_cores,
        "predictor_before_after": {"before": before, "after": after},
        "stage_budget_us": run["budget"],
        "healthz_c1": server["floor"][False],
        "healthz_c1_keepalive": server["floor"][True],
        "c1_alternating": server["c1"],
        "results": server["results"],
        "goals": goals(server["results"], together, server["c1"]),
        "soak": server["soaked"],
    }


def print_budget(budget: dict) -> None:
    print("\nper-stage budget (median us, in-process, 1 thread):")
    for name, value in budget.items():
        print(f"  {name:<36}{value:>10}")


def _print_baselines(before: tuple, after: tuple, all_cores: dict, cores: int) -> None:
    for label, (one, many, _) in (("before", before), ("after", after)):
        print(
            f"\nPredictor.predict in-process ({label} the server): 1 process p50 "
            f"{one['p50_ms']} ms, p99 {one['p99_ms']} ms, {one['cpu_ms_per_call']} CPU ms/call; "
            f"{cores} processes together {many['rate_per_s']}/s"
        )
    print(
        f"Predictor.predict, 1 process on all {cores} cores: p50 {all_cores['p50_ms']} ms "
        "(for reference; the goals read the 1-thread numbers)"
    )


def _print_levels(floor: dict, results: list[dict]) -> None:
    for keepalive, label in ((False, "new"), (True, "kept alive")):
        us = floor[keepalive]["p50_ms"] * 1000
        print(f"  GET /healthz on the server, c1 p50, {label:<10} {us:>6.0f}")
    header = (
        f"\n{'conn':>10} {'conc':>5} {'requests':>9} {'errors':>7} {'req/s':>8} "
        f"{'p50 ms':>8} {'p99 ms':>8} {'cpu ms/req':>10} {'img/pass':>8}"
    )
    print(header)
    for r in results:
        print(
            f"{r['connection']:>10} {r['concurrency']:>5} {r['requests']:>9} {r['errors']:>7} "
            f"{r['throughput_rps']:>8} {r['p50_ms']:>8} {r['p99_ms']:>8} "
            f"{r['server_cpu_ms_per_request']:>10} {r['images_per_forward_pass']!s:>8}"
        )


def _print_c1_and_goals(c1: dict, found: dict) -> None:
    print(
        "\nconcurrency 1, alternating rounds: Predictor p50, then server p50 minus it (ms), "
        "and in brackets the API view's own time minus it"
    )
    for row in c1["rounds"]:
        print(
            f"  Predictor {row['predictor_p50_ms']:>7}   new {row['new']:>+6.2f} "
            f"({row['view new']:>+5.2f})   keep-alive {row['keep-alive']:>+6.2f} "
            f"({row['view keep-alive']:>+5.2f})"
        )
    for connection, goal in found.items():
        print(
            f"goals ({connection} connections): c8 throughput = "
            f"{goal['c8_throughput_vs_inprocess']} x in-process rate (goal >= 0.6); "
            f"c1 p50 - Predictor p50 = {goal['c1_p50_minus_predictor_p50_ms']} ms (goal <= 1); "
            f"CPU per call in-process / per request in the server at c8 = "
            f"{goal['c8_cpu_cost_ratio']}"
        )


def _print_soak(soaked: dict | None) -> None:
    if not soaked:
        return
    print(
        f"soak: {soaked['requests']} requests at concurrency 8, {soaked['errors']} errors, "
        f"{soaked['throughput_rps']} req/s; {soaked['workers_seen']} worker processes seen, "
        f"largest worker RSS {soaked['max_worker_rss_mb']} MB"
    )
    for pid, rss in soaked["worker_rss_mb"].items():
        path = " -> ".join(f"{mb}" for mb in rss["at_10_25_50_75_100pct"])
        print(f"  worker {pid} ({rss['samples']} samples): RSS {path} MB")


def print_report(report: dict, cores: int) -> None:
    """The console summary of a full run, from its report."""
    before_after = report["predictor_before_after"]
    before, after = before_after["before"], before_after["after"]
    _print_baselines(before, after, report["predictor_alone_all_cores"], cores)
    print_budget(report["stage_budget_us"])
    floor = {False: report["healthz_c1"], True: report["healthz_c1_keepalive"]}
    _print_levels(floor, report["results"])
    _print_c1_and_goals(report["c1_alternating"], report["goals"])
    _print_soak(report["soak"])
