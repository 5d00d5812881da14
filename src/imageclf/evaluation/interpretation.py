"""``Interpretation``: one model's (or ensemble's) predictions on one set of images,
held once; every metric and view derives from it. Pure numpy (and scikit-learn for
the classification report), in the spirit of fastai's ``interpret.py``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import numpy as np

from ..calibration import ECE_BINS, reliability_bins

CALIBRATION_BINS = ECE_BINS
TOP_LOSSES = 20
MOST_CONFUSED = 10


@dataclass
class Interpretation:
    """Predictions, targets and losses of one model or ensemble on one set of images.

    ``log_probs`` are natural-log class probabilities; everything else derives from them.
    ``indices`` are positions in the dataset, so images can be looked up for plots.
    """

    split: str
    tta: bool
    log_probs: np.ndarray  # (N, C) float64
    targets: np.ndarray  # (N,) int64
    classes: list[str]
    indices: np.ndarray = field(default=None)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        self.log_probs = np.asarray(self.log_probs, dtype=np.float64)
        self.targets = np.asarray(self.targets, dtype=np.int64)
        if self.indices is None:
            self.indices = np.arange(len(self.targets))
        if self.log_probs.shape != (len(self.targets), len(self.classes)):
            raise ValueError("log_probs must be (N, classes) with one target per row")

    @classmethod
    def from_probs(cls, probs, targets, classes, split="test", tta=False, indices=None):
        """From probabilities (tests, other tools); zeros are clipped so losses stay finite."""
        log_probs = np.log(np.clip(np.asarray(probs, dtype=np.float64), 1e-15, None))
        return cls(split, tta, log_probs, np.asarray(targets), list(classes), indices)

    def __len__(self) -> int:
        return len(self.targets)

    @cached_property
    def probs(self) -> np.ndarray:
        return np.exp(self.log_probs)

    @cached_property
    def preds(self) -> np.ndarray:
        return self.log_probs.argmax(1)

    @cached_property
    def confidences(self) -> np.ndarray:
        """Probability of the predicted class."""
        return self.probs[np.arange(len(self)), self.preds]

    @cached_property
    def losses(self) -> np.ndarray:
        """Per-image cross-entropy, -log p(true class)."""
        return -self.log_probs[np.arange(len(self)), self.targets]

    @property
    def correct(self) -> np.ndarray:
        return self.preds == self.targets

    @property
    def accuracy(self) -> float:
        return float(self.correct.mean()) if len(self) else float("nan")

    @property
    def mean_loss(self) -> float:
        return float(self.losses.mean()) if len(self) else float("nan")

    def confusion_matrix(self, normalize: bool = False) -> np.ndarray:
        """Rows: true class, columns: predicted; ``normalize`` divides each row by its total."""
        from sklearn.metrics import confusion_matrix

        labels = list(range(len(self.classes)))
        matrix = confusion_matrix(self.targets, self.preds, labels=labels)
        if not normalize:
            return matrix
        totals = matrix.sum(1, keepdims=True)
        return np.divide(matrix, totals, out=np.zeros(matrix.shape), where=totals > 0)

    def classification_report(self) -> dict:
        """Per-class precision/recall/F1/support plus macro and weighted averages (sklearn)."""
        from sklearn.metrics import classification_report

        return classification_report(
            self.targets,
            self.preds,
            labels=list(range(len(self.classes))),
            target_names=self.classes,
            output_dict=True,
            zero_division=0,
        )

    def most_confused(self, k: int = MOST_CONFUSED) -> list[tuple[int, int, int]]:
        """(true, predicted, count) for the largest off-diagonal cells, biggest first."""
        matrix = self.confusion_matrix()
        pairs = [
            (int(matrix[i, j]), i, j)
            for i in range(len(matrix))
            for j in range(len(matrix))
            if i != j and matrix[i, j] > 0
        ]
        pairs.sort(key=lambda p: (-p[0], p[1], p[2]))
        return [(i, j, count) for count, i, j in pairs[:k]]

    def top_losses(self, k: int = TOP_LOSSES, wrong_only: bool = True) -> np.ndarray:
        """Positions (into this interpretation) of the highest-loss images: the most
        confidently wrong ones come first."""
        candidates = np.flatnonzero(~self.correct) if wrong_only else np.arange(len(self))
        order = np.argsort(-self.losses[candidates], kind="stable")
        return candidates[order[:k]]

    def calibration(self, n_bins: int = CALIBRATION_BINS) -> tuple[float, list[dict]]:
        """Expected calibration error and its reliability bins (``calibration.py``)."""
        return reliability_bins(self.confidences, self.correct, n_bins)

    def uncalibrated(self, temperature: float) -> Interpretation:
        """The same predictions before temperature scaling: ``log_softmax(T * log p)``
        recovers the raw logits' log-probabilities exactly (the softmax ignores shifts)."""
        scaled = self.log_probs * temperature
        top = scaled.max(1, keepdims=True)
        raw = scaled - (top + np.log(np.exp(scaled - top).sum(1, keepdims=True)))
        return Interpretation(self.split, self.tta, raw, self.targets, self.classes, self.indices)
