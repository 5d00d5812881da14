"""Every number an evaluation reports, computed from ``Interpretation``s and rounded once.

The dict ``build_metrics`` returns *is* metrics.json; the console, CSV and HTML
writers print these same rounded values with ``fmt``, so they always agree.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..data import Dataset
from ..fileio import printable
from ..prediction.predictor import Predictor
from .interpretation import Interpretation

DIGITS = 4
SAMPLE_GRID = 25


def rnd(value: float) -> float:
    """The one rounding every reported number goes through."""
    return round(float(value), DIGITS)


def fmt(value: float) -> str:
    """The one way every reported number is printed (console, CSV, HTML)."""
    return f"{value:.{DIGITS}f}"


def summary_rows(interpretations: dict[tuple[str, bool], Interpretation]) -> list[dict]:
    rows = []
    for (name, use_tta), interp in interpretations.items():
        ece, _ = interp.calibration()
        rows.append(
            {
                "split": name,
                "tta": use_tta,
                "images": len(interp),
                "accuracy": rnd(interp.accuracy),
                "correct": int(interp.correct.sum()),
                "loss": rnd(interp.mean_loss),
                "ece": rnd(ece),
            }
        )
    return rows


def report_rows(interp: Interpretation) -> list[dict]:
    """Per-class rows then macro and weighted averages, every number rounded once."""
    report = interp.classification_report()
    rows = []
    for name in [*interp.classes, "macro avg", "weighted avg"]:
        entry = report[name]
        rows.append(
            {
                "class": name,
                "precision": rnd(entry["precision"]),
                "recall": rnd(entry["recall"]),
                "f1": rnd(entry["f1-score"]),
                "support": int(entry["support"]),
            }
        )
    return rows


def build_metrics(
    predictors: Sequence[Predictor],
    model_paths: list[str],
    dataset: Dataset,
    interpretations: dict[tuple[str, bool], Interpretation],
    detail: Interpretation,
    split_info: dict,
    notes: list[str],
    data,
) -> dict:
    """Every number the report shows, rounded once; the JSON is this dict."""
    return {
        "models": [
            {
                "path": path,
                "name": p.name,
                "architecture": p.metadata.architecture,
                "recipe": p.metadata.recipe,
                "split": p.metadata.split,
                "precision": p.precision,
                "training": training_record(p.metadata.metrics),
            }
            for path, p in zip(model_paths, predictors, strict=True)
        ],
        "ensemble": len(predictors) > 1,
        "data": {
            "path": str(data),
            "source": dataset.source,
            "fingerprint": dataset.fingerprint,
            "images": len(dataset),
            "same_as_training": predictors[0].metadata.data_fingerprint == dataset.fingerprint,
        },
        "split": split_info,
        "classes": detail.classes,
        "notes": list(notes),
        "summary": summary_rows(interpretations),
        **detail_metrics(detail, _temperature(predictors), dataset.names),
    }


def training_record(recorded: dict) -> dict:
    """What the model's own run said about itself (bundle metrics): which epoch it kept and
    why, and its val/test figures without TTA; fields an older bundle lacks are None."""

    def number(value, kind):
        return value if type(value) is kind or (kind is float and type(value) is int) else None

    rule = recorded.get("kept_rule")
    record = {
        "kept_epoch": number(recorded.get("kept_epoch"), int),
        "kept_rule": printable(rule) if isinstance(rule, str) else None,
        "epochs_run": number(recorded.get("epochs_run"), int),
        "precision": printable(str(recorded.get("precision") or "")) or None,
    }
    for split in ("val", "test"):
        entry = recorded.get(split) if isinstance(recorded.get(split), dict) else {}
        record[split] = {k: number(entry.get(k), kind) for k, kind in
                         (("accuracy", float), ("correct", int), ("images", int))}  # fmt: skip
    return record


def agreement_notes(
    predictors: Sequence[Predictor], interpretations: dict, split_origin: str
) -> list[str]:
    """Where evaluate, on the split the model was trained with, counts a different number of
    correct images than its own run recorded: said, with the likely reason (precision)."""
    if len(predictors) != 1 or not split_origin.startswith(("recorded", "the run folder")):
        return []
    ours, notes = training_record(predictors[0].metadata.metrics), []
    for split in ("val", "test"):
        interp, theirs = interpretations.get((split, False)), ours[split]
        if interp is None or theirs["correct"] is None or theirs["images"] != len(interp):
            continue
        correct = int(interp.correct.sum())
        if correct != theirs["correct"]:
            notes.append(
                f"{split}: {correct:,} of {len(interp):,} correct here, {theirs['correct']:,} "
                f"when training scored it ({ours['precision']} there, "
                f"{predictors[0].precision} here: --precision changes the last digits)"
            )
    return notes


def _temperature(predictors: Sequence[Predictor]) -> float | None:
    """The single model's temperature (an ensemble averages differently scaled members,
    so its uncalibrated predictions cannot be recovered from the average: None)."""
    return predictors[0].temperature if len(predictors) == 1 else None


def detail_metrics(
    detail: Interpretation, temperature: float | None = 1.0, names: Sequence[str] | None = None
) -> dict:
    """The per-class views of one split: report, confusion, calibration, image lists.

    With a fitted temperature the calibration block also says what the model's raw
    confidences were (``before``): ECE and NLL before and after scaling."""
    classes = detail.classes
    matrix = detail.confusion_matrix()
    normalized = detail.confusion_matrix(normalize=True)
    row_totals = matrix.sum(1)
    confused = [
        {
            "true": classes[i],
            "predicted": classes[j],
            "count": count,
            "share_of_true": rnd(count / row_totals[i]),
        }
        for i, j, count in detail.most_confused()
    ]

    def image_entry(pos: int) -> dict:
        t, p = int(detail.targets[pos]), int(detail.preds[pos])
        return {
            "index": int(detail.indices[pos]),
            # Where the image came from (path or archive member): a user can fix a bad label.
            "file": str(names[detail.indices[pos]]) if names is not None else None,
            "true": classes[t],
            "predicted": classes[p],
            "confidence": rnd(detail.confidences[pos]),
            "loss": rnd(detail.losses[pos]),
            "correct": t == p,
        }

    def rnd_or_none(value: float | None) -> float | None:
        return None if value is None else rnd(value)

    return {
        "detail_split": detail.split,
        "classification_report": {
            "split": detail.split,
            "tta": False,
            "accuracy": rnd(detail.accuracy),
            "rows": report_rows(detail),
        },
        "confusion_matrix": {
            "split": detail.split,
            "labels": classes,
            "counts": matrix.tolist(),
            "row_normalized": [[rnd(v) for v in row] for row in normalized],
        },
        "most_confused": confused,
        "calibration": calibration_metrics(detail, temperature),
        "top_losses": [image_entry(int(p)) for p in detail.top_losses()],
        "samples": [image_entry(int(p)) for p in sample_positions(detail)],
    }


def calibration_metrics(detail: Interpretation, temperature: float | None) -> dict:
    def block(interp: Interpretation) -> dict:
        ece, bins = interp.calibration()
        return {
            "ece": rnd(ece),
            "nll": rnd(interp.mean_loss),
            "bins": [
                {
                    "lower": rnd(b["lower"]),
                    "upper": rnd(b["upper"]),
                    "count": b["count"],
                    "accuracy": None if b["accuracy"] is None else rnd(b["accuracy"]),
                    "confidence": None if b["confidence"] is None else rnd(b["confidence"]),
                }
                for b in bins
            ],
        }

    result = {"split": detail.split, "temperature": temperature, **block(detail)}
    if temperature is not None and temperature != 1.0:
        result["before"] = block(detail.uncalibrated(temperature))
    return result


def sample_positions(interp: Interpretation, k: int = SAMPLE_GRID, seed: int = 0) -> np.ndarray:
    """A fixed random draw of images (the same ones every time for the same split)."""
    rng = np.random.default_rng(seed)
    return rng.choice(len(interp), size=min(k, len(interp)), replace=False)
