"""The dataset: every image decoded once into one uint8 NHWC array, held in memory or
memory-mapped from the disk cache (``cache.DiskPixels``) when it does not fit."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

TRAIN, TEST, VAL = 0, 1, 2
PARTITION_NAMES = {TRAIN: "train", TEST: "test", VAL: "val"}


@dataclass
class Dataset:
    """All images of a source; ``partition`` marks the source's own train/val/test.

    A source without its own test set (``ROOT/<class>/*``) has every image in
    ``TRAIN``; splits decide what becomes validation and test. ``names`` say where
    each image came from (a path inside the source, or archive member), so reports
    can point a user at a mislabelled photo; ``skipped`` lists unreadable files.
    """

    images: np.ndarray  # (N, H, W, 3) uint8; an np.memmap when held on disk
    labels: np.ndarray  # (N,) int64
    partition: np.ndarray  # (N,) uint8, TRAIN, VAL or TEST
    classes: list[str]
    source: str
    fingerprint: str  # sha256-based key of the source and decode settings
    names: np.ndarray | None = None  # (N,) str
    skipped: list[str] = field(default_factory=list)  # "name: reason" per unreadable file

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.labels) == len(self.partition) == n):
            raise ValueError("images, labels and partition must have the same length")
        if self.names is None:
            self.names = np.array([f"#{i}" for i in range(n)])
        if len(self.names) != n:
            raise ValueError("names must have one entry per image")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_test_partition(self) -> bool:
        return bool((self.partition == TEST).any())

    @property
    def has_val_partition(self) -> bool:
        return bool((self.partition == VAL).any())

    @property
    def on_disk(self) -> bool:
        """Whether the pictures are memory-mapped from disk rather than held in memory."""
        return isinstance(self.images, np.memmap)

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def counts(self, partition: int | None = None) -> dict[str, int]:
        labels = self.labels if partition is None else self.labels[self.partition == partition]
        binc = np.bincount(labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, binc, strict=True)}


class MemoryPixels:
    """Decoded pictures collected in one preallocated array (the folder reader appends
    one at a time; ``cache.DiskPixels`` is the same on disk)."""

    def __init__(self, n: int, size: int) -> None:
        self.array = np.empty((n, size, size, 3), np.uint8)
        self.count = 0

    def append(self, image: np.ndarray) -> None:
        self.array[self.count] = image
        self.count += 1

    def finish(self) -> np.ndarray:
        return self.array[: self.count]

    def abort(self) -> None:
        self.array = self.array[:0]
