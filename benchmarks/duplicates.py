"""Twins across CIFAR-10's train/test split (the JPEG mirror): how many, how the
detector's threshold was chosen, and the bundled model's test accuracy with and without
the test pictures that have a twin in training.

    nice -n 19 .venv/bin/python benchmarks/duplicates.py [--data PATH] [--skip-model]

Prints a table and writes benchmarks/results/duplicates.json (duplicates_no_model.json
with --skip-model), plus contact sheets for the by-eye check (a random sample of pairs,
and the pairs at the threshold itself).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from _machine import describe, loadavg

from imageclf.data import TEST, TRAIN, load_dataset
from imageclf.data import duplicates as dup

OUT = Path(__file__).parent / "results"
THRESHOLDS = (0, 2, 4, 6, 8, 10, 12)


def planted(image: np.ndarray) -> dict[str, np.ndarray]:
    """The copies a dataset picks up: mirrored, re-encoded, resized, cropped, brightened."""
    im = Image.fromarray(image)
    buf = io.BytesIO()
    im.save(buf, "JPEG", quality=50)
    return {
        "mirrored": image[:, ::-1],
        "jpeg q50": np.array(Image.open(buf).convert("RGB")),
        "resized 24->32": np.array(im.resize((24, 24), Image.BILINEAR).resize((32, 32))),
        "crop 1px": np.array(im.crop((1, 1, 31, 31)).resize((32, 32), Image.BILINEAR)),
        "crop 2px": np.array(im.crop((2, 2, 30, 30)).resize((32, 32), Image.BILINEAR)),
        "brighter +20": np.clip(image.astype(int) + 20, 0, 255).astype(np.uint8),
    }


def planted_recall(ds, test: np.ndarray, n: int = 1000) -> dict[str, dict[int, float]]:
    pick = np.random.default_rng(0).choice(test, n, replace=False)
    originals = dup.perceptual_hashes(ds.images[pick])[0]
    copies: dict[str, list] = {}
    for i in pick:
        for kind, image in planted(ds.images[i]).items():
            copies.setdefault(kind, []).append(image)
    out = {}
    for kind, images in copies.items():
        plain, mirrored = dup.perceptual_hashes(np.stack(images))
        d = np.minimum(np.bitwise_count(plain ^ originals), np.bitwise_count(mirrored ^ originals))
        out[kind] = {t: round(float((d <= t).mean()), 3) for t in THRESHOLDS}
    return out


def random_pair_rate(plain, mirrored, n: int = 2_000_000) -> dict[int, float]:
    """Share of random (distinct) picture pairs within each threshold: the false twins a
    test picture gets per training picture when nothing is duplicated."""
    rng = np.random.default_rng(1)
    a, b = rng.integers(0, len(plain), n), rng.integers(0, len(plain), n)
    keep = a != b
    d = np.minimum(np.bitwise_count(plain[a] ^ plain[b]), np.bitwise_count(mirrored[a] ^ plain[b]))
    return {t: float((d[keep] <= t).mean()) for t in THRESHOLDS}


def model_accuracy(ds, test: np.ndarray, twins: set[int]) -> tuple[np.ndarray, dict]:
    from imageclf.prediction.predictor import Predictor

    predictor = Predictor.load()
    names = predictor.classes
    order = [names.index(c) for c in ds.classes]  # dataset label -> model class
    started = time.perf_counter()
    preds = []
    for s in range(0, len(test), 500):
        batch = np.stack([predictor.prepare(ds.images[i]) for i in test[s : s + 500]])
        preds.append(predictor.predict_proba(batch).argmax(1))
    pred = np.concatenate(preds)
    right = pred == np.array(order)[ds.labels[test]]
    np.savez_compressed(OUT / "duplicates_predictions.npz", test=test, right=right)
    has = np.array([i in twins for i in test])
    return right, {
        "model": predictor.name, "input_size": predictor.input_size,
        "seconds": round(time.perf_counter() - started, 1),
        "all": {"n": len(test), "acc": round(float(right.mean()), 4)},
        "without_twins": {"n": int((~has).sum()), "acc": round(float(right[~has].mean()), 4)},
        "twins_only": {"n": int(has.sum()),
                       "acc": round(float(right[has].mean()), 4) if has.any() else None},
    }  # fmt: skip


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--data", default="../shared/data/cifar10-jpeg.tar.gz")
    ap.add_argument("--skip-model", action="store_true")
    args = ap.parse_args()
    ds = load_dataset(args.data, progress=False)
    train, test = np.flatnonzero(ds.partition == TRAIN), np.flatnonzero(ds.partition == TEST)

    t = time.perf_counter()
    plain, mirrored = dup.perceptual_hashes(ds.images)
    hash_s = time.perf_counter() - t
    t = time.perf_counter()
    qi, ri, dist, _ = dup.nearest(plain[test], mirrored[test], plain[train], max(THRESHOLDS))
    search_s = time.perf_counter() - t
    t = time.perf_counter()
    report = dup.find_duplicates(ds, {"train": train, "test": test})
    full_s = time.perf_counter() - t

    same = ds.labels[test[qi]] == ds.labels[train[ri]]
    per_t = {}
    for th in THRESHOLDS:
        within = dist <= th
        per_t[th] = {
            "test_with_twin": len(np.unique(qi[within])),
            "pairs": int(within.sum()),
            "pairs_other_label": round(float((~same[within]).mean()), 3) if within.any() else 0,
        }
    recall = planted_recall(ds, test)
    rate = random_pair_rate(plain, mirrored)

    exact = report.held_out_with_twin("test")
    exact_n = len({p.index for p in report.pairs if p.exact})
    twins = report.held_out_with_twin("test", "train")
    OUT.mkdir(exist_ok=True)
    sample = replace(report, pairs=[report.pairs[i] for i in np.random.default_rng(2).choice(
        len(report.pairs), min(60, len(report.pairs)), replace=False)])  # fmt: skip
    dup.write_sheet(sample, ds, OUT / "duplicates_sample.png")
    edge = [p for p in report.pairs if p.distance == dup.THRESHOLD]
    dup.write_sheet(replace(report, pairs=edge), ds, OUT / "duplicates_at_threshold.png")
    for sheet in ("duplicates_sample.png", "duplicates_at_threshold.png"):  # kept small
        Image.open(OUT / sheet).convert("RGB").quantize(128).save(OUT / sheet, optimize=True)

    result = {
        "data": args.data, "machine": describe(), "loadavg": loadavg(),
        "pictures": len(ds), "threshold": dup.THRESHOLD,
        "seconds": {"hash_60k": round(hash_s, 2), "search_10k_x_50k": round(search_s, 2),
                    "find_duplicates": round(full_s, 2)},
        "per_threshold": per_t, "planted_recall": recall, "random_pair_rate": rate,
        "test_with_twin_in_train": len(twins), "exact": exact_n, "any": len(exact),
    }  # fmt: skip
    if not args.skip_model:
        right, result["bundled_model"] = model_accuracy(ds, test, twins)
        for th in THRESHOLDS:  # the test accuracy without the pictures twinned at th
            keep = ~np.isin(np.arange(len(test)), qi[dist <= th])
            per_t[th]["acc_without_twins"] = round(float(right[keep].mean()), 4)

    print(f"hash 60k pictures {hash_s:.1f} s; search 10k x 50k {search_s:.1f} s; "
          f"find_duplicates {full_s:.1f} s")  # fmt: skip
    head = f"{'thr':>4} {'test w/ twin':>13} {'other label':>12} {'random rate':>12}"
    print(head + "  planted recall")
    for th in THRESHOLDS:
        rec = " ".join(f"{k}={v[th]:.2f}" for k, v in recall.items())
        print(f"{th:>4} {per_t[th]['test_with_twin']:>13} {per_t[th]['pairs_other_label']:>12} "
              f"{rate[th]:>12.2e}  {rec}")  # fmt: skip
    print(f"threshold {dup.THRESHOLD}: {len(twins)} test pictures with a twin in train "
          f"({exact_n} exact)")  # fmt: skip
    if "bundled_model" in result:
        print(json.dumps(result["bundled_model"]))
    name = "duplicates_no_model.json" if args.skip_model else "duplicates.json"
    (OUT / name).write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
