"""Backbones: EfficientNet-Lite0/1/2 fine-tuned on real photos, with single-image latency.

    python benchmarks/backbones.py [--ants DIR] [--realphotos DIR] [--sizes 160,own]
        [--backbones efficientnet-lite0,...] [--threads 1] [--out JSON]

Two folders of real photos:
- ants/bees: the "hymenoptera" folder of PyTorch's transfer-learning tutorial
  (ROOT/train 245 + ROOT/val 153 photos; see docs/benchmarks.md, issue #9);
- realphotos-dev: ``../shared/data/realphotos-dev/classes`` (273 photos of the ten
  CIFAR-10 classes), split here once, seeded and stratified, 60% train / 40% val, and
  copied into ROOT/train + ROOT/val so that every backbone sees the same photos.

Every run is the whole ``imageclf -q train --pretrained NAME --image-size S`` process
(the default fine-tune recipe: head fit, then three epochs of the top layers) on a cold
data cache, so wall time includes decoding. ``--sizes`` takes pixel sizes and ``own``
(each backbone's own resolution: 224, 240, 260).

Latency (``--latency``, or alone with ``--latency-only``): for each backbone and size, a
bundle of its ImageNet weights with a 2-class head (what a fine-tune writes; the head's
size does not matter) loaded in ``Predictor``; then ``Predictor.predict(path)`` on one
photo (decode, resize, forward), the backbones taking turns call by call so that load
from other work on the machine falls on all of them alike; the median per backbone.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

REPO = Path(__file__).resolve().parents[1]
ANTS = Path("/work/scratch/aug/hymenoptera_data")
REALPHOTOS = REPO.parent / "shared" / "data" / "realphotos-dev" / "classes"
BACKBONES = ("efficientnet-lite0", "efficientnet-lite1", "efficientnet-lite2")
OWN_SIZE = {"efficientnet-lite0": 224, "efficientnet-lite1": 240, "efficientnet-lite2": 260}


def split_folder(source: Path, root: Path, val_fraction: float, seed: int) -> dict:
    """ROOT/<class>/* -> ROOT/train + ROOT/val, seeded and stratified; the counts."""
    counts = {"train": {}, "val": {}}
    rng = random.Random(seed)
    for folder in sorted(p for p in source.iterdir() if p.is_dir()):
        files = sorted(f for f in folder.iterdir() if f.is_file())
        rng.shuffle(files)
        n_val = round(len(files) * val_fraction)
        for part, chosen in (("val", files[:n_val]), ("train", files[n_val:])):
            (root / part / folder.name).mkdir(parents=True, exist_ok=True)
            for f in chosen:
                shutil.copyfile(f, root / part / folder.name / f.name)
            counts[part][folder.name] = len(chosen)
    return counts


def latencies(sizes: list[tuple[str, int]], photo: Path, work: Path, args) -> list[dict]:
    """Median ms of ``Predictor.predict(photo)`` per (backbone, size), interleaved."""
    import statistics

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from imageclf import Predictor
    from imageclf.models import efficientnet as effnet
    from imageclf.models.bundle import save_bundle

    torch.set_num_threads(args.threads)
    predictors, flops = {}, {}
    for name, size in sizes:
        variant = effnet.VARIANTS[name]
        model = effnet.pretrained(2, name=name).eval()
        with torch.inference_mode(), FlopCounterMode(display=False) as counter:
            model(torch.zeros(1, 3, size, size))
        flops[(name, size)] = counter.get_total_flops()
        path = save_bundle(work / f"{name}-{size}.safetensors", model.state_dict(),
                           {"architecture": name, "arch_kwargs": {}, "classes": ["a", "b"],
                            "input_size": size,
                            "normalization": variant.normalization})  # fmt: skip
        predictors[(name, size)] = Predictor.load(path)
    times = {key: [] for key in predictors}
    for turn in range(args.repeats + 2):
        for key, predictor in predictors.items():
            start = time.perf_counter()
            predictor.predict(photo)
            if turn >= 2:  # two warm-up calls each
                times[key].append(time.perf_counter() - start)
    return [{"backbone": name, "size": size, "photo": photo.name, "calls": args.repeats,
             "median_ms": round(statistics.median(times[(name, size)]) * 1000, 1),
             "forward_gflops": round(flops[(name, size)] / 1e9, 3)}
            for name, size in predictors]  # fmt: skip


def run(name: str, size: int, data: Path, work: Path, args) -> dict:
    out = work / f"run-{data.name}-{name}-{size}"
    env = {**os.environ, "IMAGECLF_HOME": str(out) + "-home"}  # a cold data cache each
    cmd = [sys.executable, "-m", "imageclf", "-q", "train", "--data", str(data),
           "--out", str(out), "--pretrained", name, "--image-size", str(size),
           "--threads", str(args.threads), *args.extra.split()]  # fmt: skip
    load = loadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        return {"backbone": name, "size": size, "error": proc.stderr.strip().splitlines()[-1:]}
    metrics = json.loads((out / "metrics.json").read_text())
    return {
        "backbone": name,
        "size": size,
        "val_accuracy": round(metrics["val"]["accuracy"], 4),
        "val_loss": round(metrics["val"]["loss"], 4),
        "val_images": metrics["val"]["images"],
        "kept_epoch": metrics["kept_epoch"],
        "train_s": metrics["train_seconds"],
        "wall_s": round(wall, 1),
        "loadavg_before": load,
        "loadavg_after": loadavg(),
    }


def print_row(dataset: str, row: dict) -> None:
    if "error" in row:
        print(f"{dataset:<14} {row['backbone']:<20} {row['size']:>4}  failed: {row['error']}")
        return
    print(
        f"{dataset:<14} {row['backbone']:<20} {row['size']:>4} {row['val_accuracy']:>8.1%} "
        f"{row['val_loss']:>8.3f} {row['wall_s']:>7.1f} {row['loadavg_before']:>5}"
    )


def sizes_of(args) -> list[tuple[str, int]]:
    return [(name, OWN_SIZE[name] if size == "own" else int(size))
            for name in args.backbones.split(",") for size in args.sizes.split(",")]  # fmt: skip


def train_all(args, work: Path, result: dict) -> None:
    """Every (data, backbone, size) run, the JSON rewritten after each."""
    real = work / "realphotos-dev"
    data = {"ants-bees": args.ants, "realphotos-dev": real}
    result["data"] = {"ants-bees": "hymenoptera_data (ants/bees), ROOT/train + ROOT/val"}
    if "realphotos-dev" in args.datasets:
        counts = split_folder(args.realphotos, real, args.val_fraction, args.seed)
        result["data"]["realphotos-dev"] = {
            "source": str(args.realphotos),
            "split": f"seeded ({args.seed}) stratified {1 - args.val_fraction:.0%}/"
            f"{args.val_fraction:.0%} train/val",
            "images_per_class": counts,
        }
    print(f"{'data':<14} {'backbone':<20} {'size':>4} {'val acc':>8} {'val loss':>8} "
          f"{'wall s':>7} {'load':>5}")  # fmt: skip
    for dataset in args.datasets.split(","):
        for name, pixels in sizes_of(args):
            row = {"data": dataset, **run(name, pixels, data[dataset], work, args)}
            result["rows"].append(row)
            print_row(dataset, row)
            Path(args.out).write_text(json.dumps(result, indent=2))  # after every row
    walls = [r["wall_s"] for r in result["rows"] if "wall_s" in r]
    print(f"total wall {sum(walls):.0f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ants", type=Path, default=ANTS)
    parser.add_argument("--realphotos", type=Path, default=REALPHOTOS)
    parser.add_argument("--datasets", default="ants-bees,realphotos-dev")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--sizes", default="160", help="pixel sizes and/or 'own'")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=30, help="latency: timed calls each")
    parser.add_argument("--latency", action="store_true", help="also measure latency")
    parser.add_argument("--latency-only", action="store_true")
    parser.add_argument("--photo", type=Path, default=None, help="latency: this photo")
    parser.add_argument("--extra", default="", help="more arguments for every train command")
    parser.add_argument("--val-fraction", type=float, default=0.4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="benchmarks/results/backbones.json")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="imageclf-backbones-"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    result = {"machine": describe(), "threads": args.threads, "extra": args.extra, "rows": []}
    if not args.latency_only:
        train_all(args, work, result)
    if args.latency or args.latency_only:
        photo = args.photo or next(p for p in sorted(args.ants.rglob("*.jpg")))
        result["latency"] = latencies(sizes_of(args), photo, work, args)
        result["latency_loadavg_after"] = loadavg()
        Path(args.out).write_text(json.dumps(result, indent=2))
        for row in result["latency"]:
            print(f"latency {row['backbone']:<20} {row['size']:>4} {row['median_ms']:>7.1f} ms "
                  f"{row['forward_gflops']:>6.2f} GFLOPs "
                  f"(Predictor.predict, one {row['photo']}, {args.threads} thread(s))")  # fmt: skip
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
