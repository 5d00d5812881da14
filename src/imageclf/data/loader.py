"""Batches of the uint8 dataset array, and the per-channel statistics the normaliser
(``prediction.inference.Normalizer``) is fitted with; no Python per image.

A split's pictures are a ``SplitImages``: the dataset array (in memory or memory-mapped
from the disk cache) seen through the split's indices, gathered one batch at a time as
uint8; nothing is copied up front and nothing is converted to float beyond a batch.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator

import numpy as np
import torch

from ..errors import DataError

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
        if _mapped_file(self.images) is None:
            return torch.from_numpy(self.images[rows])
        return torch.from_numpy(_read_rows(self.images, rows))


def _mapped_file(images: np.ndarray) -> str | None:
    """The file behind a whole memory-mapped array (not a view into one), else None."""
    whole = isinstance(images, np.memmap) and isinstance(images.base, mmap.mmap)
    return images.filename if whole and images.flags.c_contiguous else None


def _read_rows(images: np.memmap, rows: np.ndarray) -> np.ndarray:
    """Pictures ``rows`` of a memory-mapped array, read with one pread each, in file order:
    through the page cache like the mapping, but without a page fault per 4 KB (the first
    pass over a mapping faulted at ~2,500 pictures/s at 224 px)."""
    out = np.empty((len(rows), *images.shape[1:]), np.uint8)
    size = out[0].nbytes if len(rows) else 0
    fd = os.open(_mapped_file(images), os.O_RDONLY)
    try:
        for k in np.argsort(rows, kind="stable"):
            at = images.offset + int(rows[k]) * size
            if os.preadv(fd, [memoryview(out[k]).cast("B")], at) != size:
                raise DataError(f"{images.filename} is shorter than its pictures; delete it")
    finally:
        os.close(fd)
    return out


MIN_STD = 1 / 255  # the smallest per-channel spread channel_stats reports (one grey level)


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
    # A channel with one value in every picture (all-black blue, say) would divide by 0
    # and train on NaN; one grey level of spread standardises it to 0 instead.
    std = np.maximum(np.sqrt(var), MIN_STD)
    return mean.round(6).tolist(), std.round(6).tolist()


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
