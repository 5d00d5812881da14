"""Honest confidences: temperature scaling, the "not sure which class" notice, and the
"not one of its classes" rule.

Label smoothing (and TTA averaging) leave our models underconfident: a correct dog
reads "50%". One scalar temperature T, fitted on validation logits by minimising
the negative log-likelihood (Guo et al. 2017), rescales every logit as ``z / T``;
it never changes the arg-max, so accuracy is unchanged while the expected
calibration error (ECE) drops. The notice threshold is chosen on the same
validation data, after calibration, so it means what it says on new pictures.

"Which class?" and "is this one of my classes?" are separate questions. A low top-1
probability answers the first: for a two-class model an ant at 61% is a hard ant, not
evidence of something else. The second is answered by familiarity, the negative free
energy of the calibrated logits (``logsumexp``, Liu et al. 2020): how strongly any class
responds. Its threshold is fixed on validation pictures, which are all of the model's
classes, so no outside pictures are needed to choose it: it flags
``FAMILIAR_VAL_FLAGGED`` of them. What it then catches of real outside pictures is
measured, not promised (``evaluate --others``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

ECE_BINS = 15
# Fewer validation images than this make the fitted temperature noise, not calibration.
MIN_IMAGES = 50
# Bundles without a fitted threshold (trained before calibration existed) use this.
UNCALIBRATED_UNSURE_BELOW = 0.5
# The notice should catch most mistakes while bothering few right answers: the
# threshold maximises (errors flagged) - (correct flagged) x this weight...
CORRECT_FLAG_COST = 2.0
# ...and doubts at most this share of right validation answers. New pictures are less
# familiar than validation ones (real photos against CIFAR thumbnails), so a right
# answer is doubted more often there: a model sure of its validation pictures would
# otherwise get a threshold that doubts one right real-photo answer in six.
MAX_CORRECT_FLAGGED = 0.10
# Share of validation pictures the "not one of its classes" rule may flag.
FAMILIAR_VAL_FLAGGED = 0.05


def reliability_bins(
    confidences: np.ndarray, correct: np.ndarray, n_bins: int = ECE_BINS
) -> tuple[float, list[dict]]:
    """Expected calibration error and its bins (equal-width in confidence).

    ECE = sum over bins of (images in bin / N) * |accuracy - mean confidence|.
    """
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    which = np.clip(np.digitize(confidences, edges[1:-1], right=True), 0, n_bins - 1)
    bins, total = [], 0.0
    for b in range(n_bins):
        members = which == b
        count = int(members.sum())
        acc = float(correct[members].mean()) if count else None
        conf = float(confidences[members].mean()) if count else None
        if count:
            total += count / len(confidences) * abs(acc - conf)
        bins.append(
            {"lower": edges[b], "upper": edges[b + 1], "count": count, "accuracy": acc,
             "confidence": conf}
        )  # fmt: skip
    return total, bins


def ece(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Expected calibration error of the top-1 confidence of (N, C) probabilities."""
    return reliability_bins(probs.max(1), probs.argmax(1) == labels, n_bins)[0]


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    return F.cross_entropy(logits.float() / temperature, labels).item()


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T > 0 that minimises validation NLL of ``softmax(logits / T)``.

    NLL is convex in 1/T, so a bounded 1-D search on log T finds the optimum reliably
    (LBFGS on raw T can step negative on tiny validation sets).
    """
    logits = logits.detach().float()
    if len(labels) == 0:
        return 1.0
    lo, hi = math.log(0.05), math.log(20.0)
    for _ in range(60):  # golden-section search: interval shrinks to ~1e-12 of its width
        a = hi - (hi - lo) / 1.618033988749895
        b = lo + (hi - lo) / 1.618033988749895
        if nll(logits, labels, math.exp(a)) < nll(logits, labels, math.exp(b)):
            hi = b
        else:
            lo = a
    return float(math.exp((lo + hi) / 2))


@dataclass
class Calibration:
    """Fitted on validation: the temperature and the notice threshold, with their evidence."""

    temperature: float
    threshold: float  # calibrated top-1 confidence under which a prediction says "unsure"
    val_images: int
    ece_before: float
    ece_after: float
    nll_before: float
    nll_after: float
    errors_flagged: float  # fraction of validation mistakes under the threshold
    correct_flagged: float  # fraction of validation right answers under the threshold
    familiar_above: float  # familiarity under which a picture is "not one of its classes"

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in vars(self).items()}


def choose_threshold(confidence: np.ndarray, correct: np.ndarray) -> tuple[float, float, float]:
    """(threshold, errors flagged, correct flagged) on calibrated validation confidences:
    the best trade within the cap on doubted right answers."""
    n_err, n_ok = max(1, int((~correct).sum())), max(1, int(correct.sum()))
    best = (0.0, 0.0, 0.0, -math.inf)
    for t in np.linspace(0.05, 0.95, 91):
        flagged = confidence < t
        err = float((flagged & ~correct).sum()) / n_err
        ok = float((flagged & correct).sum()) / n_ok
        score = err - CORRECT_FLAG_COST * ok
        if ok <= MAX_CORRECT_FLAGGED and score > best[3]:
            best = (float(round(t, 2)), err, ok, score)
    return best[0], best[1], best[2]


def calibrate(logits: torch.Tensor, labels: torch.Tensor) -> Calibration:
    """Fit the temperature, then pick the notice threshold on the calibrated confidences."""
    logits, labels = logits.detach().float(), labels.long()
    temperature = fit_temperature(logits, labels)
    effect = calibration_effect(logits, labels, temperature)
    after = F.softmax(logits / temperature, -1).numpy()
    correct = after.argmax(1) == labels.numpy()
    threshold, err, ok = choose_threshold(after.max(1), correct)
    familiar = familiarity(logits / temperature)
    return Calibration(
        temperature=temperature,
        threshold=threshold,
        val_images=len(labels),
        ece_before=effect["ece_before"],
        ece_after=effect["ece_after"],
        nll_before=effect["nll_before"],
        nll_after=effect["nll_after"],
        errors_flagged=err,
        correct_flagged=ok,
        familiar_above=float(np.quantile(familiar, FAMILIAR_VAL_FLAGGED)),
    )


def familiarity(calibrated_logits: torch.Tensor | np.ndarray) -> np.ndarray:
    """(N,) how strongly any class responds to each picture: ``logsumexp`` of the
    calibrated logits (higher: more like the training pictures)."""
    logits = torch.as_tensor(calibrated_logits).double()
    return torch.logsumexp(logits, dim=1).numpy()


def detection_rates(inside: np.ndarray, outside: np.ndarray, familiar_above: float) -> dict:
    """How familiarity tells outside pictures from the model's own: AUROC over every
    threshold, and the shares each side flags at the bundle's threshold."""
    from sklearn.metrics import roc_auc_score

    scores = np.concatenate([-inside, -outside])  # higher: more likely outside
    truth = np.concatenate([np.zeros(len(inside)), np.ones(len(outside))])
    return {
        "auroc": round(float(roc_auc_score(truth, scores)), 4),
        "outside_flagged": round(float((outside < familiar_above).mean()), 4),
        "inside_flagged": round(float((inside < familiar_above).mean()), 4),
        "outside_images": len(outside),
        "inside_images": len(inside),
    }


def calibration_effect(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict:
    """ECE and NLL on held-out data before and after dividing the logits by ``temperature``."""
    logits, y = logits.detach().float(), labels.long()
    before = F.softmax(logits, -1).numpy()
    after = F.softmax(logits / temperature, -1).numpy()
    return {
        "images": len(y),
        "ece_before": round(ece(before, y.numpy()), 6),
        "ece_after": round(ece(after, y.numpy()), 6),
        "nll_before": round(nll(logits, y), 6),
        "nll_after": round(nll(logits, y, temperature), 6),
    }


# ---------------------------------------------------------------- multi-label
# Each label is its own sigmoid, so a softmax temperature does not apply: per label, Platt
# scaling (p = sigmoid(a * z + b), a > 0 so the ranking of pictures never changes) fitted
# on validation with Platt's smoothed targets, which keep a separable label from pushing
# a to infinity. Then one threshold per label, the one that maximises that label's F1 on
# the calibrated validation probabilities: a rare label gets a low bar, a common one a high.
LABEL_CALIBRATIONS = ("platt", "temperature")
# Thresholds are kept inside (0, 1) so a label can always turn on and off.
THRESHOLD_RANGE = (0.01, 0.99)


@dataclass
class LabelCalibrationFit:
    """Per-label scale, bias and threshold fitted on validation, with their evidence."""

    method: str
    scale: list[float]
    bias: list[float]
    thresholds: list[float]
    val_f1: list[float]  # each label's F1 on validation at its threshold
    val_images: int
    ece_before: float  # over every (picture, label) probability
    ece_after: float

    def section(self) -> dict:
        """The bundle metadata's ``multi_label`` section."""
        return {
            "thresholds": self.thresholds,
            "calibration": {"method": self.method, "scale": self.scale, "bias": self.bias},
        }

    def to_dict(self) -> dict:
        return {k: round(v, 6) if isinstance(v, float) else v for k, v in vars(self).items()}


def fit_label_scaling(
    logits: torch.Tensor, targets: torch.Tensor, method: str = "platt"
) -> tuple[np.ndarray, np.ndarray]:
    """Per-label (scale, bias) minimising validation BCE of ``sigmoid(scale * z + bias)``;
    ``temperature``: one scale shared by every label and no bias."""
    if method not in LABEL_CALIBRATIONS:
        raise ValueError(f"method must be one of {', '.join(LABEL_CALIBRATIONS)}")
    z, y = logits.detach().double(), targets.double()
    positives, n = y.sum(0), len(y)
    # Platt (1999): targets (N+ + 1) / (N+ + 2) and 1 / (N- + 2) instead of 1 and 0.
    soft = torch.where(y > 0.5, (positives + 1) / (positives + 2), 1 / (n - positives + 2))
    count = 1 if method == "temperature" else z.shape[1]
    log_scale = torch.zeros(count, dtype=torch.float64, requires_grad=True)
    bias = torch.zeros(count, dtype=torch.float64, requires_grad=method == "platt")
    opt = torch.optim.LBFGS([log_scale, bias] if method == "platt" else [log_scale],
                            max_iter=200, line_search_fn="strong_wolfe")  # fmt: skip

    def closure():
        opt.zero_grad()
        fitted = z * log_scale.exp() + bias
        loss = F.binary_cross_entropy_with_logits(fitted, soft, reduction="sum") / max(n, 1)
        loss.backward()
        return loss

    opt.step(closure)
    scale = log_scale.detach().exp().expand(z.shape[1]).numpy().copy()
    return scale, bias.detach().expand(z.shape[1]).numpy().copy()


def label_probabilities(logits: np.ndarray, scale, bias) -> np.ndarray:
    """Calibrated (N, C) probabilities ``sigmoid(scale * logit + bias)``, float64."""
    z = np.asarray(logits, np.float64) * np.asarray(scale) + np.asarray(bias)
    return 1.0 / (1.0 + np.exp(-z))


def f1_thresholds(probs: np.ndarray, targets: np.ndarray) -> tuple[list[float], list[float]]:
    """Per label, the threshold maximising F1 on these probabilities (halfway between the
    last picture turned on and the next, so it does not sit on one picture), and that F1.
    A label without a positive picture keeps 0.5 (F1 says nothing about it)."""
    thresholds, scores = [], []
    for p, y in zip(probs.T, targets.T.astype(bool), strict=True):
        if not y.any():
            thresholds.append(0.5)
            scores.append(0.0)
            continue
        order = np.argsort(-p, kind="stable")
        tp = np.cumsum(y[order])
        f1 = 2 * tp / (np.arange(1, len(p) + 1) + y.sum())
        k = int(np.argmax(f1))  # the top k + 1 pictures are on
        below = p[order[k + 1]] if k + 1 < len(p) else 0.0
        t = (p[order[k]] + below) / 2
        thresholds.append(round(float(np.clip(t, *THRESHOLD_RANGE)), 6))
        scores.append(round(float(f1[k]), 6))
    return thresholds, scores


def calibrate_labels(
    logits: torch.Tensor, targets: torch.Tensor, method: str = "platt"
) -> LabelCalibrationFit:
    """Per-label scaling, then per-label F1 thresholds on the calibrated probabilities."""
    y = targets.numpy().astype(bool)
    scale, bias = fit_label_scaling(logits, targets, method)
    before = label_probabilities(logits.float().numpy(), 1.0, 0.0)
    after = label_probabilities(logits.float().numpy(), scale, bias)
    thresholds, f1 = f1_thresholds(after, y)
    return LabelCalibrationFit(
        method=method,
        scale=[round(float(v), 6) for v in scale],
        bias=[round(float(v), 6) for v in bias],
        thresholds=thresholds,
        val_f1=f1,
        val_images=len(y),
        ece_before=reliability_bins(before.ravel(), y.ravel())[0],
        ece_after=reliability_bins(after.ravel(), y.ravel())[0],
    )
