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
# threshold maximises (errors flagged) - (correct flagged) x this weight.
CORRECT_FLAG_COST = 2.0
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
    """(threshold, errors flagged, correct flagged) on calibrated validation confidences."""
    n_err, n_ok = max(1, int((~correct).sum())), max(1, int(correct.sum()))
    best = (0.0, 0.0, 0.0, -math.inf)
    for t in np.linspace(0.05, 0.95, 91):
        flagged = confidence < t
        err = float((flagged & ~correct).sum()) / n_err
        ok = float((flagged & correct).sum()) / n_ok
        score = err - CORRECT_FLAG_COST * ok
        if score > best[3]:
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
