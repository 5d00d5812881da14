"""A multi-label bundle through ``Predictor`` and the pure decision rule (prediction/labels.py):
calibrated sigmoids, one threshold per label, a global override, top-k, TTA, Grad-CAM."""

import numpy as np
import pytest
import torch
from helpers import make_tiny_bundle, make_tiny_multilabel_bundle, png_bytes

from imageclf import Predictor
from imageclf.errors import UserInputError
from imageclf.models.bundle import build_model, load_bundle
from imageclf.models.multilabel import LabelCalibration
from imageclf.prediction import labels
from imageclf.prediction.inference import Normalizer, tta_views

CLASSES = ["cat", "dog", "tree", "car"]
CALIBRATION = {"method": "platt", "scale": [2.0, 0.5, 1.0, 3.0], "bias": [-0.5, 0.25, 0.0, 1.0]}
PICTURES = [png_bytes((200, 30, 30)), png_bytes((20, 200, 40)), png_bytes((10, 10, 240))]


@pytest.fixture
def bundle_path(tmp_path):
    return make_tiny_multilabel_bundle(
        tmp_path / "m.safetensors", CLASSES, [0.3, 0.5, 0.6, 0.9], CALIBRATION
    )


def _by_hand(path, predictor):
    """sigmoid(scale * logit + bias) from the model itself, outside Predictor."""
    bundle = load_bundle(path)
    model = build_model(bundle).eval()
    x = Normalizer(bundle.metadata.mean, bundle.metadata.std)(
        torch.from_numpy(predictor.preprocess(PICTURES))
    )
    with torch.no_grad():
        logits = model(x).double().numpy()
    scale, bias = np.array(CALIBRATION["scale"]), np.array(CALIBRATION["bias"])
    return 1 / (1 + np.exp(-(scale * logits + bias)))


def test_every_label_at_or_above_its_threshold_with_calibrated_probabilities(bundle_path):
    p = Predictor.load(bundle_path)
    assert p.multi_label and p.label_thresholds().tolist() == [0.3, 0.5, 0.6, 0.9]
    expected = _by_hand(bundle_path, p)
    probs = p.predict_proba(p.preprocess(PICTURES))
    np.testing.assert_allclose(probs, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(probs.sum(1), 1)  # independent labels, not a softmax
    found = p.predict(PICTURES)
    for row, answer in zip(expected, found, strict=True):
        want = [CLASSES[i] for i in np.argsort(-row) if row[i] >= [0.3, 0.5, 0.6, 0.9][i]]
        assert [label for label, _ in answer] == want
    assert any(len(a) > 1 for a in found) or any(len(a) == 0 for a in found)
    # log_probs: each label's own log-probability, the same numbers.
    np.testing.assert_allclose(np.exp(p.log_probs(p.preprocess(PICTURES))), expected, rtol=1e-5)
    # Doubts of single-label models do not apply.
    assert not p.unsure(probs).any()
    assert not p.outside(p.calibrated_logits(p.preprocess(PICTURES))).any()


def test_threshold_override_and_top_k(bundle_path):
    p = Predictor.load(bundle_path)
    assert all(len(a) == 4 for a in p.predict(PICTURES, threshold=0.001))
    assert all(a == [] for a in p.predict(PICTURES, threshold=0.999))
    top = p.predict(PICTURES, top_k=2)
    assert all(len(a) == 2 and a[0][1] >= a[1][1] for a in top)
    (answer,) = p.predict_labels(PICTURES[0], top_k=4, threshold=0.5)
    assert answer.thresholds == [0.5] * 4 and len(answer.top) == 4
    assert [lab for lab, prob in answer.top if prob >= 0.5] == [lab for lab, _ in answer.labels]
    assert p.predict(PICTURES, threshold=np.float32(0.999)) == [[]] * 3  # NumPy numbers too
    for bad in (0, 1, -0.1, 1.5, float("nan"), "0.5", True):
        with pytest.raises(UserInputError, match="threshold must be a number between 0 and 1"):
            p.predict(PICTURES[0], threshold=bad)


def test_single_label_models_refuse_a_threshold_and_answer_as_before(tmp_path):
    p = Predictor.load(make_tiny_bundle(tmp_path / "s.safetensors"))
    assert not p.multi_label and len(p.predict(PICTURES[0])[0]) == 3
    with pytest.raises(UserInputError, match="applies to multi-label models"):
        p.predict(PICTURES[0], threshold=0.5)
    (answer,) = p.predict_labels(PICTURES[0])
    assert answer.labels == answer.top[:1] and answer.thresholds == []


def test_tta_averages_each_labels_views(bundle_path):
    """With TTA each label's calibrated logit is the views' weighted mean (as training's
    validation computes it), so each probability lies within the views' own."""
    p = Predictor.load(bundle_path)
    noise = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    batch = p.preprocess(noise)  # solid colours look the same from every view
    plain, tta = p.predict_proba(batch), p.predict_proba(batch, tta=True)
    assert tta.shape == plain.shape and not np.allclose(tta, plain)
    pixels = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
    views = np.stack([
        p.predict_proba(v.permute(0, 2, 3, 1).to(torch.uint8).contiguous().numpy())
        for _, v in tta_views(pixels)
    ])  # fmt: skip
    assert (tta >= views.min(0) - 1e-6).all() and (tta <= views.max(0) + 1e-6).all()


def test_gradcam_for_a_chosen_label(bundle_path):
    p = Predictor.load(bundle_path)
    batch = p.preprocess(PICTURES)
    cam = p.gradcam(batch, [3, 1, 0])
    assert cam.class_indices.tolist() == [3, 1, 0] and cam.heatmaps.shape == (3, 32, 32)
    np.testing.assert_allclose(cam.probabilities, p.predict_proba(batch), rtol=1e-6)
    default = p.gradcam(batch)
    assert default.class_indices.tolist() == p.predict_proba(batch).argmax(1).tolist()
    explained = p.explain(PICTURES[0], 2)
    assert explained.label == "tree"
    assert explained.probability == pytest.approx(float(p.predict_proba(batch)[0, 2]), rel=1e-5)


def test_the_decision_rule_alone():
    calibration = LabelCalibration("platt", (2.0, 1.0), (0.0, -1.0))
    z = labels.calibrate(torch.tensor([[0.0, 1.0], [1.0, 0.0]]), calibration)
    assert z.tolist() == [[0.0, 0.0], [2.0, -1.0]]
    probs = labels.probabilities(z.numpy())
    assert probs[0].tolist() == [0.5, 0.5]
    on = labels.labels_on(probs, labels.thresholds([0.5, 0.6]))
    assert on.tolist() == [[True, False], [True, False]]  # at the threshold counts as on
    assert labels.chosen(probs[1], np.array([True, True]), ["a", "b"])[0][0] == "a"
    assert labels.thresholds([0.5, 0.6], 0.2).tolist() == [0.2, 0.2]
    assert labels.probabilities(np.array([[1e4, -1e4]])).tolist() == [[1.0, 0.0]]
