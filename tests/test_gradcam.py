"""Grad-CAM: every architecture, overrides, and a hand-built model whose evidence is known."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_tiny_bundle
from PIL import Image
from torch import nn

from imageclf import Predictor
from imageclf.errors import UserInputError
from imageclf.models import registry
from imageclf.models.bundle import save_bundle


class BrightSpot(nn.Module):
    """Class 1 = "there is something bright here", built by hand so Grad-CAM's answer is
    known: brightness -> local average -> global mean -> +1 for class 1, -1 for class 0."""

    def __init__(self, num_classes: int = 2, input_size: int = 32) -> None:
        super().__init__()
        self.detect = nn.Conv2d(3, 1, 1)
        self.smooth = nn.Conv2d(1, 1, 3, padding=1)
        self.head = nn.Linear(1, num_classes)
        with torch.no_grad():
            self.detect.weight.fill_(1 / 3)
            self.detect.bias.zero_()
            self.smooth.weight.fill_(1 / 9)
            self.smooth.bias.zero_()
            self.head.weight.copy_(torch.tensor([[-1.0], [1.0]]))
            self.head.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.smooth(torch.relu(self.detect(x))))
        return self.head(x.mean(dim=(2, 3)))


@pytest.fixture(scope="module")
def spot_predictor(tmp_path_factory) -> Predictor:
    """Registered only while it is loaded: tests that walk every architecture (export,
    folding) must not meet it, whichever order the files run in."""
    path = tmp_path_factory.mktemp("spot") / "spot.safetensors"
    with pytest.MonkeyPatch.context() as patch:
        patch.setitem(registry._REGISTRY, "test-bright-spot", BrightSpot)
        return _spot_bundle(path)


def _spot_bundle(path) -> Predictor:
    save_bundle(
        path,
        BrightSpot().state_dict(),
        {
            "architecture": "test-bright-spot",
            "arch_kwargs": {},
            "classes": ["dark", "spot"],
            "input_size": 32,
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
        },
    )
    return Predictor.load(path)


def _image_with_square(row: int, col: int, side: int = 6) -> np.ndarray:
    image = np.zeros((32, 32, 3), np.uint8)
    image[row : row + side, col : col + side] = 255
    return image


@pytest.mark.parametrize("row,col", [(2, 3), (20, 22), (4, 24), (24, 5), (13, 13)])
def test_heatmap_peak_follows_the_planted_object(spot_predictor, row, col):
    explanation = spot_predictor.explain(_image_with_square(row, col))
    assert explanation.label == "spot"
    assert explanation.layer == "smooth"  # the last Conv2d, found automatically
    peak_r, peak_c = np.unravel_index(np.argmax(explanation.heatmap), explanation.heatmap.shape)
    assert row <= peak_r < row + 6 and col <= peak_c < col + 6
    # The overlay is warm (red-dominant) at the object and cool elsewhere.
    overlay = np.asarray(explanation.overlay, np.float64)
    scale = overlay.shape[0] / 32
    center = overlay[int((row + 3) * scale), int((col + 3) * scale)]
    far = overlay[int(((row + 16) % 32) * scale), int(((col + 16) % 32) * scale)]
    assert center[0] > center[2] and far[2] > far[0]


def test_class_without_evidence_gives_an_empty_map(spot_predictor):
    explanation = spot_predictor.explain(_image_with_square(10, 10), class_index=0)
    assert explanation.class_index == 0 and explanation.label == "dark"
    assert np.all(explanation.heatmap == 0)


@pytest.mark.parametrize("architecture", ["seed-a", "seed-b", "seed-d", "fast"])
def test_explain_works_for_every_architecture(tmp_path, architecture):
    predictor = Predictor.load(make_tiny_bundle(tmp_path / "m.safetensors", architecture))
    picture = Image.fromarray(
        np.random.default_rng(0).integers(0, 255, (90, 60, 3), dtype=np.uint8)
    )
    weights = {k: v.clone() for k, v in predictor.model.state_dict().items()}
    trainable = [p.requires_grad for p in predictor.model.parameters()]
    with torch.inference_mode():  # callers may be inside inference mode; Grad-CAM must not care
        explanation = predictor.explain(picture)
    assert explanation.overlay.size == (256, 256) and explanation.overlay.mode == "RGB"
    assert explanation.heatmap.shape == (32, 32)
    assert explanation.heatmap.min() >= 0.0 and explanation.heatmap.max() <= 1.0
    assert explanation.label == predictor.classes[explanation.class_index]
    probs = predictor.predict_proba(predictor.preprocess(picture))[0]
    assert explanation.class_index == int(np.argmax(probs))
    assert explanation.probability == pytest.approx(float(probs.max()), abs=1e-5)
    # The model is left as it was: same weights and flags, in eval mode, no hooks, no grads.
    model = predictor.model
    after = model.state_dict()
    assert after.keys() == weights.keys()
    assert all(torch.equal(after[k], v) for k, v in weights.items())
    assert [p.requires_grad for p in model.parameters()] == trainable
    assert not any(m.training for m in model.modules())
    assert not any(m._forward_hooks or m._backward_hooks for m in model.modules())
    assert not any(p.grad is not None for p in model.parameters())
    np.testing.assert_array_equal(predictor.predict_proba(predictor.preprocess(picture))[0], probs)


def test_class_and_layer_overrides(tiny_bundle):
    predictor = Predictor.load(tiny_bundle)
    image = np.full((32, 32, 3), 120, np.uint8)
    explanation = predictor.explain(image, class_index=7, layer="features.0", size=64)
    assert (explanation.class_index, explanation.layer) == (7, "features.0")
    assert explanation.overlay.size == (64, 64)
    with pytest.raises(UserInputError, match=r"no layer named .nope.*features\.0"):
        predictor.explain(image, layer="nope")
    with pytest.raises(UserInputError, match="out of range"):
        predictor.explain(image, class_index=10)
    with pytest.raises(UserInputError, match="spatial"):
        predictor.explain(image, layer="classifier.0")


def test_batch_equals_one_at_a_time(tiny_bundle):
    predictor = Predictor.load(tiny_bundle)
    images = np.random.default_rng(1).integers(0, 255, (4, 32, 32, 3), dtype=np.uint8)
    cam = predictor.gradcam(images)
    for k in range(4):
        single = predictor.gradcam(images[k : k + 1])
        assert single.class_indices[0] == cam.class_indices[k]
        np.testing.assert_allclose(single.heatmaps[0], cam.heatmaps[k], atol=1e-5)
    np.testing.assert_allclose(cam.probabilities, predictor.predict_proba(images), atol=1e-5)
