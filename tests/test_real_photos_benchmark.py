"""benchmarks/real_photos.py reports what the served app says about each photo.

The benchmark's numbers go into the docs and decide the default model, so its
bookkeeping is checked against a direct computation: same answers as
``Predictor.predict``, the page's "not sure" rule, folders the model has no class for
skipped rather than counted as mistakes.
"""

from __future__ import annotations

import sys
from collections import Counter
from pathlib import Path

import numpy as np
from helpers import make_tiny_bundle, write_image_folder

from imageclf.prediction.predictor import Predictor

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_photos

CLASSES = ["cat", "dog", "frog"]


def _expected(predictor: Predictor, groups: dict, threshold: float):
    """(truth, label, top-1, unsure) per photo, straight from Predictor.predict."""
    rows = []
    for truth, files in groups.items():
        for path in files:
            [[(label, p)]] = predictor.predict(path.read_bytes(), top_k=1)
            rows.append((truth, label, p, p < threshold))
    return rows


def test_scores_match_the_predictor_and_the_unsure_rule(tmp_path):
    # 120 px and 90 px photos: bigger than the 32 px input, so they are really resized
    write_image_folder(tmp_path / "photos", ["cat", "dog", "yak"], 4, partitioned=False, size=120)
    write_image_folder(tmp_path / "others", ["person", "giraffe"], 3, partitioned=False, size=90)
    photos = real_photos.folders(tmp_path / "photos")
    others = real_photos.folders(tmp_path / "others")

    # A threshold in the middle of this random model's confidences, so both answers occur.
    plain = make_tiny_bundle(
        tmp_path / "plain.safetensors",
        classes=CLASSES,
        calibration={"temperature": 1.0, "threshold": 0.0},
    )
    tops = [p for *_, p, _ in _expected(Predictor.load(plain), {**photos, **others}, 0.0)]
    threshold = float(np.median(tops))
    bundle = make_tiny_bundle(
        tmp_path / "m.safetensors",
        classes=CLASSES,
        calibration={"temperature": 1.0, "threshold": threshold},
    )
    predictor = Predictor.load(bundle)
    inside = _expected(predictor, {c: f for c, f in photos.items() if c in CLASSES}, threshold)
    outside = _expected(predictor, others, threshold)

    result = real_photos.score_model(str(bundle), photos, others)

    assert result["skipped_folders"] == ["yak"]  # no such class: not a mistake
    assert result["unsure_below"] == threshold
    got = result["in_class"]
    assert got["photos"] == len(inside) == 8
    right = [r for r in inside if r[0] == r[1]]
    wrong = [r for r in inside if r[0] != r[1]]
    assert got["accuracy"] == round(len(right) / 8, 4)
    if right:
        assert got["unsure_when_right"] == round(np.mean([r[3] for r in right]), 4)
    if wrong:
        assert got["unsure_when_wrong"] == round(np.mean([r[3] for r in wrong]), 4)
        assert got["confidence_wrong"] == round(float(np.mean([r[2] for r in wrong])), 4)
    assert got["confidently_wrong"] == round(sum(not r[3] for r in wrong) / 8, 4)
    assert {c: v["photos"] for c, v in got["per_class"].items()} == {"cat": 4, "dog": 4}

    out = result["out_of_class"]
    assert out["photos"] == 6
    assert out["unsure"] == round(np.mean([r[3] for r in outside]), 4)
    giraffes = [r[1] for r in outside if r[0] == "giraffe"]
    assert out["per_group"]["giraffe"]["predicted"] == dict(Counter(giraffes))
    assert result["latency_ms"]["predictor_predict"]["n"] == 8
