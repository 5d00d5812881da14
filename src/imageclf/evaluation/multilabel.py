"""Evaluation of a multi-label model: every label its own yes/no question.

A picture may carry several labels or none, so accuracy alone says little: per label,
precision, recall, F1 and its 2x2 confusion at the bundle's threshold, and average
precision (the area under the label's precision-recall curve, independent of any
threshold); over labels, micro F1 (every decision counted alike), macro F1 (every label
alike), samples F1 (every picture alike), mAP, subset accuracy (every label of a picture
right), Hamming loss (the share of wrong decisions) and label cardinality. The numbers
are scikit-learn's. As for single-label models, predictions are made once per split
(``LabelInterpretation``) and every number comes from them; ``multilabel_report``
writes them.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field

import numpy as np

from ..data import Dataset, Split
from ..data.dataset import class_mapping
from ..errors import DataError
from ..prediction.inference import TTA_VIEWS, score_in_chunks
from .report_metrics import rnd
from .views import skipped_notes, tta_sample_notes

log = logging.getLogger("imageclf.evaluate")

LARGEST_ERRORS = 20  # pictures shown with the most expected wrong labels


@dataclass
class LabelInterpretation:
    """One split's calibrated probabilities (N, C), true labels and thresholds, held once."""

    split: str
    tta: bool
    probs: np.ndarray
    targets: np.ndarray  # (N, C) bool
    thresholds: np.ndarray  # (C,)
    classes: list[str]
    indices: np.ndarray  # dataset index of each row

    def __len__(self) -> int:
        return len(self.probs)

    @property
    def decisions(self) -> np.ndarray:
        """(N, C) bool: the labels the model puts on each picture."""
        return self.probs >= self.thresholds

    def scores(self) -> dict:
        """The split's summary numbers (rounded once)."""
        return label_scores(self.targets, self.probs, self.decisions)

    def per_label(self) -> list[dict]:
        """Precision, recall, F1, support, average precision, threshold and 2x2 per label."""
        from sklearn.metrics import multilabel_confusion_matrix, precision_recall_fscore_support

        y, on = self.targets, self.decisions
        precision, recall, f1, support = precision_recall_fscore_support(
            y, on, average=None, zero_division=0
        )
        ap = average_precisions(y, self.probs)
        confusion = multilabel_confusion_matrix(y, on)  # per label [[tn, fp], [fn, tp]]
        return [
            {
                "label": name,
                "precision": rnd(precision[c]),
                "recall": rnd(recall[c]),
                "f1": rnd(f1[c]),
                "support": int(support[c]),
                "average_precision": None if np.isnan(ap[c]) else rnd(ap[c]),
                "threshold": rnd(self.thresholds[c]),
                "tn": int(confusion[c][0, 0]),
                "fp": int(confusion[c][0, 1]),
                "fn": int(confusion[c][1, 0]),
                "tp": int(confusion[c][1, 1]),
            }
            for c, name in enumerate(self.classes)
        ]

    def expected_errors(self) -> np.ndarray:
        """(N,) the expected number of wrong labels per picture, sum |y - p|: large when the
        model is confidently wrong about one label or unsure about several."""
        return np.abs(self.targets.astype(np.float64) - self.probs).sum(1)

    def largest_errors(self, count: int = LARGEST_ERRORS, names=None) -> list[dict]:
        """The pictures with the largest expected errors that have a wrong label, worst first."""
        errors = self.expected_errors()
        wrong = (self.decisions != self.targets).any(1)
        order = [i for i in np.argsort(-errors, kind="stable") if wrong[i]][:count]
        return [
            {
                "index": int(self.indices[i]),
                "file": None if names is None else str(names[self.indices[i]]),
                "true": [self.classes[c] for c in np.flatnonzero(self.targets[i])],
                "predicted": [self.classes[c] for c in np.flatnonzero(self.decisions[i])],
                "error": rnd(errors[i]),
            }
            for i in order
        ]


def average_precisions(targets: np.ndarray, probs: np.ndarray) -> np.ndarray:
    """(C,) scikit-learn's average precision per label; NaN for a label without a positive."""
    from sklearn.metrics import average_precision_score

    ap = np.full(targets.shape[1], np.nan)
    present = targets.any(0)
    if present.any():
        ap[present] = average_precision_score(targets[:, present], probs[:, present], average=None)
    return ap


def label_scores(targets: np.ndarray, probs: np.ndarray, decisions: np.ndarray) -> dict:
    """Micro/macro/samples F1, mAP, subset accuracy, Hamming loss and cardinality."""
    from sklearn.metrics import accuracy_score, f1_score, hamming_loss

    ap = average_precisions(targets, probs)
    f1 = {avg: rnd(f1_score(targets, decisions, average=avg, zero_division=0))
          for avg in ("micro", "macro", "samples")}  # fmt: skip
    return {
        "images": len(targets),
        "map": None if np.isnan(ap).all() else rnd(np.nanmean(ap)),
        "micro_f1": f1["micro"],
        "macro_f1": f1["macro"],
        "samples_f1": f1["samples"],
        "subset_accuracy": rnd(accuracy_score(targets, decisions)),
        "hamming_loss": rnd(hamming_loss(targets, decisions)),
        "cardinality_true": rnd(targets.sum(1).mean()) if len(targets) else None,
        "cardinality_predicted": rnd(decisions.sum(1).mean()) if len(targets) else None,
    }


# ---------------------------------------------------------------- predictions
def label_targets(dataset: Dataset, classes: list[str]) -> np.ndarray:
    """(N, C) bool in the model's class order; single-label data counts as one label each."""
    columns = class_mapping(dataset, classes, "labels")
    targets = np.zeros((len(dataset), len(classes)), dtype=bool)
    if dataset.labels.ndim == 2:
        targets[:, columns] = dataset.labels.astype(bool)
    else:
        targets[np.arange(len(dataset)), columns[dataset.labels]] = True
    return targets


def member_probabilities(predictor, images_u8: np.ndarray, tta: bool, bar=None) -> np.ndarray:
    """One model's calibrated (N, C) label probabilities (``Predictor.predict_proba``: each
    label's ``sigmoid(scale * logit + bias)``), in ``evaluate``'s chunks."""
    scores = score_in_chunks(predictor.predict_proba, images_u8, len(predictor.classes), tta, bar)
    return scores.astype(np.float64)


# ---------------------------------------------------------------- the evaluation
@dataclass
class LabelEvalResult:
    """A multi-label evaluation: the interpretations and the rounded metrics."""

    predictors: list
    model_paths: list[str]
    dataset: Dataset
    split: Split
    interpretations: dict[tuple[str, bool], LabelInterpretation]
    detail: LabelInterpretation
    metrics: dict
    notes: list[str]
    seconds: float
    multi_label: bool = field(default=True, init=False)  # how the CLI tells the reports apart

    @property
    def classes(self) -> list[str]:
        return self.predictors[0].classes


def evaluate_labels(
    predictors, paths: list[str], dataset: Dataset, split: Split, split_info: dict,
    notes: list[str], views, progress: bool, started: float,
) -> LabelEvalResult:  # fmt: skip
    """``evaluate`` of multi-label models (``views``: views.Views); an ensemble
    averages calibrated probabilities and thresholds."""
    from tqdm.auto import tqdm

    classes = predictors[0].classes
    if any(not p.metadata.multi_label for p in predictors):
        raise DataError("an ensemble cannot mix multi-label and single-label models")
    targets = label_targets(dataset, classes)
    thresholds = np.mean([p.metadata.label_thresholds for p in predictors], axis=0)
    evaluated = [n for n in views.splits if len(getattr(split, n))]
    if not evaluated:
        raise DataError(f"none of the requested splits ({', '.join(views.splits)}) has images")
    with_tta = views.tta_on(evaluated)
    notes += skipped_notes(views, evaluated, with_tta, len(split.train))
    passes = [(n, t) for n in evaluated for t in ((False, True) if n in with_tta else (False,))]
    chosen = {(n, t): views.scored(n, getattr(split, n), t) for n, t in passes}
    total = sum(len(idx) * (TTA_VIEWS if t else 1) for (_, t), idx in chosen.items())
    interpretations = {}
    with tqdm(total=total * len(predictors), unit="view", disable=not progress,
              leave=False) as bar:  # fmt: skip
        for name, tta in passes:
            idx = chosen[(name, tta)]
            images = dataset.images[idx]
            probs = np.mean([member_probabilities(p, images, tta, bar) for p in predictors], 0)
            interpretations[(name, tta)] = LabelInterpretation(
                name, tta, probs, targets[idx], thresholds, classes, idx
            )
    notes += tta_sample_notes(interpretations)
    detail = next(interpretations[(s, False)] for s in ("test", "val", "train")
                  if (s, False) in interpretations)  # fmt: skip
    for note in notes:
        log.warning("note: %s", note)
    metrics = label_metrics(interpretations, detail, dataset, paths, split_info, predictors)
    return LabelEvalResult(predictors, paths, dataset, split, interpretations, detail, metrics,
                           notes, time.perf_counter() - started)  # fmt: skip


def label_metrics(interpretations, detail, dataset, paths, split_info, predictors) -> dict:
    """metrics.json of a multi-label evaluation."""
    summary = [{"split": s, "tta": t, **interp.scores()}
               for (s, t), interp in interpretations.items()]  # fmt: skip
    calibration = predictors[0].metadata.label_calibration
    return {
        "task": "multi_label",
        "models": [{"path": p, "name": pr.name} for p, pr in zip(paths, predictors, strict=True)],
        "data": dataset.source,
        "split": split_info,
        "classes": detail.classes,
        "detail_split": detail.split,
        "summary": summary,
        "per_label": detail.per_label(),
        "largest_errors": detail.largest_errors(names=dataset.names),
        "calibration": calibration.method if calibration else None,
    }
