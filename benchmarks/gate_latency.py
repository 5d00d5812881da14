"""Single-picture latency of a gated model: each network eager, as a frozen trace, or
(one picture) as oneDNN Graph's trace (``prediction.traced``).

    python benchmarks/gate_latency.py [--model PATH] [--data ../shared/data/cifar10-jpeg.tar.gz]

Each configuration runs in its own process (torch's thread counts and traces are
per-process state), ``--rounds`` times in turn so that a noisy neighbour hits them all
alike; the table gives each one's median p50 and p90 over its rounds. The pictures are
``infer_speed.py``'s: test images as 500x375 JPEG bytes, decoding included, 2 threads.
The model alone (its gate removed) is the reference row.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result

# name -> (frozen traces, oneDNN Graph's trace for one picture)
CONFIGS = {
    "model alone (no gate), oneDNN Graph": (True, True),
    "model and gate, eager": (False, False),
    "model and gate, traced": (True, False),
    "model and gate, traced, oneDNN Graph (shipped)": (True, True),
}


def one_run(model: str | None, data: str | None, trace: bool, fused: bool, requests: int):
    """p50 and p90 (ms) of one configuration, in this process."""
    import torch
    from infer_speed import phone_jpegs, sample_images, single_latencies

    from imageclf import Predictor
    from imageclf.prediction import traced

    torch.set_num_threads(2)
    if not trace:
        traced.TRACE_ON_PASS = sys.maxsize
    traced.ONE_PICTURE_FUSED = fused
    predictor = Predictor.load(model)
    latencies = single_latencies(predictor, phone_jpegs(sample_images(data, 50)), requests)
    return [float(v) for v in np.percentile(latencies, [50, 90])]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="a gated bundle (default: the bundled)")
    parser.add_argument("--data", default=None, help="take real test images from this dataset")
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default="benchmarks/results/gate_latency.json")
    parser.add_argument("--one", default=None, help=argparse.SUPPRESS)  # a child's config
    args = parser.parse_args()
    if args.one:
        trace, fused = CONFIGS[args.one]
        print(json.dumps(one_run(args.model, args.data, trace, fused, args.requests)))
        return

    from imageclf.models.bundle import load_bundle
    from imageclf.prediction.gate import remove_gate
    from imageclf.prediction.predictor import default_model_path

    load = loadavg()
    gated = args.model or str(default_model_path())
    if not load_bundle(gated).gate:
        sys.exit(f"{gated} has no gate: add one with `imageclf gate`")
    with tempfile.TemporaryDirectory() as tmp:
        alone = Path(tmp) / "alone.safetensors"
        remove_gate(Path(gated), alone)
        runs: dict[str, list[list[float]]] = {name: [] for name in CONFIGS}
        for _ in range(args.rounds):
            for name in CONFIGS:
                model = str(alone) if name.startswith("model alone") else gated
                cmd = [sys.executable, __file__, "--one", name, "--model", model,
                       "--requests", str(args.requests)]  # fmt: skip
                if args.data:
                    cmd += ["--data", args.data]
                done = subprocess.run(cmd, capture_output=True, text=True, check=True)
                runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    rows = []
    print("| configuration | p50 ms | p90 ms | p50 of each round |\n|---|---:|---:|---|")
    for name, found in runs.items():
        p50s, p90s = [r[0] for r in found], [r[1] for r in found]
        row = {"configuration": name, "p50_ms": round(float(np.median(p50s)), 2),
               "p90_ms": round(float(np.median(p90s)), 2),
               "round_p50s": [round(v, 2) for v in p50s]}  # fmt: skip
        rows.append(row)
        print(f"| {name} | {row['p50_ms']} | {row['p90_ms']} | {row['round_p50s']} |")
    write_result(args.out, rows, load, model=gated, data=args.data or "random pixels",
                 requests=args.requests, rounds=args.rounds, threads=2)  # fmt: skip


if __name__ == "__main__":
    main()
