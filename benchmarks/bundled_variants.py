"""Cheap variants of a trained model, before paying for another training run.

    python benchmarks/bundled_variants.py --data ../shared/data/cifar10-jpeg.tar.gz \
        --photos DEV/classes --others DEV/others [--model PATH] [--sides 112,160] \
        [--partner PATH --weights 0.5,0.7]

(``DEV`` = ``../shared/data/realphotos-dev``.)

Two questions issue 24 asked of the bundled model, each answered without retraining:

- **Another input side at test time.** The net is fully convolutional, so it runs at any
  side; the pictures are prepared exactly as ``Predictor.prepare`` does (reduced to the
  bundle's ``source_size``, then enlarged to the side). The bundle's temperature and
  "not sure" threshold were fitted at its own side and are kept, so the rates at other
  sides say whether its calibration carries, not what a recalibrated model would do.
- **An ensemble with a second model** (``--partner``, e.g. a 32 px net trained from
  scratch): the weighted mean of the two models' calibrated log-probabilities, each
  model fed at its own side, then the main model's threshold.

Every variant is scored on the mirror's test split (accuracy, ECE) and on real photos:
accuracy, "not sure" on right answers and on out-of-class photos at the threshold, and
"others flagged at matched doubt": the out-of-class share flagged by the threshold that
doubts as many right answers as the plain model does at its own, so a variant that only
became less sure of everything does not look better at spotting strangers.
Single-threaded reproducibility is not the point here: two threads, fp32.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _machine import loadavg, write_result
from real_photos import dev_set_arguments, dev_set_files

from imageclf.calibration import ece
from imageclf.data import load_dataset
from imageclf.data.dataset import TEST
from imageclf.prediction.predictor import Predictor

REPO = Path(__file__).resolve().parents[1]
CHUNK = 250


@dataclass
class Scores:
    """Calibrated log-probabilities of one variant on each set of pictures."""

    test: np.ndarray
    photos: np.ndarray
    others: np.ndarray


def _log_probs(predictor: Predictor, pictures: list) -> np.ndarray:
    """Prepared exactly as ``Predictor.prepare`` prepares an upload, then scored in chunks."""
    out = []
    for start in range(0, len(pictures), CHUNK):
        batch = np.stack([predictor.prepare(p) for p in pictures[start : start + CHUNK]])
        out.append(predictor.log_probs(batch))
    return np.concatenate(out)


def score(path: str, side: int | None, test: list, photos: list, others: list) -> Scores:
    """One model at one input side (None: its own)."""
    predictor = Predictor.load(path)
    if side is not None:
        predictor.metadata["input_size"] = side
    decoded = [[predictor.decode(f.read_bytes()) for f in files] for files in (photos, others)]
    return Scores(
        _log_probs(predictor, test),
        _log_probs(predictor, decoded[0]),
        _log_probs(predictor, decoded[1]),
    )


def blend(a: Scores, b: Scores, weight: float) -> Scores:
    """Weighted geometric mean of two models' probabilities, renormalised."""

    def mix(x: np.ndarray, y: np.ndarray) -> np.ndarray:
        z = torch.from_numpy(weight * x + (1 - weight) * y)
        return torch.log_softmax(z, dim=1).numpy()

    return Scores(mix(a.test, b.test), mix(a.photos, b.photos), mix(a.others, b.others))


def row(
    name: str, s: Scores, labels: np.ndarray, truth: np.ndarray, threshold: float, doubt: float
) -> dict:
    probs = np.exp(s.test)
    right = s.photos.argmax(1) == truth
    top_right = np.exp(s.photos.max(1))[right]
    top_others = np.exp(s.others.max(1))
    matched = float(np.quantile(top_right, doubt))  # doubts `doubt` of the right answers
    per_class = {int(c): float(right[truth == c].mean()) for c in np.unique(truth)}
    return {
        "variant": name,
        "test_accuracy": round(float((probs.argmax(1) == labels).mean()), 4),
        "test_ece": round(ece(probs, labels), 4),
        "photos_accuracy": round(float(right.mean()), 4),
        "photos_class_mean": round(float(np.mean(list(per_class.values()))), 4),
        "unsure_right": round(float((top_right < threshold).mean()), 4),
        "unsure_others": round(float((top_others < threshold).mean()), 4),
        "others_at_matched_doubt": round(float((top_others < matched).mean()), 4),
        "per_class": {k: round(v, 4) for k, v in per_class.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    dev_set_arguments(parser, "the CIFAR-10 archive or folder")
    parser.add_argument("--sides", default="", help="other input sides to try, e.g. 112,160")
    parser.add_argument("--partner", help="a second bundle to average with")
    parser.add_argument("--weights", default="0.5,0.6,0.7", help="the main model's weights")
    parser.add_argument("--out", default=str(REPO / "benchmarks/results/bundled_variants.json"))
    args = parser.parse_args()

    torch.set_num_threads(2)
    load_before = loadavg()
    main_model = Predictor.load(args.model)
    classes, threshold = main_model.classes, main_model.unsure_below
    dataset = load_dataset(args.data, image_size=32, progress=False)
    test_idx = np.flatnonzero(dataset.partition == TEST)
    test = [dataset.images[i] for i in test_idx]
    labels = np.asarray(dataset.labels[test_idx])
    photos, truth, others = dev_set_files(args.photos, args.others, classes)

    start = time.perf_counter()
    plain = score(args.model, None, test, photos, others)
    doubt = float((np.exp(plain.photos.max(1))[plain.photos.argmax(1) == truth] < threshold).mean())
    own = main_model.input_size
    rows = [row(f"as shipped ({own} px)", plain, labels, truth, threshold, doubt)]
    for side in [int(s) for s in args.sides.split(",") if s]:
        try:
            variant = score(args.model, side, test, photos, others)
        except RuntimeError as error:  # a flatten + linear head fixes the side
            raise SystemExit(f"{args.model} takes only {own} px pictures: {error}") from None
        rows.append(row(f"fed at {side} px", variant, labels, truth, threshold, doubt))
    if args.partner:
        partner = score(args.partner, None, test, photos, others)
        rows.append(row("partner alone", partner, labels, truth, threshold, doubt))
        for weight in [float(w) for w in args.weights.split(",")]:
            mixed = blend(plain, partner, weight)
            rows.append(row(f"ensemble, weight {weight}", mixed, labels, truth, threshold, doubt))
    seconds = round(time.perf_counter() - start, 1)

    pct = lambda v: f"{100 * v:.1f}%"  # noqa: E731
    print(f"threshold {threshold}; matched doubt = {pct(doubt)} of right photo answers")
    print(
        "| variant | test | ECE | photos | class mean | unsure right | unsure others |"
        " others at matched doubt |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(
            f"| {r['variant']} | {pct(r['test_accuracy'])} | {r['test_ece']:.3f} | "
            f"{pct(r['photos_accuracy'])} | {pct(r['photos_class_mean'])} | "
            f"{pct(r['unsure_right'])} | {pct(r['unsure_others'])} | "
            f"{pct(r['others_at_matched_doubt'])} |"
        )
    write_result(
        args.out,
        rows,
        load_before,
        model=args.model,
        partner=args.partner,
        classes=classes,
        threshold=threshold,
        matched_doubt=round(doubt, 4),
        seconds=seconds,
    )


if __name__ == "__main__":
    main()
