"""Training on multi-hot labels: each class its own sigmoid, binary cross-entropy.

The loss of a picture is the sum of its labels' binary cross-entropies, so the gradient
on each logit is ``p - y`` as with softmax cross-entropy, and the recipes' learning rates
(sized for that) carry over. ``--class-weights auto`` becomes per-label positive weights,
``negatives / positives`` clamped to ``POS_WEIGHT_MAX``: a label on 2% of pictures would
otherwise learn that "never" is nearly always right. Label smoothing pulls each target
towards 0.5 by the same share.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
import torch.nn.functional as F

from ..calibration import MIN_IMAGES, calibrate_labels, label_probabilities
from ..errors import UserInputError

log = logging.getLogger("imageclf.train")

# A label seen once in 10,000 pictures would get a weight of 10,000 and dominate the loss.
POS_WEIGHT_MAX = 100.0


def is_multi_label(labels: np.ndarray | torch.Tensor) -> bool:
    """(N, C) multi-hot labels, rather than (N,) class indices."""
    return labels.ndim == 2


def bce_per_example(
    logits: torch.Tensor,
    targets: torch.Tensor,
    pos_weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """(N,) loss: binary cross-entropy summed over labels."""
    y = targets.float()
    if label_smoothing:
        y = y * (1 - label_smoothing) + 0.5 * label_smoothing
    loss = F.binary_cross_entropy_with_logits(
        logits.float(), y, pos_weight=pos_weight, reduction="none"
    )
    return loss.sum(1)


def positive_weights(labels: np.ndarray, mode: str | None) -> torch.Tensor | None:
    """``auto``: each label's positives weigh ``negatives / positives`` (1 to
    ``POS_WEIGHT_MAX``; a label never seen gets the maximum)."""
    if not mode:
        return None
    if mode != "auto":
        raise UserInputError(f"--class-weights takes 'auto', got {mode!r}")
    positives = labels.astype(np.float64).sum(0)
    ratio = (len(labels) - positives) / np.maximum(positives, 1e-9)
    return torch.tensor(np.clip(ratio, 1.0, POS_WEIGHT_MAX), dtype=torch.float32)


def correct_count(logits: torch.Tensor, targets: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """Pictures predicted right: (multi-label) every label on the right side of 0.5, else
    the arg-max class (of soft (N, C) targets too, as MixUp makes)."""
    if multi_label:
        return ((logits > 0) == (targets > 0.5)).all(1).sum()
    if targets.ndim == 2:
        targets = targets.argmax(1)
    return (logits.argmax(1) == targets).sum()


def describe_label_counts(labels: np.ndarray, classes: list[str], split) -> str:
    """Pictures per label in each split, and the labels per picture (cardinality)."""
    lines = ["pictures per label (train / val / test):"]
    parts = [labels[idx].astype(np.int64).sum(0) for idx in (split.train, split.val, split.test)]
    width = max(len(c) for c in classes)
    for i, name in enumerate(classes):
        lines.append(f"  {name:<{width}}  {parts[0][i]:>6} / {parts[1][i]:>5} / {parts[2][i]:>5}")
    train = labels[split.train].astype(np.int64)
    if len(train):
        lines.append(f"  labels per training picture: {train.sum(1).mean():.2f} on average")
        rare = parts[0].min()
        if parts[0].max() >= 10 * max(rare, 1):
            lines.append(
                f"  labels are imbalanced ({int(parts[0].max())} vs {int(rare)} training "
                "pictures): consider --class-weights auto"
            )
    return "\n".join(lines)


# ---------------------------------------------------------------- the end of a run
def label_decisions(scored: dict[str, tuple[torch.Tensor, torch.Tensor]], metrics: dict) -> dict:
    """The bundle's ``task`` and ``multi_label`` section: per-label Platt scaling and F1
    thresholds fitted on validation (never test); adds each split's F1 at those thresholds
    and the calibration's evidence to ``metrics``. Without enough validation pictures the
    probabilities stay raw and every threshold is 0.5 (said in a warning)."""
    val_images = len(scored["val"][1]) if "val" in scored else 0
    classes = next(iter(scored.values()))[0].shape[1] if scored else 0
    if val_images < MIN_IMAGES:
        log.warning(
            "%d validation images (fewer than %d): label probabilities are not calibrated "
            "and every label's threshold is 0.5",
            val_images,
            MIN_IMAGES,
        )
        scale, bias, thresholds = [1.0] * classes, [0.0] * classes, [0.5] * classes
        section: dict = {"thresholds": thresholds}
    else:
        fit = calibrate_labels(*scored["val"])
        scale, bias, thresholds = fit.scale, fit.bias, fit.thresholds
        section = fit.section()
        metrics["calibration"] = fit.to_dict()
    for name, (logits, labels) in scored.items():
        probs = label_probabilities(logits.numpy(), scale, bias)
        metrics[name].update(decision_scores(probs, labels.numpy(), thresholds))
    return {"task": "multi_label", "multi_label": section}


def decision_scores(probs: np.ndarray, targets: np.ndarray, thresholds) -> dict:
    """Micro and macro F1 and subset accuracy of the labels on at ``thresholds``."""
    from sklearn.metrics import f1_score

    on = probs >= np.asarray(thresholds)
    y = targets.astype(bool)
    return {
        "micro_f1": round(float(f1_score(y, on, average="micro", zero_division=0)), 6),
        "macro_f1": round(float(f1_score(y, on, average="macro", zero_division=0)), 6),
        "subset_accuracy": round(float((on == y).all(1).mean()), 6),
    }
