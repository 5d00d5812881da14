"""Small-data benchmark: from scratch vs --init vs linear probe vs fine-tuning, end to end.

    python benchmarks/finetune_small.py [--archive ../shared/data/cifar10-jpeg.tar.gz]
        [--classes cat,dog] [--train-per-class 100] [--val-per-class 25] [--modes ...]
    python benchmarks/finetune_small.py --folder DIR   # a real ROOT/train + ROOT/val folder

Machines here have no internet, so the "user's folder" is built from the CIFAR-10 JPEG
mirror: a seeded random draw of ``train-per-class`` + ``val-per-class`` images of each
class from its TEST half (which the bundled model, trained on all 50,000 training
images, never saw: ``--init`` from it would otherwise be scored on its own training
images), written as ``ROOT/train/<class>/*.jpg`` and
``ROOT/val/<class>/*.jpg``. These are 32x32 pictures that the reader upsamples to the
training size, NOT real photos: blurrier than a user's photos, so a pretrained backbone
has less to work with here than on a real folder.

With ``--folder`` it runs on a folder you already have instead (real photos: e.g. the
public ants/bees "hymenoptera" set of PyTorch's transfer-learning tutorial, 245 training
and 153 validation photos).

Every mode runs ``imageclf train`` in a fresh process and the wall time is the whole
command (start-up, decoding, training, evaluation, writing the bundle). The data cache
is cleared before each run, so each pays its own decoding.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

REPO = Path(__file__).resolve().parents[1]
DEFAULT_ARCHIVE = REPO.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"
BUNDLED = REPO / "src" / "imageclf" / "weights" / "default.safetensors"

MODES = {
    "scratch-fast": ["--recipe", "fast"],
    "init-bundled": ["--init", str(BUNDLED)],
    "probe": ["--pretrained", "efficientnet-lite0", "--freeze-backbone"],
    "finetune": ["--pretrained", "efficientnet-lite0"],
}


def build_folder(archive: Path, classes: list[str], n_train: int, n_val: int, root: Path):
    """Seeded draw from the archive's test/ half into ROOT/{train,val}/<class>/.

    Two sequential passes (names, then bytes): random access into a .tar.gz would
    decompress from the start for every member."""
    with tarfile.open(archive) as tar:
        names = [m.name for m in tar if m.isfile() and "/test/" in f"/{m.name}"]
    rng = np.random.default_rng(0)
    dest: dict[str, Path] = {}
    for cls in classes:
        pool = sorted(n for n in names if n.split("/")[-2] == cls)
        if len(pool) < n_train + n_val:
            raise SystemExit(f"class {cls!r}: only {len(pool)} images in {archive}")
        picked = rng.choice(len(pool), n_train + n_val, replace=False)
        for k, i in enumerate(picked):
            split = "train" if k < n_train else "val"
            dest[pool[i]] = root / split / cls / Path(pool[i]).name
    with tarfile.open(archive) as tar:
        for member in tar:
            if member.name in dest:
                dest[member.name].parent.mkdir(parents=True, exist_ok=True)
                dest[member.name].write_bytes(tar.extractfile(member).read())


def run_mode(name: str, args: list[str], data: Path, work: Path, extra: list[str]) -> dict:
    out = work / f"run-{name}"
    env = {**os.environ, "IMAGECLF_HOME": str(work / f"home-{name}")}  # a cold cache each
    cmd = [sys.executable, "-m", "imageclf", "-q", "train", "--data", str(data),
           "--out", str(out), *args, *extra]  # fmt: skip
    load = loadavg()
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    wall = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout, proc.stderr, file=sys.stderr)
        return {"mode": name, "error": proc.stderr.strip().splitlines()[-1:]}
    metrics = json.loads((out / "metrics.json").read_text())
    config = json.loads((out / "config.json").read_text())["config"]
    return {
        "mode": name,
        "command": "imageclf train --data DIR " + " ".join(args + extra),
        "val_accuracy": round(metrics["val"]["accuracy"], 4),
        "val_loss": round(metrics["val"]["loss"], 4),
        "wall_s": round(wall, 1),
        "train_s": metrics.get("train_seconds"),
        "image_size": config["image_size"],
        "epochs": config["epochs"],
        "batch_size": config["batch_size"],
        "loadavg_before": load,
        "loadavg_after": loadavg(),
    }


def _describe_data(args, classes: list[str], data: Path) -> dict:
    if args.folder is None:
        return {
            "source": f"{args.archive.name} (CIFAR-10 JPEG q75 mirror), test half",
            "classes": classes,
            "train_per_class": args.train_per_class,
            "val_per_class": args.val_per_class,
            "note": "32x32 images upsampled by the reader; not real photos",
        }
    counts = {
        split: {c.name: sum(1 for f in c.iterdir() if f.is_file())
                for c in sorted((data / split).iterdir()) if c.is_dir()}
        for split in ("train", "val") if (data / split).is_dir()
    }  # fmt: skip
    return {"source": args.source or str(data), "images_per_class": counts}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--archive", type=Path, default=DEFAULT_ARCHIVE)
    parser.add_argument(
        "--folder",
        type=Path,
        default=None,
        help="use this ROOT/train + ROOT/val folder instead of a CIFAR draw",
    )
    parser.add_argument("--source", default=None, help="where --folder came from, for the JSON")
    parser.add_argument("--classes", default="cat,dog")
    parser.add_argument("--train-per-class", type=int, default=100)
    parser.add_argument("--val-per-class", type=int, default=25)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--extra", default="", help="extra arguments for every train command")
    parser.add_argument("--keep", type=Path, default=None, help="keep the folder and runs here")
    parser.add_argument("--out", default="benchmarks/results/finetune_small.json")
    args = parser.parse_args()

    classes = args.classes.split(",")
    work = args.keep or Path(tempfile.mkdtemp(prefix="imageclf-small-"))
    data = args.folder or work / "data"
    if args.folder is None and not data.exists():
        build_folder(args.archive, classes, args.train_per_class, args.val_per_class, data)
    rows = []
    print(f"{'mode':<14} {'val acc':>8} {'wall s':>8} {'size':>5} {'epochs':>6} {'batch':>5} load")
    for name in args.modes.split(","):
        row = run_mode(name, MODES[name], data, work, args.extra.split())
        rows.append(row)
        if "error" in row:
            print(f"{name:<14} failed: {row['error']}")
            continue
        print(
            f"{name:<14} {row['val_accuracy']:>8.4f} {row['wall_s']:>8.1f} {row['image_size']:>5} "
            f"{row['epochs']:>6} {row['batch_size']:>5} {row['loadavg_before']}"
        )
        result = {
            "machine": describe(),
            "data": _describe_data(args, classes, data),
            "rows": rows,
        }
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps(result, indent=2))  # after every row
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
