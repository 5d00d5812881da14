"""Inference speed through ``Predictor``: batch throughput and single-image latency.

    python benchmarks/infer_speed.py [--model PATH] [--data ../shared/data/cifar10-jpeg.tar.gz]
        [--threads 2] [--precision fp32|auto]

Batch throughput runs ``predict_proba`` on preprocessed uint8 images (the
network alone); single-image latency runs ``predict`` on encoded 500x375 JPEG bytes
(a typical phone-photo thumbnail), so it includes decoding and resizing, as a web
request would.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import describe, loadavg

from imageclf import Predictor


def sample_images(data: str | None, n: int) -> np.ndarray:
    if data:
        from imageclf.data import TEST, load_dataset

        ds = load_dataset(data, progress=False)
        return ds.images[ds.partition == TEST][:n]
    rng = np.random.default_rng(0)
    return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def phone_jpegs(images: np.ndarray, n: int = 50) -> list[bytes]:
    """The first ``n`` pictures as 500x375 JPEG bytes (quality 90): a phone photo's
    thumbnail, as a web request brings it."""
    encoded = []
    for image in images[:n]:
        buffer = io.BytesIO()
        Image.fromarray(image).resize((500, 375)).save(buffer, format="JPEG", quality=90)
        encoded.append(buffer.getvalue())
    return encoded


def single_latencies(predictor: Predictor, encoded: list[bytes], requests: int) -> list[float]:
    """Milliseconds of ``predict`` per request, one JPEG at a time, after 20 warm-ups."""
    for _ in range(20):
        predictor.predict(encoded[0])
    latencies = []
    for i in range(requests):
        start = time.perf_counter()
        predictor.predict(encoded[i % len(encoded)], top_k=5)
        latencies.append((time.perf_counter() - start) * 1000)
    return latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bundle (default: the bundled model)")
    parser.add_argument("--data", default=None, help="take real test images from this dataset")
    parser.add_argument("--batch-images", type=int, default=2000)
    parser.add_argument("--latency-requests", type=int, default=300)
    parser.add_argument("--threads", type=int, default=2, help="torch threads (one process)")
    parser.add_argument("--precision", default="fp32", help="fp32, or auto: bf16 where native")
    parser.add_argument("--out", default="benchmarks/results/infer_speed.json")
    args = parser.parse_args()

    torch.set_num_threads(args.threads)
    predictor = Predictor.load(args.model, precision=args.precision)
    images = sample_images(args.data, args.batch_images)
    if images.shape[1] != predictor.input_size:  # e.g. a fine-tuned 160 px model
        images = predictor.preprocess(list(images))
    rows = []
    load_before = loadavg()
    for tta in (False, True):
        predictor.predict_proba(images[:256], tta=tta)  # warm-up
        start = time.perf_counter()
        predictor.predict_proba(images, tta=tta)
        seconds = time.perf_counter() - start
        rows.append(
            {
                "measure": f"batch throughput{' (TTA)' if tta else ''}",
                "value": round(len(images) / seconds, 1),
                "unit": "images/s",
            }
        )

    latencies = single_latencies(predictor, phone_jpegs(images), args.latency_requests)
    p50, p99 = np.percentile(latencies, [50, 99])
    rows.append(
        {
            "measure": "single image latency p50 (500x375 JPEG bytes)",
            "value": round(float(p50), 2),
            "unit": "ms",
        }
    )
    rows.append(
        {"measure": "single image latency p99", "value": round(float(p99), 2), "unit": "ms"}
    )

    result = {
        "machine": describe(),
        "model": predictor.name,
        "model_path": args.model or "bundled default",
        "threads": args.threads,
        "precision": predictor.precision,
        "data": args.data or "random pixels",
        "rows": rows,
        "loadavg_before": load_before,
        "loadavg_after": loadavg(),
        "date": time.strftime("%Y-%m-%d"),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2))
    print("| measure | value |\n|---|---|")
    for row in rows:
        print(f"| {row['measure']} | {row['value']} {row['unit']} |")


if __name__ == "__main__":
    main()
