"""The optional hooks a model can offer the training loop, declared once.

A model is any ``nn.Module`` taking ``(N, 3, S, S)`` normalised images and
returning logits. Beyond ``forward`` the loop asks three things, each with a
no-op default; a model overrides only what it needs by subclassing
``TrainingHooks`` (the ``fast`` net whitens and warms up a bias, the seed CNNs
add a Keras-style L2 penalty).
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch
from torch import nn


@runtime_checkable
class TrainingHooks(Protocol):
    def init_whitening(self, images: torch.Tensor) -> None:
        """Data-dependent set-up from normalised training images (NCHW), before step 1."""

    def whitening_bias(self) -> nn.Parameter | None:
        """A parameter trained only for the first ``whiten_bias_epochs`` epochs."""
        return None

    def l2_penalty(self) -> torch.Tensor | None:
        """A term added to the loss (Keras' ``kernel_regularizer``), or None."""
        return None


class _NoHooks(TrainingHooks):
    pass


def training_hooks(model: nn.Module) -> TrainingHooks:
    """The model itself when it declares the hooks, else the no-op defaults."""
    return model if isinstance(model, TrainingHooks) else _NoHooks()
