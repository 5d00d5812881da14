"""What keeping freed memory in the heap (``imageclf.allocator``) buys, per workload.

Each workload runs twice in a fresh interpreter, once with glibc's default malloc and
once after ``keep_freed_memory()`` (what the command line does), on EfficientNet-Lite0
with random weights (speed does not depend on them) and synthetic pictures:
inference as ``evaluate`` scores a split (``predict_logits``, its default batch, bf16
where the CPU has it natively, else fp32) and a training step as ``--pretrained`` fine-
tuning takes it (batch 64, fp32). Reports pictures per second, page faults and kernel
CPU seconds.

    python benchmarks/allocator.py
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result

WORKLOADS = [("inference", 96), ("inference", 128), ("training", 96), ("training", 128)]

RUN = """
import json, resource, sys, time, torch, torch.nn.functional as F
from imageclf import allocator
from imageclf.device import autocast, cpu_has_fast_bf16
from imageclf.models import build
from imageclf.prediction.inference import Normalizer, predict_logits
if {keep}:
    allocator.keep_freed_memory()
kind, side = {kind!r}, {side}
torch.manual_seed(0)
model = build("efficientnet-lite0", 10, side).to(memory_format=torch.channels_last)
if kind == "inference":
    dtype = torch.bfloat16 if cpu_has_fast_bf16() else None
    images = torch.randint(0, 256, ({images}, side, side, 3), dtype=torch.uint8)
    norm = Normalizer((0.5,) * 3, (0.25,) * 3)
    def work(n):
        predict_logits(model, images[:n], norm, amp_dtype=dtype)
else:
    dtype = None
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9, nesterov=True)
    x = torch.randn(64, 3, side, side).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (64,))
    def work(n):
        for _ in range(n // 64):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
work(256)  # warm-up: the heap reaches its working size
usage = resource.getrusage(resource.RUSAGE_SELF)
start = time.perf_counter()
work({images})
seconds = time.perf_counter() - start
after = resource.getrusage(resource.RUSAGE_SELF)
print(json.dumps({{
    "images_per_s": round({images} / seconds, 1),
    "minor_faults": after.ru_minflt - usage.ru_minflt,
    "system_s": round(after.ru_stime - usage.ru_stime, 2),
    "user_s": round(after.ru_utime - usage.ru_utime, 2),
    "precision": "bf16" if dtype else "fp32",
    "kept": allocator.kept(),
}}))
"""


def run(kind: str, side: int, keep: bool) -> dict:
    images = 1536 if kind == "inference" else 640
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MALLOC_", "GLIBC_"))}
    env.pop("IMAGECLF_KEEP_FREED_MEMORY", None)
    code = RUN.format(keep=keep, kind=kind, side=side, images=images)
    out = subprocess.run(
        [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/allocator.json")
    args = parser.parse_args()
    load = loadavg()
    rows = []
    print(
        "| workload | side | precision | default img/s | kept img/s | speed-up "
        "| faults default / kept | kernel s default / kept |\n"
        "|---|---:|---|---:|---:|---:|---:|---:|"
    )
    for kind, side in WORKLOADS:
        default, kept = run(kind, side, False), run(kind, side, True)
        assert kept["kept"] and not default["kept"], "the setting did not take"
        row = {"workload": kind, "side": side, "default": default, "kept": kept,
               "speedup": round(kept["images_per_s"] / default["images_per_s"], 2)}  # fmt: skip
        rows.append(row)
        print(
            f"| {kind} | {side} | {kept['precision']} | {default['images_per_s']:,.0f} "
            f"| {kept['images_per_s']:,.0f} | {row['speedup']:.2f}x "
            f"| {default['minor_faults']:,} / {kept['minor_faults']:,} "
            f"| {default['system_s']} / {kept['system_s']} |",
            flush=True,
        )
    write_result(args.out, rows, load)


if __name__ == "__main__":
    main()
