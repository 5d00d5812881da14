"""Honest evaluation of a model (or an ensemble) on its held-out images.

Like fastai's ``interpret.py``: predictions are computed once per split (and per
TTA setting) into an ``Interpretation``; every number, table and plot is derived
from that one object. The split a model was trained with is recorded in its
bundle, so evaluating on the same data reproduces it and val/test are the images
the model truly never saw.

Every reported number is rounded once (``DIGITS``) when the metrics are
assembled; the console, JSON, CSV and HTML all print those same values.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from .data import Dataset, Split, load_dataset, make_split
from .data.splits import SPLITS
from .errors import DataError, UserInputError
from .inference import predict_logits
from .predict import Predictor

log = logging.getLogger("imageclf.evaluate")

SPLIT_NAMES = ("train", "val", "test")
DIGITS = 4
CALIBRATION_BINS = 15
TOP_LOSSES = 20
SAMPLE_GRID = 25
MOST_CONFUSED = 10
CHUNK = 2000  # images per forward call: a progress-bar step, small enough to stay responsive


def rnd(value: float) -> float:
    """The one rounding every reported number goes through."""
    return round(float(value), DIGITS)


def fmt(value: float) -> str:
    """The one way every reported number is printed (console, CSV, HTML)."""
    return f"{value:.{DIGITS}f}"


# ---------------------------------------------------------------- one split's predictions
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
        """Expected calibration error and its bins (equal-width in confidence).

        ECE = sum over bins of (images in bin / N) * |accuracy - mean confidence|.
        """
        edges = np.linspace(0.0, 1.0, n_bins + 1)
        which = np.clip(np.digitize(self.confidences, edges[1:-1], right=True), 0, n_bins - 1)
        bins, ece = [], 0.0
        for b in range(n_bins):
            members = which == b
            count = int(members.sum())
            acc = float(self.correct[members].mean()) if count else None
            conf = float(self.confidences[members].mean()) if count else None
            if count:
                ece += count / len(self) * abs(acc - conf)
            bins.append(
                {
                    "lower": edges[b],
                    "upper": edges[b + 1],
                    "count": count,
                    "accuracy": acc,
                    "confidence": conf,
                }
            )
        return ece, bins


# ---------------------------------------------------------------- models
def load_predictors(
    paths: Sequence[str | os.PathLike] | None, device: str = "cpu"
) -> list[Predictor]:
    """One predictor per path (none: the bundled model); an ensemble must agree on classes."""
    paths = list(paths or [None])
    predictors = [Predictor.load(p, device=device) for p in paths]
    first = predictors[0]
    for path, other in zip(paths[1:], predictors[1:], strict=True):
        if other.classes != first.classes:
            raise UserInputError(
                "ensemble members must have the same classes in the same order: "
                f"{paths[0]} has [{', '.join(first.classes)}] but {path} has "
                f"[{', '.join(other.classes)}]"
            )
        if other.input_size != first.input_size:
            raise UserInputError(
                f"ensemble members must share an input size: {paths[0]} takes "
                f"{first.input_size}px images, {path} takes {other.input_size}px"
            )
    return predictors


def ensemble_log_probs(
    predictors: Sequence[Predictor],
    images_u8: np.ndarray,
    *,
    tta: bool = False,
    progress: bool = False,
    desc: str = "predicting",
) -> np.ndarray:
    """(N, C) log-probabilities: each member through the one prediction path
    (``predict_logits``), probabilities averaged over members."""
    members = []
    total = len(images_u8) * len(predictors)
    with tqdm(
        total=total, desc=desc, unit="img", disable=not progress, leave=False, dynamic_ncols=True
    ) as bar:
        for predictor in predictors:
            parts = []
            for start in range(0, len(images_u8), CHUNK):
                chunk = torch.from_numpy(np.ascontiguousarray(images_u8[start : start + CHUNK]))
                logits = predict_logits(
                    predictor.model,
                    chunk,
                    predictor.normalizer,
                    tta=tta,
                    device=predictor.device,
                    amp_dtype=predictor.amp_dtype,
                )
                parts.append(torch.log_softmax(logits.double(), dim=1).numpy())
                bar.update(len(chunk))
            members.append(
                np.concatenate(parts) if parts else np.zeros((0, len(predictor.classes)))
            )
    stacked = np.stack(members)
    # log(mean_m p_m) computed stably: logsumexp over members minus log(M).
    top = stacked.max(0)
    return top + np.log(np.exp(stacked - top).mean(0))


def ensemble_gradcam(
    predictors: Sequence[Predictor], images_u8: np.ndarray, class_indices: np.ndarray
) -> np.ndarray:
    """Grad-CAM maps for the given classes, averaged over ensemble members."""
    from .gradcam import gradcam_batch

    maps = [
        gradcam_batch(p.model, p.normalizer, images_u8, class_indices, device=p.device)[0]
        for p in predictors
    ]
    mean = np.mean(maps, axis=0)
    peak = mean.max(axis=(1, 2), keepdims=True)
    return np.divide(mean, peak, out=np.zeros_like(mean), where=peak > 0)


# ---------------------------------------------------------------- data and split
def _class_mapping(dataset: Dataset, classes: list[str]) -> np.ndarray:
    """Dataset label -> model class index; the data may hold a subset of the classes."""
    unknown = [c for c in dataset.classes if c not in classes]
    if unknown:
        raise DataError(
            f"the data has classes the model does not know: {', '.join(unknown)} "
            f"(the model's classes: {', '.join(classes)})"
        )
    return np.array([classes.index(c) for c in dataset.classes], dtype=np.int64)


def resolve_split(
    dataset: Dataset, metadata: dict, requested: str | None, bundle_path: Path | None = None
) -> tuple[Split, dict, list[str]]:
    """The split to evaluate on, where it came from, and notes for the reader.

    Same data as in training (matching fingerprint): the recorded split (name,
    seed, val_size, subset), so val/test are truly held out. Other data: the
    requested split of that data (its own train/test partitions for ``official``).
    """
    if requested is not None and requested not in SPLITS:
        raise UserInputError(f"unknown split {requested!r}; choose {', '.join(SPLITS)}")
    notes: list[str] = []
    recorded = metadata.get("split")
    config = metadata.get("config") or {}
    same_data = (
        bool(recorded) and (metadata.get("data") or {}).get("fingerprint") == dataset.fingerprint
    )
    if same_data and requested in (None, "auto", recorded["name"]):
        split = make_split(
            dataset,
            recorded["name"],
            int(recorded["seed"]),
            config.get("val_size"),
            config.get("subset"),
        )
        origin = "recorded in the model bundle"
        if recorded.get("digest") and split.digest() != recorded["digest"]:
            saved = _split_from_run_folder(bundle_path, recorded)
            if saved is not None:
                split, origin = saved, "the run folder's split.npz"
            else:
                notes.append(
                    "the training split could not be reproduced exactly (digest differs); "
                    "val/test may include images the model was trained on"
                )
        return split, {**split.describe(), "origin": origin}, notes

    name = requested or "auto"
    if same_data:
        notes.append(
            f"the model was trained with the {recorded['name']} split but --split {name} was "
            "asked for: val/test may include images the model was trained on"
        )
        split = make_split(dataset, name, int(recorded["seed"]), config.get("val_size"))
        return split, {**split.describe(), "origin": "requested"}, notes
    notes.append(
        "this data does not match the training data recorded in the model (or none is "
        "recorded), so which images the model saw in training is unknown; split names only "
        "partition this data"
    )
    # Foreign data keeps its own train/test partitions whole: no validation hold-out
    # (val_size=0; 70-15-15 ignores it).
    split = make_split(dataset, name, 0, val_size=0)
    return split, {**split.describe(), "origin": "requested"}, notes


def _split_from_run_folder(bundle_path: Path | None, recorded: dict) -> Split | None:
    if bundle_path is None or not (bundle_path.parent / "split.npz").is_file():
        return None
    with np.load(bundle_path.parent / "split.npz") as saved:
        split = Split(
            recorded["name"], int(recorded["seed"]), saved["train"], saved["val"], saved["test"]
        )
    return split if split.digest() == recorded.get("digest") else None


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


# ---------------------------------------------------------------- the evaluation
@dataclass
class EvalResult:
    """Everything an evaluation found: the interpretations and the rounded metrics."""

    predictors: list[Predictor]
    model_paths: list[str]
    dataset: Dataset
    split: Split
    interpretations: dict[tuple[str, bool], Interpretation]
    detail: Interpretation  # the split the per-class views describe (test, else val, else train)
    metrics: dict
    notes: list[str]
    histories: dict[str, list[dict]]  # model path -> its run's per-epoch history
    seconds: float

    @property
    def classes(self) -> list[str]:
        return self.predictors[0].classes


def evaluate(
    models: Sequence[str | os.PathLike] | None = None,
    data: str | os.PathLike | None = None,
    *,
    split: str | None = None,
    splits: Sequence[str] | None = None,
    tta: bool = True,
    device: str = "cpu",
    progress: bool = True,
) -> EvalResult:
    """Predict once per split (and with TTA), then derive every metric from those predictions.

    ``models``: one bundle path, several (an ensemble: probabilities averaged) or
    None (the bundled default). ``data``: None uses the dataset recorded in the
    first model when it is still on disk. ``splits``: which of train/val/test to
    evaluate (default all that exist; the training split is the slow one).
    """
    started = time.perf_counter()
    predictors = load_predictors(models, device=device)
    paths = [str(p) for p in (models or [])] or ["(bundled default model)"]
    first = predictors[0]
    meta = first.metadata
    if data is None:
        source = (meta.get("data") or {}).get("source")
        if not source or not Path(source).exists():
            raise UserInputError("pass --data: the model does not name a dataset that exists here")
        data = source
    dataset = load_dataset(data, image_size=first.input_size, progress=progress)
    mapping = _class_mapping(dataset, first.classes)
    targets_all = mapping[dataset.labels]
    bundle_path = Path(models[0]) if models else None
    chosen_split, split_info, notes = resolve_split(dataset, meta, split, bundle_path)
    notes += _ensemble_split_notes(predictors, meta)

    wanted = splits or list(SPLIT_NAMES)
    available = {name: getattr(chosen_split, name) for name in SPLIT_NAMES}
    evaluated = [name for name in wanted if len(available[name])]
    skipped = [name for name in wanted if not len(available[name])]
    if skipped:
        notes.append(f"no images in split(s): {', '.join(skipped)} (not evaluated)")
    if not evaluated:
        raise UserInputError(f"none of the requested splits ({', '.join(wanted)}) has images")

    interpretations: dict[tuple[str, bool], Interpretation] = {}
    for name in evaluated:
        idx = available[name]
        for use_tta in (False, True) if tta else (False,):
            log_probs = ensemble_log_probs(
                predictors,
                dataset.images[idx],
                tta=use_tta,
                progress=progress,
                desc=f"{name}{' +TTA' if use_tta else ''}",
            )
            interpretations[(name, use_tta)] = Interpretation(
                name, use_tta, log_probs, targets_all[idx], first.classes, idx
            )
    detail_split = next(s for s in ("test", "val", "train") if s in evaluated)
    detail = interpretations[(detail_split, False)]
    histories = {}
    for path in models or []:
        history_file = Path(path).parent / "history.json"
        if history_file.is_file():
            try:
                histories[str(path)] = json.loads(history_file.read_text())
            except (OSError, json.JSONDecodeError):
                notes.append(f"could not read {history_file}; no training curves for it")
    for note in notes:
        log.warning("note: %s", note)
    result = EvalResult(
        predictors=predictors,
        model_paths=paths,
        dataset=dataset,
        split=chosen_split,
        interpretations=interpretations,
        detail=detail,
        metrics={},
        notes=notes,
        histories=histories,
        seconds=0.0,
    )
    result.metrics = build_metrics(result, split_info, data)
    result.seconds = time.perf_counter() - started
    return result


def _ensemble_split_notes(predictors: Sequence[Predictor], meta: dict) -> list[str]:
    digests = {(p.metadata.get("split") or {}).get("digest") for p in predictors}
    if len(predictors) > 1 and len(digests) > 1:
        return [
            "the ensemble's models were trained on different splits; the first model's split "
            "is used, so val/test may include images another member was trained on"
        ]
    return []


# ---------------------------------------------------------------- metrics (rounded once)
def summary_rows(result: EvalResult) -> list[dict]:
    rows = []
    for (name, use_tta), interp in result.interpretations.items():
        ece, _ = interp.calibration()
        rows.append(
            {
                "split": name,
                "tta": use_tta,
                "images": len(interp),
                "accuracy": rnd(interp.accuracy),
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


def build_metrics(result: EvalResult, split_info: dict, data) -> dict:
    """Every number the report shows, rounded once; the JSON is this dict."""
    detail = result.detail
    classes = result.classes
    ece, bins = detail.calibration()
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
            "true": classes[t],
            "predicted": classes[p],
            "confidence": rnd(detail.confidences[pos]),
            "loss": rnd(detail.losses[pos]),
            "correct": t == p,
        }

    meta = result.predictors[0].metadata
    return {
        "models": [
            {
                "path": path,
                "name": p.name,
                "architecture": p.metadata["architecture"],
                "recipe": p.metadata.get("recipe"),
                "split": p.metadata.get("split"),
            }
            for path, p in zip(result.model_paths, result.predictors, strict=True)
        ],
        "ensemble": len(result.predictors) > 1,
        "data": {
            "path": str(data),
            "source": result.dataset.source,
            "fingerprint": result.dataset.fingerprint,
            "images": len(result.dataset),
            "same_as_training": (meta.get("data") or {}).get("fingerprint")
            == result.dataset.fingerprint,
        },
        "split": split_info,
        "classes": classes,
        "notes": result.notes,
        "summary": summary_rows(result),
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
        "calibration": {
            "split": detail.split,
            "ece": rnd(ece),
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
        },
        "top_losses": [image_entry(int(p)) for p in detail.top_losses()],
        "samples": [image_entry(int(p)) for p in sample_positions(detail)],
    }


def sample_positions(interp: Interpretation, k: int = SAMPLE_GRID, seed: int = 0) -> np.ndarray:
    """A fixed random draw of images (the same ones every time for the same split)."""
    rng = np.random.default_rng(seed)
    return rng.choice(len(interp), size=min(k, len(interp)), replace=False)


# ---------------------------------------------------------------- text output
def summary_table(metrics: dict) -> str:
    """The console summary: one line per split and TTA setting."""
    lines = [f"{'split':<7}{'TTA':<5}{'images':>8}{'accuracy':>10}{'loss':>9}{'ECE':>9}"]
    for row in metrics["summary"]:
        lines.append(
            f"{row['split']:<7}{'yes' if row['tta'] else 'no':<5}{row['images']:>8}"
            f"{fmt(row['accuracy']):>10}{fmt(row['loss']):>9}{fmt(row['ece']):>9}"
        )
    return "\n".join(lines)


def report_text(metrics: dict) -> str:
    """sklearn's classification-report layout, printed from the rounded numbers."""
    rows = metrics["classification_report"]["rows"]
    width = max(12, *(len(r["class"]) for r in rows))
    head = f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}"
    lines = [head, ""]
    per_class, averages = rows[:-2], rows[-2:]
    for r in per_class:
        lines.append(
            f"{r['class']:>{width}} {fmt(r['precision']):>9} {fmt(r['recall']):>9} "
            f"{fmt(r['f1']):>9} {r['support']:>9}"
        )
    total = sum(r["support"] for r in per_class)
    accuracy = metrics["classification_report"]["accuracy"]
    lines += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {fmt(accuracy):>9} {total:>9}"]
    for r in averages:
        lines.append(
            f"{r['class']:>{width}} {fmt(r['precision']):>9} {fmt(r['recall']):>9} "
            f"{fmt(r['f1']):>9} {r['support']:>9}"
        )
    return "\n".join(lines)


def default_out_dir(result: EvalResult) -> Path:
    name = "ensemble" if len(result.predictors) > 1 else result.predictors[0].name
    return Path("runs") / f"eval-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
