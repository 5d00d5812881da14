"""PyTorch vs onnxruntime on the same model: single-image latency and batch throughput.

    python benchmarks/onnx_speed.py [--model PATH] [--data ../shared/data/cifar10-jpeg.tar.gz]

Exports the model (default: the bundled one) with ``imageclf export`` into a temporary
folder, then times both backends through the same ``Predictor`` API with 1 thread
(one server worker's share) and with every core: ``predict_proba`` on one
preprocessed image (the forward pass and softmax), on batches of 500, and
``predict`` on JPEG bytes (decode + resize + forward + top-5, as a request does).
The backends alternate in rounds, so other work on the machine slows both alike.
Needs the onnx extra.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import describe, loadavg  # noqa: E402

EXAMPLE = HERE.parent / "src" / "imageclf" / "web" / "static" / "examples" / "cat.jpg"


def sample_images(data: str | None, n: int, size: int) -> np.ndarray:
    if data:
        from imageclf.data import TEST, load_dataset

        ds = load_dataset(data, progress=False)
        return ds.images[ds.partition == TEST][:n]
    from imageclf.prediction.export import verification_images

    return verification_images(size, n)


def timed_ms(fn, calls: int, cpu: list[float] | None = None) -> list[float]:
    """Wall milliseconds per call; with ``cpu``, also the process's CPU milliseconds."""
    out = []
    for _ in range(calls):
        started, cpu_started = time.perf_counter(), time.process_time()
        fn()
        out.append((time.perf_counter() - started) * 1000)
        if cpu is not None:
            cpu.append((time.process_time() - cpu_started) * 1000)
    return out


def compare(predictors: dict, images: np.ndarray, jpeg: bytes, args) -> dict[str, dict]:
    """Both backends measured in alternating rounds, so load from other work on a shared
    machine falls on both alike."""
    one = images[:1]
    single: dict[str, list[float]] = {name: [] for name in predictors}
    single_cpu: dict[str, list[float]] = {name: [] for name in predictors}
    request: dict[str, list[float]] = {name: [] for name in predictors}
    batch_s: dict[str, float] = dict.fromkeys(predictors, 0.0)
    for predictor in predictors.values():  # warm-up
        timed_ms(lambda p=predictor: p.predict_proba(one), 50)
        predictor.predict_proba(images[: args.batch])
    per_round = max(1, args.calls // args.rounds)
    chunks = [images[i : i + args.batch] for i in range(0, len(images), args.batch)]
    for round_index in range(args.rounds):
        for name, p in predictors.items():
            single[name] += timed_ms(lambda p=p: p.predict_proba(one), per_round, single_cpu[name])
            request[name] += timed_ms(lambda p=p: p.predict(jpeg, top_k=5), per_round)
            chunk = chunks[round_index % len(chunks)]
            started = time.perf_counter()
            p.predict_proba(chunk)
            batch_s[name] += time.perf_counter() - started
    rows = {}
    for name in predictors:
        p50, p99 = np.percentile(single[name], [50, 99])
        r50, r99 = np.percentile(request[name], [50, 99])
        rows[name] = {
            "single_p50_ms": round(float(p50), 3),
            "single_p99_ms": round(float(p99), 3),
            # CPU per call is what other work on a shared machine does not inflate.
            "single_cpu_p50_ms": round(float(np.percentile(single_cpu[name], 50)), 3),
            "jpeg_request_p50_ms": round(float(r50), 3),
            "jpeg_request_p99_ms": round(float(r99), 3),
            "batch_images_per_s": round(
                sum(len(chunks[i % len(chunks)]) for i in range(args.rounds)) / batch_s[name], 1
            ),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bundle (default: the bundled model)")
    parser.add_argument("--data", default=None, help="take real test images from this dataset")
    parser.add_argument("--images", type=int, default=5000, help="for batch throughput")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--calls", type=int, default=1000, help="single-image calls")
    parser.add_argument("--rounds", type=int, default=20, help="alternations of the backends")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "onnx_speed.json")
    args = parser.parse_args()

    import torch

    from imageclf.prediction.export import export_onnx
    from imageclf.prediction.predictor import Predictor, default_model_path

    cores = torch.get_num_threads()
    model = Path(args.model) if args.model else default_model_path()
    jpeg = EXAMPLE.read_bytes()
    rows = []
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as scratch:
        exported = export_onnx(model, Path(scratch) / "model.onnx")
        print(
            f"exported: top-1 agrees on {exported.top1_agree}/{exported.images}, "
            f"max probability difference {exported.max_prob_diff:.2e}",
            flush=True,
        )
        for threads in sorted({1, cores}):
            torch.set_num_threads(threads)
            # onnxruntime takes torch's thread count when it loads.
            predictors = {
                "pytorch": Predictor.load(model),
                "onnxruntime": Predictor.load(exported.path),
            }
            images = sample_images(args.data, args.images, predictors["pytorch"].input_size)
            for backend, result in compare(predictors, images, jpeg, args).items():
                rows.append({"backend": backend, "threads": threads, **result})
                print(rows[-1], flush=True)
    report = {
        "benchmark": "onnx_speed",
        "command": " ".join(["python", "benchmarks/onnx_speed.py", *sys.argv[1:]]),
        "machine": describe(),
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": loadavg(),
        "model": args.model or "bundled (src/imageclf/weights/default.safetensors)",
        "data": args.data or "synthetic (imageclf.export.verification_images)",
        "parity": {
            "images": exported.images,
            "top1_agree": exported.top1_agree,
            "max_prob_diff": exported.max_prob_diff,
        },
        "results": rows,
    }
    print(
        f"\n{'backend':<12} {'threads':>7} {'1-img p50':>10} {'1-img p99':>10} {'cpu p50':>8} "
        f"{'jpeg p50':>9} {'jpeg p99':>9} {'batch img/s':>12}"
    )
    for r in rows:
        print(
            f"{r['backend']:<12} {r['threads']:>7} {r['single_p50_ms']:>10} "
            f"{r['single_p99_ms']:>10} {r['single_cpu_p50_ms']:>8} {r['jpeg_request_p50_ms']:>9} "
            f"{r['jpeg_request_p99_ms']:>9} {r['batch_images_per_s']:>12}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
