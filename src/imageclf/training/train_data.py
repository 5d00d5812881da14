"""The data a training run steps through: the dataset decoded once and sliced by the split
into uint8 tensors, with the normaliser fitted on the training images."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..data import Dataset, Split, load_dataset, make_split
from ..data.loader import channel_stats
from ..prediction.inference import Normalizer
from .config import TrainConfig


@dataclass
class TrainData:
    """The dataset as uint8 tensors, sliced by the split, plus the normaliser fitted
    on the training images."""

    dataset: Dataset
    split: Split
    train_idx: torch.Tensor
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    mean: list[float]
    std: list[float]

    @classmethod
    def load(cls, cfg: TrainConfig, progress: bool) -> TrainData:
        dataset = load_dataset(cfg.data, image_size=cfg.image_size, progress=progress)
        split = make_split(dataset, cfg.split, cfg.seed, cfg.val_size, cfg.subset)
        images = torch.from_numpy(dataset.images)
        labels = torch.from_numpy(dataset.labels)
        train_idx = torch.from_numpy(split.train)
        val_idx = torch.from_numpy(split.val)
        x_train = images[train_idx]
        mean, std = channel_stats(x_train.numpy())
        return cls(
            dataset, split, train_idx, x_train, labels[train_idx],
            images[val_idx], labels[val_idx], mean, std,
        )  # fmt: skip

    @property
    def normalizer(self) -> Normalizer:
        return Normalizer(self.mean, self.std)

    def test_set(self) -> tuple[torch.Tensor, torch.Tensor]:
        idx = torch.from_numpy(self.split.test)
        labels = torch.from_numpy(self.dataset.labels)
        return torch.from_numpy(self.dataset.images)[idx], labels[idx]

    def steps_per_epoch(self, cfg: TrainConfig) -> int:
        return math.ceil(len(self.x_train) / cfg.batch_size)
