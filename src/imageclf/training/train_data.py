"""The data a training run steps through: the dataset decoded once (in memory, or
memory-mapped from the disk cache when it does not fit) and seen through the split as
``SplitImages`` (uint8, gathered a batch at a time, never copied whole), with the
normaliser fitted on the training images."""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass

import numpy as np
import torch

from ..data import Dataset, Split, duplicates, load_dataset, make_split
from ..data.loader import SplitImages, channel_stats
from ..prediction.inference import Normalizer
from .config import TrainConfig


@dataclass
class TrainData:
    """The split's pictures as ``SplitImages`` (``x[idx]`` is a uint8 NHWC tensor), the
    labels as tensors, and the normaliser fitted on the training images."""

    dataset: Dataset
    split: Split
    train_idx: torch.Tensor
    x_train: SplitImages
    y_train: torch.Tensor
    x_val: SplitImages
    y_val: torch.Tensor
    mean: list[float]
    std: list[float]
    twins: duplicates.DuplicateReport | None = None  # across the split, before --dedupe

    @classmethod
    def load(cls, cfg: TrainConfig, progress: bool) -> TrainData:
        dataset = load_dataset(cfg.data, image_size=cfg.image_size, progress=progress,
                               table=cfg.table)  # fmt: skip
        split = make_split(dataset, cfg.split, cfg.seed, cfg.val_size, cfg.subset)
        twins = duplicates.check_dataset(dataset, split)  # said at the start of every run
        if cfg.dedupe:
            split = duplicates.drop_training_copies(split, twins)
        labels = torch.from_numpy(dataset.labels)
        train_idx = torch.from_numpy(split.train)
        x_train = SplitImages(dataset.images, split.train)
        mean, std = channel_stats(x_train)
        return cls(
            dataset, split, train_idx, x_train, labels[train_idx],
            SplitImages(dataset.images, split.val), labels[torch.from_numpy(split.val)],
            mean, std, twins,
        )  # fmt: skip

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)

    def test_set(self) -> tuple[SplitImages, torch.Tensor]:
        labels = torch.from_numpy(self.dataset.labels[self.split.test])
        return SplitImages(self.dataset.images, self.split.test), labels

    def digest(self) -> bytes:
        """The classes, labels, split and pixels: what every DDP rank must hold alike
        (each node may read its own copy of the data)."""
        h = hashlib.sha256(json.dumps(self.dataset.classes).encode())
        h.update(self.split.digest().encode())
        h.update(np.ascontiguousarray(self.dataset.labels).tobytes())
        images = self.dataset.images  # in memory or memory-mapped: hashed in slices
        for start in range(0, len(images), 4096):
            h.update(np.ascontiguousarray(images[start : start + 4096]).tobytes())
        return h.digest()

    def steps_per_epoch(self, cfg: TrainConfig) -> int:
        return math.ceil(len(self.x_train) / cfg.batch_size)
