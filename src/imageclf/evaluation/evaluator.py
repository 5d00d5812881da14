"""Honest evaluation of a model (or an ensemble) on its held-out images.

Like fastai's ``interpret.py``: predictions are computed once per split (and per TTA
setting) into an ``Interpretation`` (multi-label models: ``multilabel.py``); every number,
table and plot is derived from that one object. The split a model was trained with is
recorded in its bundle, so evaluating on the same data reproduces it and val/test are
the images the model truly never saw. ``report_metrics`` rounds, ``report`` writes.
"""

from __future__ import annotations

import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..data import Dataset, Split, duplicates, load_dataset, make_split, table_options_for
from ..data.dataset import class_mapping
from ..data.splits import SPLITS
from ..errors import UserInputError
from ..models.metadata import BundleMetadata
from ..models.naming import safe_component
from ..prediction.inference import TTA_VIEWS, score_in_chunks
from ..prediction.predictor import Predictor, default_model_path
from .interpretation import Interpretation
from .multilabel import LabelEvalResult, evaluate_labels
from .outside import measure_others
from .report_metrics import agreement_notes, build_metrics
from .views import SPLIT_NAMES, TRAIN_SAMPLE, TTA_SAMPLE, Views, skipped_notes, tta_sample_notes

log = logging.getLogger("imageclf.evaluate")


# ---------------------------------------------------------------- models
def load_predictors(
    paths: Sequence[str | os.PathLike] | None, device: str = "cpu", precision: str = "fp32"
) -> list[Predictor]:
    """One predictor per path (none: the bundled model); an ensemble must agree on classes."""
    paths = list(paths or [None])
    predictors = [Predictor.load(p, device=device, precision=precision) for p in paths]
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
    bar: tqdm | None = None,
) -> np.ndarray:
    """(N, C) log-probabilities: each member through ``Predictor.log_probs``, the one
    prediction path; probabilities averaged over members. ``bar``: a caller's progress bar
    over several calls, counted in forward views (a TTA image is ``TTA_VIEWS``)."""
    members = []
    views = TTA_VIEWS if tta else 1
    total = len(images_u8) * len(predictors) * views
    own = tqdm(total=total, desc=desc, unit="view", disable=not progress or bar is not None,
               leave=False, dynamic_ncols=True)  # fmt: skip
    with own:
        for p in predictors:
            members.append(score_in_chunks(p.log_probs, images_u8, len(p.classes), tta, bar or own))
    stacked = np.stack(members)
    # log(mean_m p_m) computed stably: logsumexp over members minus log(M).
    top = stacked.max(0)
    return top + np.log(np.exp(stacked - top).mean(0))


# ---------------------------------------------------------------- data and split
def resolve_split(
    dataset: Dataset,
    metadata: BundleMetadata,
    requested: str | None,
    bundle_path: Path | None = None,
) -> tuple[Split, dict, list[str]]:
    """The split to evaluate on, where it came from, and notes for the reader.

    Same data as in training (matching fingerprint): the recorded split (name,
    seed, val_size, subset), so val/test are truly held out. Other data: the
    requested split of that data (its own train/test partitions for ``official``).
    """
    if requested is not None and requested not in SPLITS:
        raise UserInputError(f"unknown split {requested!r}; choose {', '.join(SPLITS)}")
    notes: list[str] = []
    recorded = metadata.split
    config = metadata.config
    same_data = bool(recorded) and metadata.data_fingerprint == dataset.fingerprint
    if same_data and requested in (None, "auto", recorded["name"]):
        split = make_split(
            dataset,
            recorded["name"],
            recorded["seed"],
            config.get("val_size"),
            config.get("subset"),
        )
        if config.get("dedupe"):  # trained without the twins of val/test: the same again
            split = duplicates.drop_training_copies(split, duplicates.check_dataset(dataset, split))
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
        split = make_split(dataset, name, recorded["seed"], config.get("val_size"))
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


def labelled_split(
    metadata: BundleMetadata,
    data: str | os.PathLike,
    bundle_path: Path | None = None,
    table: dict | None = None,
) -> tuple[Dataset, Split, np.ndarray]:
    """``data`` with the split ``resolve_split`` picks for the model and every label as
    the model's class index (the int8 export calibrates and checks on it). A table is read
    with ``table``'s options, else as training read it."""
    table = table_options_for(data, metadata.config, table)
    dataset = load_dataset(data, image_size=metadata.input_size, progress=False, table=table)
    split, _, notes = resolve_split(dataset, metadata, None, bundle_path)
    for note in notes:
        log.warning("note: %s", note)
    return dataset, split, class_mapping(dataset, metadata.classes)[dataset.labels]


def _split_from_run_folder(bundle_path: Path | None, recorded: dict) -> Split | None:
    if bundle_path is None or not (bundle_path.parent / "split.npz").is_file():
        return None
    with np.load(bundle_path.parent / "split.npz") as saved:
        split = Split(
            recorded["name"], recorded["seed"], saved["train"], saved["val"], saved["test"]
        )
    return split if split.digest() == recorded.get("digest") else None


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
    tta_splits: Sequence[str] | None = None,
    train_sample: int | None = TRAIN_SAMPLE,
    tta_sample: int | None = TTA_SAMPLE,
    device: str = "cpu",
    precision: str = "auto",
    progress: bool = True,
    others: str | os.PathLike | None = None,
    table: dict | None = None,
) -> EvalResult | LabelEvalResult:
    """Predict once per split (and with TTA), then derive every metric from those predictions.

    ``models``: one bundle path, several (an ensemble: probabilities averaged) or
    None (the bundled default). ``data``: None uses the dataset recorded in the
    first model when it is still on disk. ``splits``: which of train/val/test to
    evaluate (default all that exist). The costly views are spent where they inform:
    TTA on the headline split only (test, else val; ``tta_splits`` names others) and on
    a seeded sample of ``tta_sample`` of its images, the training split on a seeded sample
    of ``train_sample`` images (None: all, for either).
    ``precision="auto"`` runs bf16 where the CPU has it natively. ``others``: a folder
    of pictures of none of the classes, to measure the "one of its classes?" rule.
    """
    started = time.perf_counter()
    predictors = load_predictors(models, device=device, precision=precision)
    paths = [str(p) for p in (models or [])] or [str(default_model_path())]
    first = predictors[0]
    if data is None:
        source = first.metadata.data_source
        if not source or not Path(source).exists():
            raise UserInputError("pass --data: the model does not name a dataset that exists here")
        data = source
    table = table_options_for(data, first.metadata.config, table)  # as training read it
    dataset = load_dataset(data, image_size=first.input_size, progress=progress, table=table)
    bundle_path = Path(models[0]) if models else None
    chosen, split_info, notes = resolve_split(dataset, first.metadata, split, bundle_path)
    notes += _ensemble_split_notes(predictors)
    views = Views(splits or list(SPLIT_NAMES), tta, tta_splits, train_sample, tta_sample)
    if first.metadata.multi_label:  # one sigmoid per label
        args = (predictors, paths, dataset, chosen, split_info, notes, views, progress, started)
        return evaluate_labels(*args)
    interpretations = _predict_splits(predictors, dataset, chosen, views, progress, notes)
    notes += agreement_notes(predictors, interpretations, split_info["origin"])
    detail_split = next(s for s in ("test", "val", "train") if (s, False) in interpretations)
    detail = interpretations[(detail_split, False)]
    histories = _read_histories(models or [], notes)
    for note in notes:
        log.warning("note: %s", note)
    metrics = build_metrics(
        predictors, paths, dataset, interpretations, detail, split_info, notes, data
    )
    if others is not None:
        idx = getattr(chosen, detail_split)
        labels = class_mapping(dataset, first.classes)[dataset.labels[idx]]
        metrics["out_of_class"] = measure_others(
            predictors, dataset.images[idx], labels, others, detail_split
        )
    return EvalResult(
        predictors=predictors,
        model_paths=paths,
        dataset=dataset,
        split=chosen,
        interpretations=interpretations,
        detail=detail,
        metrics=metrics,
        notes=notes,
        histories=histories,
        seconds=time.perf_counter() - started,
    )


def _predict_splits(predictors, dataset, split, views: Views, progress, notes):
    """One ``Interpretation`` per (split, TTA) that has images; notes what was skipped."""
    classes = predictors[0].classes
    targets_all = class_mapping(dataset, classes)[dataset.labels]
    available = {name: getattr(split, name) for name in SPLIT_NAMES}
    evaluated = [name for name in views.splits if len(available[name])]
    skipped = [name for name in views.splits if not len(available[name])]
    if skipped:
        notes.append(f"no images in split(s): {', '.join(skipped)} (not evaluated)")
    if not evaluated:
        raise UserInputError(f"none of the requested splits ({', '.join(views.splits)}) has images")
    with_tta = views.tta_on(evaluated)
    notes += skipped_notes(views, evaluated, with_tta, len(available["train"]))
    passes = [(n, t) for n in evaluated for t in ((False, True) if n in with_tta else (False,))]
    chosen = {(n, t): views.scored(n, available[n], t) for n, t in passes}
    # One bar over every pass, in forward views: its ETA is the whole evaluation's.
    total = sum(len(idx) * (TTA_VIEWS if t else 1) for (_, t), idx in chosen.items())
    interpretations: dict[tuple[str, bool], Interpretation] = {}
    with tqdm(total=total * len(predictors), unit="view", disable=not progress, leave=False,
              dynamic_ncols=True) as bar:  # fmt: skip
        for name, use_tta in passes:
            idx = chosen[(name, use_tta)]
            bar.set_description(f"predicting {name}{' +TTA' if use_tta else ''}")
            log_probs = ensemble_log_probs(
                predictors, dataset.images[idx], tta=use_tta, progress=progress, bar=bar
            )
            interpretations[(name, use_tta)] = Interpretation(
                name, use_tta, log_probs, targets_all[idx], classes, idx
            )
    notes += tta_sample_notes(interpretations)
    return interpretations


def _read_histories(models: Sequence[str | os.PathLike], notes: list[str]) -> dict:
    """Each model's run history (history.json beside it), for the training curves."""
    histories = {}
    for path in models:
        history_file = Path(path).parent / "history.json"
        if history_file.is_file():
            try:
                histories[str(path)] = json.loads(history_file.read_text())
            except (OSError, json.JSONDecodeError):
                notes.append(f"could not read {history_file}; no training curves for it")
    return histories


def _ensemble_split_notes(predictors: Sequence[Predictor]) -> list[str]:
    digests = {(p.metadata.split or {}).get("digest") for p in predictors}
    if len(predictors) > 1 and len(digests) > 1:
        return [
            "the ensemble's models were trained on different splits; the first model's split "
            "is used, so val/test may include images another member was trained on"
        ]
    return []


def default_out_dir(result: EvalResult) -> Path:
    # The name comes from the bundle, which may not be ours: one safe path component.
    name = "ensemble" if len(result.predictors) > 1 else safe_component(result.predictors[0].name)
    return Path("runs") / f"eval-{name}-{time.strftime('%Y%m%d-%H%M%S')}"
