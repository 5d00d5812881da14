"""Multi-label decisions, pure: calibrated logits -> per-label probabilities -> the labels
that are on.

A multi-label model's outputs are independent sigmoids: a picture may have several
labels or none, so "which class?" (unsure) and "one of its classes?" (outside) do not
apply. Each label has its own bar instead (``multi_label.thresholds`` in the bundle,
chosen on validation to maximise that label's F1); a global ``threshold`` (``predict
--threshold``, ``serve --threshold``, the API's ``threshold`` field) replaces them all.
The calibration (``sigmoid(scale * logit + bias)`` per label) is applied before, so a
shown 80% means 80%. ``Predictor``, ``predict``, the web app and the ONNX export's check
all decide here.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from ..errors import UserInputError
from ..models.multilabel import LabelCalibration

SINGLE_LABEL_THRESHOLD = (
    "a threshold applies to multi-label models; this model gives one label per picture"
)


@dataclass(frozen=True)
class LabelPrediction:
    """One picture's answer from a multi-label model."""

    labels: list[tuple[str, float]]  # every label at or above its threshold, most likely first
    top: list[tuple[str, float]]  # the top-k labels by probability, on or not
    thresholds: list[float]  # the threshold each label was held to (the override, if given)


def check_threshold(value: float | None) -> float | None:
    """A global threshold override: a number strictly between 0 and 1 (or None)."""
    if value is None:
        return None
    number = isinstance(value, int | float | np.number) and not isinstance(value, bool)
    if not number or not math.isfinite(value) or not 0 < value < 1:
        raise UserInputError(f"threshold must be a number between 0 and 1, got {value!r}")
    return float(value)


def calibrate(logits: torch.Tensor, calibration: LabelCalibration) -> torch.Tensor:
    """Calibrated logits ``scale * logit + bias``, per label (the sigmoid's argument)."""
    scale = torch.tensor(calibration.scale, dtype=logits.dtype)
    bias = torch.tensor(calibration.bias, dtype=logits.dtype)
    return logits * scale + bias


def probabilities(calibrated_logits: np.ndarray) -> np.ndarray:
    """Per-label probabilities (N, C), float32: the sigmoid (stable for any logit)."""
    return torch.sigmoid(torch.as_tensor(calibrated_logits, dtype=torch.float32)).numpy()


def thresholds(bundle: Sequence[float], override: float | None = None) -> np.ndarray:
    """The threshold each label is held to: the bundle's, or ``override`` for every label."""
    override = check_threshold(override)
    values = [override] * len(bundle) if override is not None else list(bundle)
    return np.asarray(values, dtype=np.float64)


def labels_on(probs: np.ndarray, limits: np.ndarray) -> np.ndarray:
    """(N, C) bool: a label is on iff its probability is at least its threshold."""
    return np.asarray(probs, dtype=np.float64) >= limits[None, :]


def answers(
    probs: np.ndarray, limits: np.ndarray, classes: Sequence[str]
) -> list[list[tuple[str, float, float]]]:
    """Per picture, its labels that are on as (label, probability, threshold), most
    likely first: what ``predict``, the API and the page show."""
    on = labels_on(probs, limits)
    return [
        [
            (label, p, float(limits[classes.index(label)]))
            for label, p in chosen(row, row_on, classes)
        ]
        for row, row_on in zip(probs, on, strict=True)
    ]


def chosen(row: np.ndarray, on: np.ndarray, classes: Sequence[str]) -> list[tuple[str, float]]:
    """One picture's labels that are on, as (label, probability), most likely first."""
    order = np.argsort(-row, kind="stable")
    return [(classes[i], float(row[i])) for i in order if on[i]]
