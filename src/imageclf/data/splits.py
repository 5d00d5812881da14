"""Seeded, stratified splits of a ``Dataset`` into train / validation / test indices.

Multi-label data (``Dataset.multi_label``) is stratified by iterative stratification
(``stratify``) and interleaved by label combination; single-label data by class.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from ..errors import DataError
from .dataset import TEST, TRAIN, VAL, Dataset
from .stratify import combination_ids, iterative_take

SPLITS = ("auto", "official", "70-15-15")
OFFICIAL_VAL_SIZE = 5000


@dataclass(frozen=True)
class Split:
    name: str
    seed: int
    train: np.ndarray
    val: np.ndarray
    test: np.ndarray

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "val": len(self.val), "test": len(self.test)}

    def digest(self) -> str:
        """Identifies exactly which images went where; recorded in every run."""
        h = hashlib.sha256()
        for part in (self.train, self.val, self.test):
            h.update(np.ascontiguousarray(part, dtype=np.int64).tobytes())
            h.update(b"|")
        return h.hexdigest()[:16]

    def describe(self) -> dict:
        return {
            "name": self.name,
            "seed": self.seed,
            "sizes": self.sizes(),
            "digest": self.digest(),
        }


def _interleave_by_class(indices: np.ndarray, labels: np.ndarray, rng: np.random.Generator):
    """Shuffle within each class, then deal classes round-robin (proportionally).

    Any prefix of the result is (nearly) stratified, so ``--subset N`` takes the
    first N and smaller subsets are nested inside larger ones. Multi-label data is
    dealt by label combination, so a prefix holds its share of every label.
    """
    groups = labels[indices] if labels.ndim == 1 else combination_ids(labels[indices])
    keys = np.empty(len(indices), np.float64)
    for c in np.unique(groups):
        members = np.flatnonzero(groups == c)
        order = rng.permutation(len(members))
        # Evenly spaced positions in [0, 1): class c's k-th item sorts at (k + u) / n_c.
        keys[members[order]] = (np.arange(len(members)) + rng.random()) / len(members)
    return indices[np.argsort(keys, kind="stable")]


def _stratified_take(indices, labels, fraction_or_count, rng):
    """Split ``indices`` into (taken, rest), taking the same share of every class."""
    if labels.ndim == 2:
        return iterative_take(indices, labels, fraction_or_count, rng)
    taken, rest = [], []
    n_total = len(indices)
    for c in np.unique(labels[indices]):
        members = rng.permutation(indices[labels[indices] == c])
        if isinstance(fraction_or_count, float):
            k = round(len(members) * fraction_or_count)
        else:
            k = round(len(members) * fraction_or_count / n_total)
        taken.append(members[:k])
        rest.append(members[k:])
    return np.sort(np.concatenate(taken)), np.sort(np.concatenate(rest))


def make_split(
    dataset: Dataset,
    name: str = "auto",
    seed: int = 0,
    val_size: int | None = None,
    subset: int | None = None,
) -> Split:
    """``official``: the source's own val/ and test/ folders; without val/, ``val_size``
    images held out of train, seeded and stratified (default: 5,000, or a tenth of train
    when that is smaller). ``70-15-15``: all images pooled and split 70/15/15 by class.
    ``auto``: official when the source has its own val or test set, else 70-15-15."""
    if name not in SPLITS:
        raise DataError(f"unknown split {name!r}; choose one of {', '.join(SPLITS)}")
    if name == "auto":
        own = dataset.has_test_partition or dataset.has_val_partition
        name = "official" if own else "70-15-15"
    rng = np.random.default_rng(seed)
    labels = dataset.labels
    if name == "official":
        if not (dataset.has_test_partition or dataset.has_val_partition):
            raise DataError(
                f"{dataset.source} has no val/ or test/ folder, so --split official "
                "cannot be used; use --split 70-15-15"
            )
        pool = np.flatnonzero(dataset.partition == TRAIN)
        test = np.flatnonzero(dataset.partition == TEST)
        if dataset.has_val_partition:  # the user's own validation folder
            val, train = np.flatnonzero(dataset.partition == VAL), pool
        else:
            # 5,000 for CIFAR-10's 50,000; a tenth of train for smaller datasets.
            n_val = min(OFFICIAL_VAL_SIZE, round(0.1 * len(pool))) if val_size is None else val_size
            if n_val >= len(pool):
                raise DataError(
                    f"--val-size {n_val} leaves no training images (train has {len(pool)})"
                )
            val, train = (
                _stratified_take(pool, labels, n_val, rng) if n_val > 0 else (pool[:0], pool)
            )
    else:
        everything = np.arange(len(dataset))
        test, rest = _stratified_take(everything, labels, 0.15, rng)
        val, train = _stratified_take(rest, labels, 0.15 / 0.85, rng)
    train = _interleave_by_class(train, labels, rng)
    if subset is not None:
        if subset <= 0:
            raise DataError("--subset must be a positive number of images")
        train = train[:subset]
    present = labels[train].any(axis=0).nonzero()[0] if labels.ndim == 2 else labels[train]
    missing = set(range(len(dataset.classes))) - set(np.unique(present).tolist())
    if missing:
        names = ", ".join(dataset.classes[i] for i in sorted(missing))
        raise DataError(f"the training split has no images of: {names}")
    return Split(name=name, seed=seed, train=train, val=val, test=test)
