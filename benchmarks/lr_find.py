"""Does ``imageclf lr-find``'s suggestion land where a short grid of real runs is best?

On two small data sets (a 2,000-image subset of the CIFAR-10 JPEG mirror, official
test held out and 1,000 of train for validation; the realphotos-dev class folder at
32 px, 70-15-15), for the ``fast`` recipe: the LR range test (100 steps), then short
trainings at the recipe's lr times 0.1 .. 10 (half decades) and at the two rates the
sweep points at (minimum/10 and steepest descent), scored by validation accuracy.

    nice -n 19 .venv/bin/python benchmarks/lr_find.py [--epochs 4]

Prints a table; writes benchmarks/results/lr_find.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, loadavg

from imageclf.training import train
from imageclf.training.lr_find import lr_find
from imageclf.training.resolve import resolve

OUT = Path(__file__).parent / "results"
FACTORS = (0.1, 0.316, 1.0, 3.16, 10.0)
SETS = {
    "cifar10-mirror-2000": dict(data="../shared/data/cifar10-jpeg.tar.gz", subset=2000,
                                val_size=1000, batch_size=64),
    "realphotos-dev-classes": dict(data="../shared/data/realphotos-dev/classes",
                                   image_size=32, batch_size=32),
}  # fmt: skip


def val_acc(settings: dict, lr: float, epochs: int, out: Path) -> float:
    cfg = resolve("fast", lr=lr, epochs=epochs, adapt=False, out=str(out), **settings)
    run = train(cfg, progress=False, evaluate_test=False)
    return max(h["val_acc"] for h in run.history if h.get("val_acc") is not None)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=4)
    args = ap.parse_args()
    results = {"machine": describe(), "loadavg_start": loadavg(), "epochs": args.epochs,
               "recipe": "fast", "sets": {}}  # fmt: skip
    for name, settings in SETS.items():
        started = time.perf_counter()
        cfg = resolve("fast", adapt=False, **settings)
        found = lr_find(cfg, steps=100, progress=False)
        sweep_s = time.perf_counter() - started
        rates = {f"recipe x{f:g}": cfg.lr * f for f in FACTORS}
        rates["lr-find minimum/10"] = found.minimum / 10 if found.minimum else None
        rates["lr-find steepest"] = found.steepest  # the suggestion (RULE)
        grid = {}
        with tempfile.TemporaryDirectory() as tmp:
            for label, lr in rates.items():
                if lr is None:
                    continue
                acc = val_acc(settings, lr, args.epochs, Path(tmp) / label.replace(" ", "_"))
                grid[label] = {"lr": lr, "val_acc": round(acc, 4)}
                print(f"{name:<24} {label:<20} lr {lr:9.3g}  val_acc {grid[label]['val_acc']:.4f}",
                      flush=True)  # fmt: skip
        best = max(grid, key=lambda k: grid[k]["val_acc"])
        results["sets"][name] = {
            "settings": settings, "sweep_seconds": round(sweep_s, 1), "stopped": found.stopped,
            "suggestion": found.suggestion, "steepest": found.steepest, "minimum": found.minimum,
            "recipe_lr": cfg.lr, "grid": grid, "best": best,
        }  # fmt: skip
    results["loadavg_end"] = loadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "lr_find.json").write_text(json.dumps(results, indent=1))
    print(f"{'data':<24} {'suggested':>10} {'min/10':>10} {'recipe':>10}  best on the grid")
    for name, r in results["sets"].items():
        s = r["suggestion"] or float("nan")
        t = r["minimum"] / 10 if r["minimum"] else float("nan")
        print(f"{name:<24} {s:>10.3g} {t:>10.3g} {r['recipe_lr']:>10.3g}  {r['best']} "
              f"({r['grid'][r['best']]['lr']:.3g})")  # fmt: skip


if __name__ == "__main__":
    main()
