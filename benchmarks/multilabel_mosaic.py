"""Multi-label benchmark: 2x2 mosaics of CIFAR-10 pictures, labels = the classes present.

    flock /tmp/heavy.lock python benchmarks/multilabel_mosaic.py \
        [--archive ../shared/data/cifar10-jpeg.tar.gz] [--train 50000] [--test 10000]

Machines here have no internet, so the pictures come from the CIFAR-10 JPEG q75 mirror.
Each mosaic is four pictures drawn at random (seeded) from one half of the mirror, each
downscaled to 16x16 (2x2 box average) and placed in a quadrant of a 32x32 picture; its
labels are the classes among the four (1 to 4 labels, 3.4 on average). Training mosaics
come from the mirror's train half only, test mosaics from its test half only, so no
picture is shared. 32x32 rather than 64x64 mosaics of whole pictures: the ``fast``
recipe and its net are sized for 32 px (a 64 px mosaic costs 4x the compute, ~20 min
here instead of ~5), at the price of 16 px objects, which are harder to recognise.

The mosaics are written as PNG files with a ``labels.csv`` table (``file,labels,split``;
labels separated by spaces), so the run goes through the same path as a user's table:
``imageclf.train(recipe="fast", data=TABLE)`` (validation: 5,000 training mosaics held
out by the official split), then ``imageclf.evaluate`` on the test mosaics.

Baseline: the same network's answer reduced to ONE label, its most probable one: what a
single-label classifier can say about a picture holding several things, at best. Its
recall cannot exceed 1 / (labels per picture). Its mAP is computed from the one-hot
answers (the ranking a single answer gives).
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
RESULTS = REPO / "benchmarks" / "results" / "multilabel_mosaic.json"


def mosaics(images: np.ndarray, labels: np.ndarray, count: int, seed: int):
    """``count`` 32x32 mosaics of four 16x16 pictures drawn from ``images`` (N, 32, 32, 3),
    and their (count, 10) multi-hot labels."""
    rng = np.random.default_rng(seed)
    small = images.reshape(-1, 16, 2, 16, 2, 3).mean((2, 4)).round().astype(np.uint8)
    picks = rng.integers(0, len(images), (count, 4))
    out = np.empty((count, 32, 32, 3), np.uint8)
    for q, (r, c) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        out[:, r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = small[picks[:, q]]
    hot = np.zeros((count, 10), np.uint8)
    for q in range(4):
        hot[np.arange(count), labels[picks[:, q]]] = 1
    return out, hot


def write_table(root: Path, parts: dict[str, tuple[np.ndarray, np.ndarray]], classes) -> Path:
    """PNG files under ROOT/<split>/ and ROOT/labels.csv naming them."""
    rows = [["file", "labels", "split"]]
    for split, (images, hot) in parts.items():
        (root / split).mkdir(parents=True, exist_ok=True)
        for i, (picture, row) in enumerate(zip(images, hot, strict=True)):
            name = f"{split}/{i:05d}.png"
            Image.fromarray(picture).save(root / name, compress_level=1)
            rows.append([name, " ".join(classes[c] for c in np.flatnonzero(row)), split])
    with open(root / "labels.csv", "w", newline="") as handle:
        csv.writer(handle).writerows(rows)
    return root / "labels.csv"


def baseline(probs: np.ndarray, targets: np.ndarray) -> dict:
    """One label per picture: the most probable (micro/macro/samples F1, mAP of one-hot)."""
    from imageclf.evaluation.multilabel import label_scores

    one = np.zeros_like(targets)
    one[np.arange(len(probs)), probs.argmax(1)] = True
    return label_scores(targets, one.astype(np.float64), one)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--train", type=int, default=50_000, help="training mosaics")
    parser.add_argument("--test", type=int, default=10_000, help="test mosaics")
    parser.add_argument("--epochs", type=int, default=None, help="default: the recipe's")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    import imageclf
    from imageclf.data import load_dataset
    from imageclf.data.dataset import TEST, TRAIN

    started = time.perf_counter()
    cifar = load_dataset(args.archive, progress=False)
    parts = {
        "train": mosaics(cifar.images[cifar.partition == TRAIN],
                         cifar.labels[cifar.partition == TRAIN], args.train, seed=0),
        "test": mosaics(cifar.images[cifar.partition == TEST],
                        cifar.labels[cifar.partition == TEST], args.test, seed=1),
    }  # fmt: skip
    with tempfile.TemporaryDirectory() as work:
        table = write_table(Path(work) / "mosaics", parts, cifar.classes)
        built = time.perf_counter() - started
        load = loadavg()
        overrides = {"epochs": args.epochs} if args.epochs else {}
        run = imageclf.train(recipe="fast", data=str(table), out=str(Path(work) / "run"),
                             seed=0, progress=False, **overrides)  # fmt: skip
        result = imageclf.evaluate([run.bundle_path], str(table), splits=["test"],
                                   tta=True, progress=False)  # fmt: skip
    detail = result.detail
    summary = result.metrics["summary"]
    rows = {f"multi-label ({'TTA' if r['tta'] else 'no TTA'})": r for r in summary}
    rows["baseline: its top label only (no TTA)"] = baseline(detail.probs, detail.targets)
    report = {
        "benchmark": "multilabel_mosaic",
        "data": "CIFAR-10 JPEG q75 mirror: 2x2 mosaics of 16 px pictures, 32x32",
        "train_mosaics": args.train,
        "test_mosaics": args.test,
        "recipe": "fast",
        "epochs": run.metrics["epochs_run"],
        "val": run.metrics["val"],
        "calibration": run.metrics.get("calibration"),
        "rows": rows,
        "per_label": result.metrics["per_label"],
        "train_seconds": run.metrics["train_seconds"],
        "build_seconds": round(built, 1),
        "wall_seconds": round(time.perf_counter() - started, 1),
        "loadavg_before": load,
        "loadavg_after": loadavg(),
        "machine": describe(),
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2))
    keys = ("map", "micro_f1", "macro_f1", "samples_f1", "subset_accuracy", "hamming_loss")
    print(f"{'':<40}" + "".join(f"{k:>16}" for k in keys))
    for name, row in rows.items():
        print(f"{name:<40}" + "".join(f"{row[k]:>16.4f}" for k in keys))
    print(f"train {report['train_seconds']:.0f} s, wall {report['wall_seconds']:.0f} s; "
          f"JSON: {args.out}")  # fmt: skip


if __name__ == "__main__":
    main()
