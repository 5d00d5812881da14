"""What helped: each new training option alone against its recipe's own settings, on
validation, for one from-scratch recipe and one fine-tune.

    python benchmarks/what_helped.py [--archive ../shared/data/cifar10-jpeg.tar.gz]
        [--subset 10000] [--epochs 8] [--folder hymenoptera_data] [--only scratch,finetune]
        [--seeds 0] [--out benchmarks/results/what_helped.json]
    python benchmarks/what_helped.py --table A.json B.json   # one table of several runs

* scratch: ``--recipe fast`` on the first ``--subset`` training images of the CIFAR-10
  JPEG mirror (official split: 5,000 training images held out for validation), for
  ``--epochs`` epochs, TTA off (it changes only the reported test figure).
* scratch-full (``--only scratch-full``): the whole ``fast`` recipe (45,000 images, its
  11 epochs), for the options the short runs left in doubt.
* finetune: ``--pretrained efficientnet-lite0`` (the ``finetune`` recipe) on a folder of
  real photos with train/ and val/ (e.g. PyTorch's ants/bees "hymenoptera" folder).

Each row is a fresh ``imageclf train`` process with one option added; the figure is the
kept model's validation accuracy (metrics.json, the way every run reports it) beside the
last epoch's (history.json): the recipes keep the best epoch on validation loss (the
fine-tune's head fit counts as epoch 0), so an option can change training without
changing the kept model. Wall time is the whole command; "epochs" is the time inside
training epochs (history.json), without data loading and the final scoring. The test
split is never read for a decision. Prints a table and writes JSON after every row; with
several seeds the table shows each option's mean over them and the baseline's spread.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
OPTIONS = {
    "baseline": [],
    "trivial-augment": ["--trivial-augment"],
    "mixup 0.2": ["--mixup", "0.2"],
    "cutmix 1.0": ["--cutmix", "1.0"],
    "erasing 0.25": ["--erasing", "0.25"],
    "schedule cosine": ["--schedule", "cosine"],
    "schedule onecycle": ["--schedule", "onecycle"],
    "ema 0.99": ["--ema", "0.99"],
}


def setups(args) -> dict[str, list[str]]:
    scratch = ["--data", str(args.archive), "--recipe", "fast", "--subset", str(args.subset),
               "--epochs", str(args.epochs), "--set", "tta=false"]  # fmt: skip
    finetune = ["--data", str(args.folder), "--pretrained", "efficientnet-lite0"]
    full = ["--data", str(args.archive), "--recipe", "fast", "--set", "tta=false"]
    return {"scratch": scratch, "finetune": finetune, "scratch-full": full}


def run_one(base: list[str], option: list[str], workdir: Path, seed: int) -> dict:
    out = workdir / f"run-{time.monotonic_ns()}"
    option = [*option, "--seed", str(seed)]
    command = [sys.executable, "-m", "imageclf", "-q", "train", *base, *option, "--out", str(out)]
    load_before = loadavg()
    start = time.perf_counter()
    subprocess.run(command, check=True, timeout=3600)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    trained = [h for h in history if h["epoch"] >= 1]
    return {
        "seed": seed,
        "command": "imageclf train " + " ".join([*base, *option]),
        "val_accuracy": metrics["val"]["accuracy"],
        "val_loss": round(metrics["val"]["loss"], 4),
        "kept_epoch": metrics["kept_epoch"],
        "last_epoch_val_accuracy": trained[-1]["val_acc"] if trained else None,
        "last_epoch_val_loss": trained[-1]["val_loss"] if trained else None,
        "train_loss": [h["train_loss"] for h in trained],  # shows an option was in effect
        "epochs": len(trained),
        "epochs_s": round(sum(h["seconds"] for h in trained), 1),
        "wall_s": round(wall, 1),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


def table(rows: list[dict]) -> str:
    """One line per (setup, option): means over its seeds; the baseline's seeds' range."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in rows:
        groups.setdefault((r["setup"], r["option"]), []).append(r)
    lines = ["| setup | option | seeds | val acc (kept) | vs baseline | val acc (last epoch) "
             "| epochs s | wall s |", "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for (setup, option), runs in groups.items():
        kept = [r["val_accuracy"] for r in runs]
        base = [r["val_accuracy"] for r in groups.get((setup, "baseline"), runs)]
        last = [r["last_epoch_val_accuracy"] for r in runs if r["last_epoch_val_accuracy"]]
        spread = f" ({100 * min(kept):.1f}-{100 * max(kept):.1f})" if len(kept) > 1 else ""
        lines.append(
            f"| {setup} | {option} | {len(runs)} | {100 * _mean(kept):.1f}%{spread} | "
            f"{100 * (_mean(kept) - _mean(base)):+.1f} | "
            f"{f'{100 * _mean(last):.1f}%' if last else '-'} | "
            f"{_mean([r['epochs_s'] for r in runs]):.0f} | "
            f"{_mean([r['wall_s'] for r in runs]):.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument("--folder", type=Path, help="real photos: ROOT/train + ROOT/val")
    parser.add_argument("--subset", type=int, default=10_000)
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--only", default="scratch,finetune")
    parser.add_argument("--options", default=",".join(OPTIONS))
    parser.add_argument("--seeds", default="0", help="comma-separated --seed values")
    parser.add_argument("--table", nargs="+", type=Path, help="print the table of JSON files")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks/results/what_helped.json")
    args = parser.parse_args()
    if args.table:
        print(table([r for path in args.table for r in json.loads(path.read_text())["rows"]]))
        return
    chosen = args.only.split(",")
    if "finetune" in chosen and args.folder is None:
        parser.error("the fine-tune rows need --folder (a folder of photos with train/ and val/)")
    result = {"machine": describe(), "subset": args.subset, "scratch_epochs": args.epochs,
              "folder": str(args.folder), "rows": []}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        for setup, base in setups(args).items():
            if setup not in chosen:
                continue
            for seed in [int(s) for s in args.seeds.split(",")]:
                for name in args.options.split(","):
                    run = run_one(base, OPTIONS[name], Path(tmp), seed)
                    row = {"setup": setup, "option": name, **run}
                    result["rows"].append(row)
                    print(f"{setup:8} {name:18} seed {seed} val {row['val_accuracy']:.4f} "
                          f"wall {row['wall_s']:.0f} s", flush=True)  # fmt: skip
                    args.out.parent.mkdir(parents=True, exist_ok=True)
                    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(table(result["rows"]))


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
