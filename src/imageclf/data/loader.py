"""From the uint8 dataset array to normalised model batches, with no Python per image."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np
import torch


def channel_stats(images: np.ndarray) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from (a sample of) the training images."""
    sample = images[:: max(1, len(images) // 20000)].reshape(-1, 3).astype(np.float64) / 255.0
    return sample.mean(0).round(6).tolist(), sample.std(0).round(6).tolist()


class Normalizer:
    """uint8 NHWC -> float NCHW (channels_last memory), standardised per channel."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        self.scale = (1.0 / (255.0 * torch.tensor(std, dtype=torch.float32))).view(1, 3, 1, 1)
        self.shift = (torch.tensor(mean, dtype=torch.float32) / torch.tensor(std)).view(1, 3, 1, 1)

    def __call__(self, batch: torch.Tensor, device: torch.device | str = "cpu") -> torch.Tensor:
        # An NHWC tensor permuted to NCHW *is* channels_last in memory: no copy needed.
        x = batch.to(device, non_blocking=True).permute(0, 3, 1, 2).float()
        return x * self.scale.to(x.device) - self.shift.to(x.device)


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
