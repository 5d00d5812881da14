"""Which predictions an evaluation makes: the splits, where TTA runs, and the seeded
samples that keep the costly passes (the training split, TTA's six views) to what
informs. Single- and multi-label evaluation both follow it."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import UserInputError

SPLIT_NAMES = ("train", "val", "test")
# The training split is scored to show the train/test gap, which a seeded sample of this
# many images measures to about half a point; all 45,000 took most of an evaluation.
TRAIN_SAMPLE = 5000
# TTA scores each picture six times. What it adds to accuracy is a paired difference, which
# a seeded sample of this many pictures measures to a few tenths of a point: the whole test
# split took 60,000 of a 128 px model's 77,500 forward passes, over half its evaluation.
TTA_SAMPLE = 5000


def parse_splits(text: str | Sequence[str] | None) -> list[str] | None:
    """``"test,val"`` -> ["val", "test"] (always in train/val/test order)."""
    if text is None:
        return None
    items = text.split(",") if isinstance(text, str) else list(text)
    chosen = {item.strip() for item in items if item.strip()}
    unknown = chosen - set(SPLIT_NAMES)
    if unknown or not chosen:
        raise UserInputError(
            f"--splits takes a comma-separated list of {', '.join(SPLIT_NAMES)}; got {text!r}"
        )
    return [s for s in SPLIT_NAMES if s in chosen]


@dataclass(frozen=True)
class Views:
    """Which predictions an evaluation makes: splits, where TTA runs, the samples."""

    splits: Sequence[str]
    tta: bool = True
    tta_splits: Sequence[str] | None = None  # None: the headline split only
    train_sample: int | None = TRAIN_SAMPLE  # None: every training image
    tta_sample: int | None = TTA_SAMPLE  # None: TTA on every image of its splits

    def scored(self, split: str, idx: np.ndarray, tta: bool = False) -> np.ndarray:
        """The images one pass scores: the training split as a seeded sample, and a TTA
        pass a seeded sample of those (the same images in every run, so runs compare)."""
        if split == "train":
            idx = seeded_sample(idx, self.train_sample)
        return seeded_sample(idx, self.tta_sample) if tta else idx

    def tta_on(self, evaluated: list[str]) -> list[str]:
        if not self.tta:
            return []
        if self.tta_splits is not None:
            return [s for s in evaluated if s in self.tta_splits]
        return [next(s for s in ("test", "val", "train") if s in evaluated)]


def seeded_sample(idx: np.ndarray, size: int | None) -> np.ndarray:
    """A seeded random subset of ``idx`` (sorted, so images keep their dataset order)."""
    if size is None or len(idx) <= size:
        return idx
    return np.sort(np.random.default_rng(0).choice(idx, size, replace=False))


def skipped_notes(views: Views, evaluated: list[str], with_tta: list[str], n_train: int):
    """Say what was left out to save time, and how to ask for it."""
    notes = []
    if "train" in evaluated and views.train_sample is not None and n_train > views.train_sample:
        notes.append(
            f"train split: a seeded sample of {views.train_sample:,} of its {n_train:,} images "
            "(--train-sample all scores every one)"
        )
    without = [s for s in evaluated if s not in with_tta]
    if views.tta and views.tta_splits is None and without:
        notes.append(
            f"TTA on the {with_tta[0]} split only (--tta-splits {','.join(evaluated)} adds "
            f"{', '.join(without)})"
        )
    return notes


def tta_sample_notes(interpretations: dict) -> list[str]:
    """Which images each sampled TTA pass scored, and (single-label) what the same
    images score without it: TTA's gain is that difference, not the whole split's."""
    notes = []
    for (split, tta), with_tta in interpretations.items():
        plain = interpretations.get((split, False))
        if not tta or plain is None or len(with_tta) == len(plain):
            continue
        note = (
            f"TTA on a seeded sample of {len(with_tta):,} of the {split} split's "
            f"{len(plain):,} images (--tta-sample all scores every one)"
        )
        if hasattr(plain, "correct"):
            same = np.isin(plain.indices, with_tta.indices)
            note += f"; without TTA those images score {plain.correct[same].mean():.2%}"
        notes.append(note)
    return notes
