"""Batches of the uint8 dataset array, and the per-channel statistics the normaliser
(``prediction.inference.Normalizer``) is fitted with; no Python per image."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from (a sample of) the training images."""
    sample = images[:: max(1, len(images) // 20000)].reshape(-1, 3).astype(np.float64) / 255.0
    return sample.mean(0).round(6).tolist(), sample.std(0).round(6).tolist()


def batch_indices(
    n: int,
    batch_size: int,
    *,
    shuffle: bool,
    gen: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[torch.Tensor]:
    order = torch.randperm(n, generator=gen) if shuffle else torch.arange(n)
    stop = n - n % batch_size if drop_last and n >= batch_size else n
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]
