"""Temperature scaling and the unsure-notice threshold: checked against known answers."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import write_image_folder

import imageclf
from imageclf import Predictor
from imageclf.calibration import (
    MAX_CORRECT_FLAGGED,
    calibrate,
    choose_threshold,
    ece,
    fit_temperature,
    nll,
)
from imageclf.models import build
from imageclf.training.compute import training_flops_per_image
from imageclf.training.loop import train
from imageclf.training.resolve import resolve


def _synthetic(n: int = 4000, classes: int = 10, true_t: float = 2.5, seed: int = 0):
    """Labels drawn from softmax(z / true_t): the NLL-optimal temperature is ~true_t."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(n, classes, generator=g) * 4
    labels = torch.multinomial(F.softmax(logits / true_t, -1), 1, generator=g).squeeze(1)
    return logits, labels


def test_fit_temperature_recovers_the_generating_temperature():
    logits, labels = _synthetic(true_t=2.5)
    assert abs(fit_temperature(logits, labels) - 2.5) < 0.25
    logits, labels = _synthetic(true_t=0.5, seed=1)
    assert abs(fit_temperature(logits, labels) - 0.5) < 0.08


def test_fitted_temperature_minimises_nll_and_keeps_argmax():
    logits, labels = _synthetic()
    t = fit_temperature(logits, labels)
    best = nll(logits, labels, t)
    for other in (t * 0.8, t * 1.25, 1.0):
        assert nll(logits, labels, other) > best
    assert torch.equal((logits / t).argmax(1), logits.argmax(1))


def test_ece_is_zero_when_confidence_equals_accuracy_and_large_when_not():
    # 100 predictions at confidence 0.8, of which exactly 80 are right: perfectly calibrated.
    probs = np.full((100, 2), 0.2)
    probs[:, 0] = 0.8
    labels = np.array([0] * 80 + [1] * 20)
    assert ece(probs, labels) < 1e-9
    # The same confidences with every prediction right: ECE = |1.0 - 0.8| = 0.2.
    assert abs(ece(probs, np.zeros(100, int)) - 0.2) < 1e-9


def test_calibrate_lowers_ece_of_underconfident_logits():
    logits, labels = _synthetic(true_t=0.4, seed=2)  # true distribution sharper: underconfident
    cal = calibrate(logits, labels)
    assert cal.temperature < 0.6
    assert cal.ece_after < cal.ece_before / 2
    assert cal.nll_after < cal.nll_before
    assert 0.0 < cal.threshold < 1.0
    assert cal.val_images == len(labels)


def test_threshold_flags_errors_more_than_correct_answers():
    rng = np.random.default_rng(0)
    confidence = np.concatenate([rng.uniform(0.1, 0.5, 300), rng.uniform(0.6, 1.0, 700)])
    correct = np.concatenate([np.zeros(300, bool), np.ones(700, bool)])
    threshold, errors, right = choose_threshold(confidence, correct)
    assert 0.5 <= threshold <= 0.6
    assert errors == 1.0 and right == 0.0


def test_threshold_doubts_at_most_the_capped_share_of_right_answers():
    """A fifth of the right answers are as unsure as the mistakes: the best trade alone
    (doubt everything under 0.95, every mistake) would doubt 20% of right answers."""
    rng = np.random.default_rng(1)
    mistakes, hard, easy = (
        rng.uniform(lo, hi, n)
        for lo, hi, n in ((0.5, 0.95, 500), (0.5, 0.95, 1000), (0.96, 1.0, 4000))
    )
    confidence = np.concatenate([mistakes, hard, easy])
    correct = np.concatenate([np.zeros(500, bool), np.ones(5000, bool)])
    threshold, errors, right = choose_threshold(confidence, correct)
    assert right <= MAX_CORRECT_FLAGGED < float((confidence[correct] < threshold + 0.01).mean())
    assert right == float((confidence[correct] < threshold).mean())
    assert 0.5 < errors < 1.0


def test_training_records_compute_and_calibration(tmp_path):
    """A run fits its temperature on validation, stores it in the bundle, and reports
    test ECE before/after plus its compute (FLOPs, rate, share of the GEMM peak)."""
    data = write_image_folder(tmp_path / "ds", per_class=80)
    result = train(
        resolve("seed-a", data=str(data), out=str(tmp_path / "run"), epochs=2, seed=0, val_size=60),
        progress=False,
    )
    metrics = json.loads((result.run_dir / "metrics.json").read_text())
    compute = metrics["compute"]
    assert compute["flops_per_image"] == training_flops_per_image(build("seed-a", 3, 32), 32)
    meta = Predictor.load(result.bundle_path).metadata
    assert compute["images_seen"] == 2 * meta["split"]["sizes"]["train"]
    assert compute["training_flops"] == compute["flops_per_image"] * compute["images_seen"]
    assert compute["peak_fraction"] > 0 and compute["gemm_peak_flops_per_s"] > 0
    cal = metrics["calibration"]
    assert cal["temperature"] > 0 and cal["val_images"] > 0
    assert set(cal["test"]) == {"images", "ece_before", "ece_after", "nll_before", "nll_after"}
    assert meta["calibration"]["temperature"] == cal["temperature"]

    # The prediction path divides by the temperature: probabilities are softmax(z / T).
    predictor = Predictor.load(result.bundle_path)
    batch = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    engine = predictor.engine  # the torch backend: its model and normaliser
    raw = engine.model(engine.normalizer(torch.from_numpy(batch), engine.device)).detach()
    expected = F.softmax(raw / cal["temperature"], -1).numpy()
    assert np.allclose(predictor.predict_proba(batch), expected, atol=1e-5)
    # evaluate reports ECE and NLL before and after, on the test split.
    evaluated = imageclf.evaluate([result.bundle_path], data, splits=["test"], progress=False)
    block = evaluated.metrics["calibration"]
    assert block["temperature"] == cal["temperature"]
    assert block["before"]["ece"] == pytest.approx(cal["test"]["ece_before"], abs=1e-3)
    assert block["ece"] == pytest.approx(cal["test"]["ece_after"], abs=1e-3)
    assert block["nll"] == pytest.approx(cal["test"]["nll_after"], abs=1e-3)


def test_a_run_kept_off_test_calibrates_without_reading_test(tmp_path):
    """``evaluate_test=False`` (every tuning trial): the calibration block names no test
    numbers, because the test split was never predicted."""
    data = write_image_folder(tmp_path / "ds", per_class=80)
    cfg = resolve(
        "seed-a", data=str(data), out=str(tmp_path / "run"), epochs=1, seed=0, val_size=60
    )
    result = train(cfg, progress=False, evaluate_test=False)
    assert "test" not in result.metrics
    sizes = Predictor.load(result.bundle_path).metadata["split"]["sizes"]
    assert result.metrics["calibration"]["val_images"] == sizes["val"] >= 50
    assert "test" not in result.metrics["calibration"]
