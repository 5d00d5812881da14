"""Training-step throughput of the fast net at several widths and batch sizes.

Synthetic 32x32 input, one step = forward + backward + nesterov SGD (the fast
recipe's loss and optimiser), fp32 or bf16 autocast, channels_last. This is how
the ``fast`` recipe's width and batch size were chosen for a given CPU.

``--efficientnet`` measures EfficientNet-Lite0 instead (10 classes, batch 64, 64-128
px, fp32 against bf16 autocast: which ``--precision auto`` trains it in).

    python benchmarks/net_throughput.py [--precision fp32|bf16]
    python benchmarks/net_throughput.py --efficientnet
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result

from imageclf.allocator import keep_freed_memory
from imageclf.device import autocast
from imageclf.models import build

CONFIGS = [
    ((32, 64, 128), 256),
    ((32, 64, 128), 512),
    ((48, 96, 192), 512),
    ((64, 128, 256), 512),
    ((64, 256, 256), 512),
]


EFFICIENTNET_SIDES = (64, 96, 128)
EFFICIENTNET_BATCH = 64  # the bundled model's training batch


def measure(widths, batch, dtype, images=2048, net="fast", side=32, device="cpu") -> float:
    """Training images per second of ``net`` on ``device`` (synthetic batch, one warm-up)."""
    dev = torch.device(device)
    torch.manual_seed(0)
    kwargs = {"widths": widths} if net == "fast" else {}
    model = build(net, 10, side, **kwargs).to(dev, memory_format=torch.channels_last)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.SGD(params, lr=1e-3, momentum=0.85, nesterov=True)
    x = torch.randn(batch, 3, side, side, device=dev).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=dev)

    def step():
        with autocast(dev, dtype):
            loss = F.cross_entropy(model(x).float(), y, label_smoothing=0.2, reduction="sum")
        opt.zero_grad()
        loss.backward()
        opt.step()

    def sync():
        if dev.type == "cuda":
            torch.cuda.synchronize()

    step()  # warm-up
    sync()
    steps = max(2, images // batch)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    sync()
    return steps * batch / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--efficientnet", action="store_true", help="Lite0, fp32 and bf16")
    parser.add_argument("--out", default=None, help="default: benchmarks/results/<name>.json")
    args = parser.parse_args()
    keep_freed_memory()  # as `imageclf train` runs
    load = loadavg()
    if args.efficientnet:
        rows, precision = efficientnet_rows(), "fp32 and bf16"
        out = args.out or "benchmarks/results/net_throughput_efficientnet.json"
    else:
        rows, precision = fast_rows(args.precision), args.precision
        out = args.out or "benchmarks/results/net_throughput.json"
    write_result(out, rows, load, precision=precision)


def fast_rows(precision: str) -> list[dict]:
    dtype = torch.bfloat16 if precision == "bf16" else None
    rows = []
    print("| widths | batch | training img/s |\n|---|---:|---:|")
    for widths, batch in CONFIGS:
        rate = measure(widths, batch, dtype)
        rows.append({"widths": list(widths), "batch": batch, "images_per_s": round(rate, 1)})
        print(f"| {'/'.join(map(str, widths))} | {batch} | {rate:,.0f} |", flush=True)
    return rows


def efficientnet_rows() -> list[dict]:
    rows = []
    print("| side | batch | fp32 img/s | bf16 img/s | bf16 / fp32 |\n|---:|---:|---:|---:|---:|")
    for side in EFFICIENTNET_SIDES:
        rates = {
            name: measure(None, EFFICIENTNET_BATCH, dtype, 1024, "efficientnet-lite0", side)
            for name, dtype in (("fp32", None), ("bf16", torch.bfloat16))
        }
        rows.append({"side": side, "batch": EFFICIENTNET_BATCH,
                     **{f"{k}_images_per_s": round(v, 1) for k, v in rates.items()}})  # fmt: skip
        ratio = rates["bf16"] / rates["fp32"]
        print(f"| {side} | {EFFICIENTNET_BATCH} | {rates['fp32']:,.0f} | {rates['bf16']:,.0f} "
              f"| {ratio:.2f} |", flush=True)  # fmt: skip
    return rows


if __name__ == "__main__":
    main()
