"""The multi-label part of a bundle's metadata: ``"task": "multi_label"`` and its
``multi_label`` section (one threshold and one calibration per label).

A multi-label model's outputs are independent sigmoids, one per class: a picture may
have several labels or none. The section says how a logit becomes a shown probability
(``p_c = sigmoid(scale_c * logit_c + bias_c)``, Platt or temperature scaling fitted on
validation) and when a label is on (``p_c >= threshold_c``, the threshold chosen on
validation to maximise that label's F1). Checked here once, at load and at save, so
every reader (Predictor, export, the web app) can trust the numbers.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

SINGLE_LABEL, MULTI_LABEL = "single_label", "multi_label"
TASKS = (SINGLE_LABEL, MULTI_LABEL)
CALIBRATION_METHODS = ("platt", "temperature")


@dataclass(frozen=True)
class LabelCalibration:
    """Per-label affine map of the logits before the sigmoid (identity: not calibrated)."""

    method: str
    scale: tuple[float, ...]
    bias: tuple[float, ...]

    @classmethod
    def identity(cls, count: int) -> LabelCalibration:
        return cls("none", (1.0,) * count, (0.0,) * count)

    def as_dict(self) -> dict[str, Any]:
        return {"method": self.method, "scale": list(self.scale), "bias": list(self.bias)}


def check_task(raw: dict) -> None:
    """The schema of ``task`` and ``multi_label``: raises ``ValueError`` naming the field."""
    task = raw.get("task", SINGLE_LABEL)
    if task not in TASKS:
        raise ValueError(f"task must be one of {', '.join(TASKS)}")
    section = raw.get("multi_label")
    if task == SINGLE_LABEL:
        if section is not None:
            raise ValueError('multi_label is only allowed with "task": "multi_label"')
        return
    if not isinstance(section, dict):
        raise ValueError('a "task": "multi_label" bundle needs a multi_label object')
    count = len(raw["classes"])
    thresholds = section.get("thresholds")
    if not (_numbers(thresholds, count) and all(0 < t < 1 for t in thresholds)):
        raise ValueError(f"multi_label.thresholds must be {count} numbers between 0 and 1")
    calibration = section.get("calibration")
    if calibration is None:
        return
    if not isinstance(calibration, dict):
        raise ValueError("multi_label.calibration must be an object")
    if calibration.get("method") not in CALIBRATION_METHODS:
        raise ValueError(
            f"multi_label.calibration.method must be one of {', '.join(CALIBRATION_METHODS)}"
        )
    for key in ("scale", "bias"):
        if not _numbers(calibration.get(key), count):
            raise ValueError(f"multi_label.calibration.{key} must be {count} finite numbers")


def thresholds_of(raw: dict) -> list[float] | None:
    """Each label's threshold, None for a single-label bundle (already checked)."""
    section = raw.get("multi_label")
    return [float(t) for t in section["thresholds"]] if section else None


def calibration_of(raw: dict) -> LabelCalibration | None:
    """Each label's calibration (identity when the section has none); None if single-label."""
    section = raw.get("multi_label")
    if not section:
        return None
    calibration = section.get("calibration")
    if calibration is None:
        return LabelCalibration.identity(len(raw["classes"]))
    return LabelCalibration(
        calibration["method"],
        tuple(float(v) for v in calibration["scale"]),
        tuple(float(v) for v in calibration["bias"]),
    )


def _numbers(values: Any, count: int) -> bool:
    return (
        isinstance(values, list)
        and len(values) == count
        and all(type(v) in (int, float) and math.isfinite(v) for v in values)
    )
