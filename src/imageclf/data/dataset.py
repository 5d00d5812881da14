"""The in-memory dataset: every image decoded once into one uint8 NHWC array."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

TRAIN, TEST = 0, 1
PARTITION_NAMES = {TRAIN: "train", TEST: "test"}


@dataclass
class Dataset:
    """All images of a source; ``partition`` marks the source's own train/test.

    A source without its own test set (``ROOT/<class>/*``) has every image in
    ``TRAIN``; splits decide what becomes validation and test.
    """

    images: np.ndarray  # (N, H, W, 3) uint8
    labels: np.ndarray  # (N,) int64
    partition: np.ndarray  # (N,) uint8, TRAIN or TEST
    classes: list[str]
    source: str
    fingerprint: str  # sha256-based key of the source and decode settings

    def __post_init__(self) -> None:
        n = len(self.images)
        if not (len(self.labels) == len(self.partition) == n):
            raise ValueError("images, labels and partition must have the same length")

    def __len__(self) -> int:
        return len(self.images)

    @property
    def has_test_partition(self) -> bool:
        return bool((self.partition == TEST).any())

    @property
    def image_size(self) -> int:
        return int(self.images.shape[1])

    def counts(self, partition: int | None = None) -> dict[str, int]:
        labels = self.labels if partition is None else self.labels[self.partition == partition]
        binc = np.bincount(labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, binc, strict=True)}
