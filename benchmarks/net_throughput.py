"""Training-step throughput of the fast net at several widths and batch sizes.

Synthetic 32x32 input, one step = forward + backward + nesterov SGD (the fast
recipe's loss and optimiser), fp32 or bf16 autocast, channels_last. This is how
the ``fast`` recipe's width and batch size were chosen for a given CPU.

    python benchmarks/net_throughput.py [--precision fp32|bf16]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

from imageclf.device import autocast
from imageclf.models import build

CONFIGS = [
    ((32, 64, 128), 256),
    ((32, 64, 128), 512),
    ((48, 96, 192), 512),
    ((64, 128, 256), 512),
    ((64, 256, 256), 512),
]


def measure(widths, batch, dtype, images=2048) -> float:
    torch.manual_seed(0)
    model = build("fast", widths=widths).to(memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.85, nesterov=True)
    x = torch.randn(batch, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,))

    def step():
        with autocast(torch.device("cpu"), dtype):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()

    step()  # warm-up
    steps = max(2, images // batch)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--out", default="benchmarks/results/net_throughput.json")
    args = parser.parse_args()
    dtype = torch.bfloat16 if args.precision == "bf16" else None
    load = loadavg()
    rows = []
    print("| widths | batch | training img/s |\n|---|---:|---:|")
    for widths, batch in CONFIGS:
        rate = measure(widths, batch, dtype)
        rows.append({"widths": list(widths), "batch": batch, "images_per_s": round(rate, 1)})
        print(f"| {'/'.join(map(str, widths))} | {batch} | {rate:,.0f} |", flush=True)
    result = {
        "machine": describe(),
        "precision": args.precision,
        "rows": rows,
        "loadavg_before": load,
        "loadavg_after": loadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
