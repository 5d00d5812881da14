"""Train recipes end to end with the real CLI and tabulate speed and accuracy.

Each recipe runs as `imageclf train` in a subprocess, so the wall time includes
start-up, data loading (from the decoded cache after the first run) and the
final evaluation. The 1-minute load average before and after each run is
recorded: a busy machine shows up in the JSON instead of hiding in the times.

    python benchmarks/train_speed.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --recipes seed-a seed-b seed-d fast --out benchmarks/results/train_speed.json
"""

from __future__ import annotations

import argparse
import json
import shlex
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

# What each seed system reported for itself (test accuracy), for comparison.
SEED_REPORTED = {
    "seed-a": "0.68-0.70",
    "seed-b": "0.7502",
    "seed-d": "not reported",
    "fast": "-",
}


def run_recipe(recipe: str, data: str, runs_dir: Path, extra: list[str], seed: int = 0) -> dict:
    out = runs_dir / f"{recipe}-seed{seed}"
    cmd = [sys.executable, "-m", "imageclf", "-q", "train", "--recipe", recipe]
    cmd += ["--data", data, "--seed", str(seed), "--out", str(out), *extra]
    load_before = loadavg()
    start = time.perf_counter()
    subprocess.run(cmd, check=True)
    wall = time.perf_counter() - start
    metrics = json.loads((out / "metrics.json").read_text())
    history = json.loads((out / "history.json").read_text())
    config = json.loads((out / "config.json").read_text())
    train_images = config["split"]["sizes"]["train"]
    epoch_seconds = sum(h["seconds"] for h in history)
    return {
        "recipe": recipe,
        "seed": seed,
        "command": "imageclf " + " ".join(shlex.quote(c) for c in cmd[4:]),
        "split": config["split"],
        "precision": config["precision"],
        "threads": config["threads"],
        "epochs": metrics["epochs_run"],
        "best_epoch": metrics["best_epoch"],
        "images_per_s": round(train_images * len(history) / epoch_seconds, 1),
        "wall_s": round(wall, 1),
        "val_acc": metrics.get("val", {}).get("accuracy"),
        "test_acc": metrics.get("test", {}).get("accuracy"),
        "test_loss": metrics.get("test", {}).get("loss"),
        "test_tta_acc": metrics.get("test_tta", {}).get("accuracy"),
        "seed_reported": SEED_REPORTED.get(recipe, "-"),
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
    }


def fmt(value, digits=4):
    if value is None:
        return "-"
    return f"{value:.{digits}f}" if isinstance(value, float) else str(value)


def table(rows: list[dict]) -> str:
    head = (
        "| recipe | seed | split | epochs (best) | train img/s | wall | val acc | test acc | "
        "test acc TTA | seed reported |"
    )
    lines = [head, "|" + "---|" * 10]
    for r in rows:
        lines.append(
            f"| {r['recipe']} | {r.get('seed', 0)} | {r['split']['name']} | "
            f"{r['epochs']} ({r['best_epoch']}) | "
            f"{r['images_per_s']:.0f} | {r['wall_s'] / 60:.1f} min | {fmt(r['val_acc'])} | "
            f"{fmt(r['test_acc'])} | {fmt(r['test_tta_acc'])} | {r['seed_reported']} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--recipes", nargs="+", default=["seed-a", "seed-b", "seed-d", "fast"])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--runs-dir", default="runs/bench")
    parser.add_argument("--out", default="benchmarks/results/train_speed.json")
    parser.add_argument(
        "extra", nargs=argparse.REMAINDER, help="after --: extra flags for every `imageclf train`"
    )
    args = parser.parse_args()
    extra = [a for a in args.extra if a != "--"]
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    result = json.loads(out.read_text()) if out.exists() else {"rows": []}
    for recipe in args.recipes:
        for seed in args.seeds:
            row = run_recipe(recipe, args.data, Path(args.runs_dir), extra, seed)
            row |= {"machine": describe(), "data": args.data, "date": time.strftime("%Y-%m-%d")}
            print(table([row]).splitlines()[-1], flush=True)
            # Saved after every run: an interrupted sweep keeps what it measured.
            rows = {(r["recipe"], r.get("seed", 0)): r for r in result["rows"]}
            rows[(recipe, seed)] = row
            result["rows"] = list(rows.values())
            out.write_text(json.dumps(result, indent=2))
    print()
    print(table(result["rows"]))


if __name__ == "__main__":
    main()
