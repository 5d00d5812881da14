"""Faithful PyTorch ports of the seed systems' Keras CNNs.

Keras defaults are reproduced where they change results: 'valid' padding
unless a seed used 'same', Glorot-uniform kernels with zero biases, and
BatchNorm with momentum 0.99 / epsilon 1e-3 (PyTorch momentum 0.01).
"""

from __future__ import annotations

import torch
from torch import nn

from .protocol import TrainingHooks
from .registry import register


def keras_init(module: nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


def _flat_features(features: nn.Module, input_size: int) -> int:
    with torch.no_grad():
        return features(torch.zeros(1, 3, input_size, input_size)).numel()


class KerasStyleCNN(nn.Module, TrainingHooks):
    """features -> flatten -> classifier; ``l2_modules`` name the layers with a Keras
    ``kernel_regularizer=l2(...)``, whose penalty the training loop adds to the loss."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential, l2: float = 0.0):
        super().__init__()
        self.features = features
        self.classifier = classifier
        self.l2 = l2
        keras_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.features(x), 1))

    def l2_penalty(self) -> torch.Tensor | None:
        """Keras adds l2 * sum(w**2) of each regularised kernel to the loss."""
        if not self.l2:
            return None
        dense = [m for m in self.classifier if isinstance(m, nn.Linear)][:-1]
        return self.l2 * sum((m.weight**2).sum() for m in dense)


@register("seed-a")
def seed_a(num_classes: int = 10, input_size: int = 32) -> nn.Module:
    """Seed A: Conv32 3x3 -> Pool -> Conv64 4x4 -> Pool -> Dense34 -> Dense(classes)."""
    features = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 4), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    flat = _flat_features(features, input_size)
    classifier = nn.Sequential(nn.Linear(flat, 34), nn.ReLU(), nn.Linear(34, num_classes))
    return KerasStyleCNN(features, classifier)


@register("seed-b")
def seed_b(num_classes: int = 10, input_size: int = 32, dropout: float = 0.5) -> nn.Module:
    """Seed B: three blocks 32/64/128 of Conv(same)-ReLU-BN-MaxPool, Dense128, Dropout."""
    layers: list[nn.Module] = []
    channels = 3
    for width in (32, 64, 128):
        layers += [
            nn.Conv2d(channels, width, 3, padding=1), nn.ReLU(),
            nn.BatchNorm2d(width, eps=1e-3, momentum=0.01), nn.MaxPool2d(2),
        ]  # fmt: skip
        channels = width
    features = nn.Sequential(*layers)
    flat = _flat_features(features, input_size)
    classifier = nn.Sequential(
        nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, num_classes)
    )
    return KerasStyleCNN(features, classifier)


@register("seed-d")
def seed_d(
    num_classes: int = 10, input_size: int = 32, dropout: float = 0.5, l2: float = 0.001
) -> nn.Module:
    """Seed D: Conv32 -> Pool -> Conv64 -> Pool -> Dense128 (L2) -> Dropout -> Dense."""
    features = nn.Sequential(
        nn.Conv2d(3, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.MaxPool2d(2),
    )  # fmt: skip
    flat = _flat_features(features, input_size)
    classifier = nn.Sequential(
        nn.Linear(flat, 128), nn.ReLU(), nn.Dropout(dropout), nn.Linear(128, num_classes)
    )
    return KerasStyleCNN(features, classifier, l2=l2)
