"""Predictions run a copy of the model with BatchNorm folded into its convolutions: the
same function, never the bundle's own module changed, and Grad-CAM still explains the
bundle's architecture."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_tiny_bundle
from torch import nn

from imageclf import Predictor
from imageclf.models.registry import build, names
from imageclf.prediction.inference import fold_batchnorm


def _trained_statistics(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine parameters: a fresh BatchNorm folds into
    almost nothing, so a wrong fold would go unnoticed."""
    gen = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=gen) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=gen) * 2 + 0.1)
            m.weight.data.copy_(torch.randn(n, generator=gen))
            m.bias.data.copy_(torch.randn(n, generator=gen) * 0.5)
    return model.eval()


def _batchnorms(model: nn.Module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())


@pytest.mark.parametrize("architecture", names())
def test_folded_model_computes_the_same_logits(architecture):
    model = _trained_statistics(build(architecture, num_classes=10, input_size=32))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded = fold_batchnorm(model)
    x = torch.randn(4, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)
    after = model.state_dict()
    assert after.keys() == before.keys() and all(torch.equal(after[k], before[k]) for k in after)
    if architecture.startswith("efficientnet"):  # every BatchNorm follows its convolution
        assert _batchnorms(model) > 0 and _batchnorms(folded) == 0


def test_predictor_predicts_with_the_folded_copy_and_explains_the_bundle(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "lite.safetensors", "efficientnet-lite0")
    predictor = Predictor.load(bundle)
    assert _batchnorms(predictor.model) == 49
    assert _batchnorms(predictor.engine.inference_model) == 0
    pictures = np.random.default_rng(0).integers(0, 256, (3, 32, 32, 3), dtype=np.uint8)
    unfolded = predictor.model(predictor.engine.normalizer(torch.from_numpy(pictures)))
    np.testing.assert_allclose(
        predictor.engine.logits(pictures).numpy(), unfolded.detach().numpy(), atol=1e-4
    )
    explanation = predictor.explain(pictures[0])
    assert explanation.layer.startswith("head")  # the bundle's last convolution
