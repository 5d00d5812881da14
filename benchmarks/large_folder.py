"""Pictures larger than memory (issue 30): peak anonymous memory and first-epoch speed of
``imageclf train`` on a folder of 224x224 JPEGs, pictures in memory vs memory-mapped.

    python benchmarks/large_folder.py [--images 5000] [--subset 600] [--batch-size 16]
        [--cases memory,disk,disk-cold] [--folder DIR]

Each case runs ``imageclf train --image-size 224 --subset N --batch-size B --epochs 1``
(TTA off) in a fresh process with a fresh ``IMAGECLF_HOME``, sampling the process's
RssAnon from /proc every 20 ms (pages of a memory-mapped file are RssFile, not RssAnon):

- ``memory``: no limit; the pictures fit and are held in memory (decoded in the run).
- ``disk``: ``IMAGECLF_MEMORY_LIMIT`` below the decoded size, so the run decodes into
  the disk cache and trains from the memory-mapped file (warm page cache).
- ``disk-cold``: decoded into the disk cache first (another process), the file dropped
  from the page cache (posix_fadvise DONTNEED), then trained: every first read comes
  from disk, as with a folder bigger than RAM.
- ``gather``: the data path alone, in this process: one shuffled pass over every
  picture in training's batches, from memory, the warm file and the cold file.

The folder (default: 5,000 synthetic 224x224 JPEGs of smooth noise, 10 classes) is
built in a temporary folder unless ``--folder`` is given. The epoch's seconds are the
run's own (history.json: training steps plus validation of the 15% held out).
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

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

REPO = Path(__file__).resolve().parents[1]
IMAGECLF = str(Path(sys.executable).parent / "imageclf")


def build_folder(root: Path, n: int, side: int = 224, classes: int = 10) -> Path:
    """ROOT/class<k>/<i>.jpg: smooth noise (upsampled from side/8), JPEG quality 85."""
    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % classes}"
        folder.mkdir(parents=True, exist_ok=True)
        small = rng.integers(0, 256, (side // 8, side // 8, 3), dtype=np.uint8)
        Image.fromarray(small).resize((side, side), Image.BILINEAR).save(
            folder / f"{i:06d}.jpg", quality=85
        )
    return root


def anon_mb(pid: int) -> tuple[int, int] | None:
    """(RssAnon, RssFile) of a process in MB; None once it is gone."""
    try:
        with open(f"/proc/{pid}/status") as status:
            fields = {ln.split(":")[0]: int(ln.split()[1]) for ln in status if ln.startswith("Rss")}
        return fields["RssAnon"] // 1024, fields["RssFile"] // 1024
    except (OSError, KeyError):
        return None


def run_sampled(cmd: list[str], env: dict, log: Path) -> dict:
    """Run ``cmd``, sampling its RssAnon; its output goes to ``log``."""
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
        peak_anon = peak_file = 0
        while proc.poll() is None:
            now = anon_mb(proc.pid)
            if now:
                peak_anon, peak_file = max(peak_anon, now[0]), max(peak_file, now[1])
            time.sleep(0.02)
    if proc.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed; see {log}:\n{log.read_text()[-2000:]}")
    return {"peak_rss_anon_mb": peak_anon, "peak_rss_file_mb": peak_file,
            "wall_s": round(time.perf_counter() - started, 1)}  # fmt: skip


def drop_page_cache(folder: Path) -> None:
    for path in folder.glob("*.pixels"):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def run_case(case: str, folder: Path, args, work: Path, decoded: int) -> dict:
    home = work / f"home-{case}"
    env = {**os.environ, "IMAGECLF_HOME": str(home)}
    env.pop("IMAGECLF_MEMORY_LIMIT", None)
    if case != "memory":
        env["IMAGECLF_MEMORY_LIMIT"] = str(decoded // 3)  # the pictures are 3x the limit
    if case == "disk-cold":
        code = ("import sys; from imageclf.data import load_dataset; "
                "load_dataset(sys.argv[1], image_size=224, progress=False)")  # fmt: skip
        decode = [sys.executable, "-c", code, str(folder)]
        subprocess.run(["nice", "-n", "19", *decode], env=env, check=True)
        drop_page_cache(home / "datasets")
    run_dir = work / f"run-{case}"
    cmd = [
        "nice", "-n", "19", IMAGECLF, "train", "--data", str(folder), "--image-size", "224",
        "--subset", str(args.subset), "--batch-size", str(args.batch_size), "--epochs", "1",
        "--set", "tta=false", "--out", str(run_dir),
    ]  # fmt: skip
    result = run_sampled(cmd, env, work / f"{case}.log")
    text = (work / f"{case}.log").read_text()
    epoch = json.loads((run_dir / "history.json").read_text())[-1]
    return {
        "case": case,
        "memory_limit_mb": None if case == "memory" else round(decoded / 3 / 2**20),
        "chosen": "disk (memory-mapped)" if "memory-mapped" in text else "memory",
        **result,
        "epoch_s": epoch["seconds"],
        "train_img_per_s": round(args.subset / epoch["seconds"], 1),
        "loadavg": loadavg(),
    }


def gather_rates(folder: Path, work: Path, batch: int) -> list[dict]:
    """The data path alone: one shuffled pass over every picture in batches, gathered as
    training gathers them (``SplitImages``), from memory, from the memory-mapped file in
    the page cache, and from the file after dropping it from the page cache."""
    import torch

    from imageclf.data import load_dataset
    from imageclf.data.loader import SplitImages, batch_indices

    os.environ["IMAGECLF_HOME"] = str(work / "home-gather")
    os.environ["IMAGECLF_MEMORY_LIMIT"] = "1M"
    mapped = load_dataset(folder, image_size=224, progress=False).images
    # Read, not through the mapping: pages mapped here could not be dropped for "cold".
    (pixels,) = (work / "home-gather" / "datasets").glob("*.pixels")
    held = np.fromfile(pixels, np.uint8).reshape(mapped.shape)
    rows = []
    for case, images in (("gather: memory", held), ("gather: disk (warm)", mapped),
                         ("gather: disk (cold)", mapped)):  # fmt: skip
        if case.endswith("(cold)"):
            drop_page_cache(work / "home-gather" / "datasets")
        view = SplitImages(images, np.arange(len(images)))
        gen = torch.Generator().manual_seed(0)
        started = time.perf_counter()
        for idx in batch_indices(len(view), batch, shuffle=True, gen=gen):
            view[idx]
        seconds = time.perf_counter() - started
        rows.append({"case": case, "images": len(view), "seconds": round(seconds, 3),
                     "img_per_s": round(len(view) / seconds), "loadavg": loadavg()})  # fmt: skip
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images", type=int, default=5000)
    parser.add_argument("--subset", type=int, default=600)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--cases", default="memory,disk,disk-cold,gather")
    parser.add_argument("--folder", type=Path, default=None)
    parser.add_argument("--json", type=Path, default=REPO / "benchmarks/results/large_folder.json")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=os.environ.get("TMPDIR")) as tmp:
        work = Path(tmp)
        folder = args.folder or build_folder(work / "folder", args.images)
        n = sum(1 for p in folder.rglob("*") if p.is_file())
        decoded = n * 224 * 224 * 3
        cases = args.cases.split(",")
        rows = [run_case(c, folder, args, work, decoded) for c in cases if c != "gather"]
        gathers = gather_rates(folder, work, args.batch_size) if "gather" in cases else []
    header = ["case", "memory_limit_mb", "chosen", "peak_rss_anon_mb", "peak_rss_file_mb",
              "epoch_s", "train_img_per_s", "wall_s"]  # fmt: skip
    print(f"{n:,} pictures at 224x224 = {decoded / 1e6:,.0f} MB decoded; subset {args.subset}, "
          f"batch {args.batch_size}")  # fmt: skip
    print("  ".join(f"{h:>18}" for h in header))
    for row in rows:
        print("  ".join(f"{row[h]!s:>18}" for h in header))
    for row in gathers:
        print(f"{row['case']:<22} {row['images']:,} pictures in {row['seconds']} s = "
              f"{row['img_per_s']:,} img/s")  # fmt: skip
    record = {"machine": describe(), "loadavg": loadavg(), "images": n,
              "decoded_mb": round(decoded / 1e6), "subset": args.subset,
              "batch_size": args.batch_size, "rows": rows, "gather": gathers}  # fmt: skip
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(record, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
