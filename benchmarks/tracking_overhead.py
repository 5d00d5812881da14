"""What ``--track tensorboard`` and ``--track mlflow`` cost a training run.

The same short run (``fast`` recipe, a 2,000-image subset of the CIFAR-10 JPEG mirror,
1,000 of train for validation, 4 epochs) without tracking, with each tracker and with
both; every tracker call is timed where it happens (opening, each epoch, the end: images
drawn, the bundle and files uploaded, closing), so the figure is the tracker's own time,
not the difference of two noisy wall times. MLflow reports to a real ``mlflow server``
(SQLite backend) started here on localhost: no network latency is included.

    flock /tmp/heavy.lock nice -n 19 .venv/bin/python benchmarks/tracking_overhead.py

Prints a table; writes benchmarks/results/tracking_overhead.json.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, loadavg

from imageclf.training import tracking, train
from imageclf.training.resolve import resolve
from imageclf.training.trackers import MlflowTracker, TensorBoardTracker

OUT = Path(__file__).parent / "results"
DATA = dict(data="../shared/data/cifar10-jpeg.tar.gz", subset=2000, val_size=1000)
EPOCHS = 4
CASES = {"none": [], "tensorboard": ["tensorboard"], "mlflow": ["mlflow"],
         "both": ["tensorboard", "mlflow"]}  # fmt: skip
SPENT: dict[str, float] = defaultdict(float)  # "mlflow.epoch" -> seconds, this case


def timed(key: str, fn):
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        started = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            SPENT[key] += time.perf_counter() - started

    return wrapper


def instrument() -> None:
    for cls, name in ((TensorBoardTracker, "tensorboard"), (MlflowTracker, "mlflow")):
        for method in ("epoch", "finish", "close"):
            setattr(cls, method, timed(f"{name}.{method}", getattr(cls, method)))
    TensorBoardTracker.__init__ = timed("tensorboard.open", TensorBoardTracker.__init__)
    MlflowTracker.open = classmethod(timed("mlflow.open", MlflowTracker.open.__func__))
    tracking.run_end = timed("images", tracking.run_end)  # drawn once for every tracker


def start_server(root: Path) -> tuple[subprocess.Popen, str]:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    command = [sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
               f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination",
               str(root / "artifacts"), "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            cwd=root, start_new_session=True)  # fmt: skip
    uri = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2):
                return proc, uri
        except OSError:
            time.sleep(0.3)
    raise RuntimeError("mlflow server did not start")


def main() -> None:
    instrument()
    results = {"machine": describe(), "loadavg_start": loadavg(), "epochs": EPOCHS,
               "recipe": "fast", "data": DATA, "cases": {}}  # fmt: skip
    with tempfile.TemporaryDirectory() as folder:
        proc, uri = start_server(Path(folder))
        os.environ["MLFLOW_TRACKING_URI"] = uri
        os.environ["MLFLOW_EXPERIMENT_NAME"] = "tracking-overhead"
        try:
            for case, names in CASES.items():
                SPENT.clear()
                cfg = resolve("fast", epochs=EPOCHS, adapt=False, threads=2,
                              out=str(Path(folder) / case), **DATA)  # fmt: skip
                started = time.perf_counter()
                run = train(cfg, progress=False, track=names)
                wall = time.perf_counter() - started
                per_epoch = {k: v / EPOCHS for k, v in SPENT.items() if k.endswith(".epoch")}
                results["cases"][case] = {
                    "wall_s": round(wall, 2),
                    "bundle_bytes": run.bundle_path.stat().st_size,
                    "tracker_s": {k: round(v, 4) for k, v in sorted(SPENT.items())},
                    "per_epoch_ms": {k: round(v * 1000, 2) for k, v in per_epoch.items()},
                    "total_tracker_s": round(sum(SPENT.values()), 3),
                }
        finally:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=30)
    results["loadavg_end"] = loadavg()
    OUT.mkdir(exist_ok=True)
    (OUT / "tracking_overhead.json").write_text(json.dumps(results, indent=2))
    print(f"{describe()}; load {results['loadavg_start']} -> {results['loadavg_end']}")
    print("| tracking | run wall | tracker time | open | per epoch | end (images, files) |")
    print("|---|---|---|---|---|---|")
    for case, r in results["cases"].items():
        t = r["tracker_s"]
        opening = sum(v for k, v in t.items() if k.endswith(".open"))
        epoch_ms = sum(r["per_epoch_ms"].values())
        end = sum(v for k, v in t.items() if k.endswith((".finish", ".close")) or k == "images")
        print(f"| {case} | {r['wall_s']:.1f} s | {r['total_tracker_s']:.2f} s | {opening:.2f} s"
              f" | {epoch_ms:.1f} ms | {end:.2f} s |")  # fmt: skip


if __name__ == "__main__":
    main()
