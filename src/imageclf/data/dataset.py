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

    Single-label data has one class index per picture; multi-label data (a table whose
    rows name several labels: ``tables``) has one row of 0/1 per picture, a column per
    class (multi-hot), and ``multi_label`` says which.
    """

    images: np.ndarray  # (N, H, W, 3) uint8; an np.memmap when held on disk
    labels: np.ndarray  # (N,) int64; multi-label: (N, C) uint8 multi-hot
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
        if self.labels.ndim == 2 and self.labels.shape[1] != len(self.classes):
            raise ValueError("multi-hot labels must have one column per class")

    @property
    def multi_label(self) -> bool:
        """Whether a picture may carry several labels (``labels`` is multi-hot)."""
        return self.labels.ndim == 2

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
        """Pictures per class (multi-label: pictures carrying each label)."""
        labels = self.labels if partition is None else self.labels[self.partition == partition]
        binc = class_counts(labels, len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, binc, strict=True)}


def class_counts(labels: np.ndarray, num_classes: int) -> np.ndarray:
    """Pictures per class of single-label indices or multi-hot rows (positives)."""
    if labels.ndim == 2:
        return labels.sum(axis=0, dtype=np.int64)
    return np.bincount(labels, minlength=num_classes)


def class_mapping(dataset: Dataset, classes: list[str], noun: str = "classes") -> np.ndarray:
    """Dataset class index -> the model's (``classes``); the data may hold a subset of
    them, never a class the model does not know (evaluate, the multi-label report)."""
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        from ..errors import DataError

        raise DataError(
            f"the data has {noun} the model does not know: {', '.join(unknown)} "
            f"(the model's {noun}: {', '.join(classes)})"
        )
    return np.array([classes.index(c) for c in dataset.classes], dtype=np.int64)


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
