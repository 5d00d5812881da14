"""Batches of the uint8 dataset array, and the per-channel statistics the normaliser
(``prediction.inference.Normalizer``) is fitted with; no Python per image.

A split's pictures are a ``SplitImages``: the dataset array (in memory or memory-mapped
from the disk cache) seen through the split's indices, gathered one batch at a time as
uint8; nothing is copied up front and nothing is converted to float beyond a batch.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

# Pixels read per step while computing the channel statistics (uint16 squares: 2x this).
STATS_CHUNK_BYTES = 32 * 1024**2


class SplitImages:
    """The pictures of one split, read on demand: ``x[idx]`` (a tensor or array of
    positions, or a slice) is a uint8 NHWC tensor of just those pictures."""

    def __init__(self, images: np.ndarray, index: np.ndarray) -> None:
        self.images = images
        self.index = np.asarray(index, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.index)

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index), *self.images.shape[1:])

    @property
    def ndim(self) -> int:
        return self.images.ndim

    def __getitem__(self, key: torch.Tensor | np.ndarray | slice | int) -> torch.Tensor:
        if isinstance(key, torch.Tensor):
            key = key.numpy()
        rows = np.atleast_1d(self.index[key])
        if not isinstance(self.images, np.memmap):
            return torch.from_numpy(self.images[rows])
        # A sorted gather reads the file front to back (readahead helps on a cold cache).
        order = np.argsort(rows, kind="stable")
        out = np.empty((len(rows), *self.images.shape[1:]), np.uint8)
        out[order] = self.images[rows[order]]
        return torch.from_numpy(out)


def channel_stats(images: np.ndarray | SplitImages) -> tuple[list[float], list[float]]:
    """Per-channel mean and std in [0, 1] units, from (a sample of) the training images:
    exact integer sums over chunks, never the sample in float (8 bytes a pixel value)."""
    n = len(images)
    rows = np.arange(0, n, max(1, n // 20000))
    per_image = int(np.prod(images.shape[1:])) or 1
    step = max(1, STATS_CHUNK_BYTES // per_image)
    total = np.zeros(3, np.uint64)
    squares = np.zeros(3, np.uint64)
    for start in range(0, len(rows), step):
        chunk = np.asarray(images[rows[start : start + step]]).reshape(-1, 3)
        total += chunk.sum(0, dtype=np.uint64)
        squares += np.square(chunk, dtype=np.uint16).sum(0, dtype=np.uint64)  # 255^2 fits
    count = max(1, len(rows) * per_image // 3)
    mean = total.astype(np.float64) / count / 255.0
    var = np.maximum(squares.astype(np.float64) / count / 255.0**2 - mean**2, 0.0)
    return mean.round(6).tolist(), np.sqrt(var).round(6).tolist()


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
