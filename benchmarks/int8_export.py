"""torch fp32 vs ONNX fp32 vs ONNX int8 (``imageclf export --format onnx-int8``): size,
latency, throughput and accuracy of one model.

    nice -n 19 python benchmarks/int8_export.py [--model PATH] [--data DATA]

Exports the model (default: the bundled one) both ways into a temporary folder (the int8
file calibrated on the bundle's recorded training split and checked on ``--data``'s test
split, as the command does), then measures the three through the same ``Predictor`` API
in one process with ``--threads`` threads: ``predict`` on 500x375 JPEG bytes (decode +
resize + forward + top-5, as a request does), ``predict_proba`` on one prepared picture
and on batches of ``--batch``, alternating in rounds (``onnx_speed.compare``) so other
work on a shared machine slows all alike; and each one's accuracy on the test split.
Needs the onnx extra. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from _machine import describe, loadavg  # noqa: E402
from onnx_speed import compare  # noqa: E402

DEFAULT_DATA = HERE.parent.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


def jpeg_of(image: np.ndarray) -> bytes:
    """A test picture as a 500x375 JPEG (quality 90), the size of a typical upload."""
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(image).resize((500, 375)).save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def accuracy(predictor, images: np.ndarray, labels: np.ndarray, chunk: int = 500) -> float:
    top = [
        predictor.predict_proba(images[i : i + chunk]).argmax(1)
        for i in range(0, len(images), chunk)
    ]
    return float((np.concatenate(top) == labels).mean())


def export_both(model: Path, data: str, scratch: Path) -> tuple[dict, dict]:
    """The fp32 and int8 exports (paths and what their checks said), each timed; files
    already in ``scratch`` (``--exports``) are used as they are."""
    from imageclf.cli.export import int8_data
    from imageclf.prediction.export import export_onnx
    from imageclf.prediction.quantize import QUANT_KEY, export_int8

    fp32_path, int8_path = scratch / "model.onnx", scratch / "model.int8.onnx"
    if fp32_path.is_file() and int8_path.is_file():
        import onnx

        props = {p.key: p.value for p in onnx.load(str(int8_path)).metadata_props}
        facts = json.loads(props[QUANT_KEY])
        return {"path": fp32_path, "seconds": None}, {
            "path": int8_path,
            "seconds": None,
            "facts": facts,
        }
    started = time.perf_counter()
    fp32 = export_onnx(model, scratch / "model.onnx")
    fp32_s = time.perf_counter() - started
    started = time.perf_counter()
    int8 = export_int8(model, scratch / "model.int8.onnx", data=int8_data(str(model), None, data))
    int8_s = time.perf_counter() - started
    return (
        {"path": fp32.path, "seconds": round(fp32_s, 1), "top1_agree": fp32.top1_agree},
        {"path": int8.path, "seconds": round(int8_s, 1), "facts": int8.facts},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="bundle (default: the bundled model)")
    parser.add_argument("--data", default=str(DEFAULT_DATA), help="labelled data (test split)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--calls", type=int, default=400, help="single-image calls per model")
    parser.add_argument("--rounds", type=int, default=10, help="alternations of the models")
    parser.add_argument("--out", type=Path, default=HERE / "results" / "int8_export.json")
    parser.add_argument(
        "--exports", type=Path, default=None, help="keep the exports here (and reuse them)"
    )
    args = parser.parse_args()

    import torch

    from imageclf.evaluation.evaluator import labelled_split
    from imageclf.prediction.predictor import Predictor, default_model_path

    torch.set_num_threads(args.threads)  # onnxruntime takes torch's thread count
    model = Path(args.model) if args.model else default_model_path()
    load_before = loadavg()
    with tempfile.TemporaryDirectory() as scratch:
        if args.exports:
            args.exports.mkdir(parents=True, exist_ok=True)
        fp32, int8 = export_both(model, args.data, args.exports or Path(scratch))
        predictors = {
            "torch fp32": Predictor.load(model, precision="fp32"),
            "onnx fp32": Predictor.load(fp32["path"]),
            "onnx int8": Predictor.load(int8["path"]),
        }
        sizes = {"torch fp32": model.stat().st_size}
        sizes |= {
            "onnx fp32": fp32["path"].stat().st_size,
            "onnx int8": int8["path"].stat().st_size,
        }
        meta = predictors["torch fp32"].metadata
        dataset, split, labels = labelled_split(meta, args.data, model if args.model else None)
        test, test_labels = dataset.images[split.test], labels[split.test]
        speed = compare(predictors, test, jpeg_of(test[0]), args)
        rows = []
        for name, predictor in predictors.items():
            rows.append(
                {
                    "model": name,
                    "size_mb": round(sizes[name] / 1e6, 2),
                    **speed[name],
                    "test_accuracy": round(accuracy(predictor, test, test_labels), 4),
                    "test_images": len(test),
                }
            )
            print(rows[-1], flush=True)
    report = {
        "benchmark": "int8_export",
        "command": " ".join(["python", "benchmarks/int8_export.py", *sys.argv[1:]]),
        "machine": describe(),
        "avx512_vnni": "avx512_vnni" in Path("/proc/cpuinfo").read_text(),
        "threads": args.threads,
        "loadavg_1min_before": load_before,
        "loadavg_1min_after": loadavg(),
        "model": args.model or "bundled (src/imageclf/weights/default.safetensors)",
        "data": args.data,
        "export_seconds": {"onnx fp32": fp32["seconds"], "onnx int8": int8["seconds"]},
        "int8_check": int8["facts"],
        "results": rows,
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
    }
    print(
        f"\n{'model':<11} {'size MB':>8} {'jpeg p50':>9} {'jpeg p99':>9} {'1-img p50':>10} "
        f"{'cpu p50':>8} {'batch img/s':>12} {'test acc':>9}"
    )
    for r in rows:
        print(
            f"{r['model']:<11} {r['size_mb']:>8} {r['jpeg_request_p50_ms']:>9} "
            f"{r['jpeg_request_p99_ms']:>9} {r['single_p50_ms']:>10} {r['single_cpu_p50_ms']:>8} "
            f"{r['batch_images_per_s']:>12} {r['test_accuracy']:>9.2%}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
