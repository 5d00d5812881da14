"""The end of a training run: the kept weights back, val/test scored once, the bundle.

Everything a finished run leaves besides its checkpoints: ``metrics.json`` (accuracy
and loss per split, with TTA when asked, the compute spent, calibration fitted on
validation), ``model.safetensors`` with the metadata that describes it, and the curves.
Only rank 0 writes; the others wait at the barrier.
"""

from __future__ import annotations

import json
import logging
import math
import shlex
import sys
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..calibration import MIN_IMAGES, calibrate, calibration_effect
from ..device import machine, precision_name
from ..fileio import write_text_atomic
from ..models.bundle import save_bundle
from ..models.naming import default_model_name
from ..prediction.inference import TTA_VIEWS, loss_and_accuracy, predict_logits, score_in_chunks
from .compute import ComputeReport, compute_report, training_flops_per_image
from .job import Job
from .multilabel import correct_count, label_decisions
from .runs import Run, RunState, data_record, describe_kept, kept_epoch, plot_curves

log = logging.getLogger("imageclf.train")  # the training logger: the tuner quiets it


def finish(job: Job) -> Run | None:
    """Restore the kept weights, score val/test once, write the bundle and metrics."""
    cfg, parts, rt, state = job.cfg, job.parts, job.rt, job.state
    if parts.lookahead is not None:
        parts.lookahead.sync(1.0)  # end on the slow weights
    if parts.ema is not None:
        parts.ema.copy_to_model()  # --ema: the average is the model (restore_best may follow)
    if cfg.restore_best and job.best is not None:
        parts.model.load_state_dict(job.best)
    kept = kept_epoch(state, cfg.restore_best, job.best is not None)
    train_seconds = time.perf_counter() - job.started
    result = None
    if rt.dist.is_main:
        metrics: dict = {"train_seconds": round(train_seconds, 2)}
        metrics["epochs_run"] = state.epoch
        metrics["best_epoch"] = state.best_epoch if job.best is not None else None
        metrics["kept_epoch"], metrics["kept_rule"] = kept["epoch"], kept["rule"]
        metrics["precision"] = precision_name(rt.amp_dtype)
        scored = _score(job, kept, metrics)
        compute = _compute(job)
        metrics["compute"] = compute.to_dict()
        # Multi-label: per-label calibration and thresholds instead of one temperature.
        labels = label_decisions(scored, metrics) if parts.multi_label else None
        calibration = None if parts.multi_label else _calibrate(scored)
        if calibration is not None:
            metrics["calibration"] = calibration
        bundle_path = job.run_dir / "model.safetensors"
        meta = _bundle_metadata(job, metrics)
        if calibration is not None:
            meta["calibration"] = calibration
        meta.update(labels or {})
        save_bundle(bundle_path, parts.model.state_dict(), meta)
        seconds = time.perf_counter() - job.started
        metrics["wall_seconds"] = round(seconds, 2)
        write_text_atomic(job.run_dir / "metrics.json", json.dumps(metrics, indent=2))
        plot_curves(job.run_dir, state.history, cfg, kept)
        job.tracker.end(job.run_dir, state.history, metrics, cfg.to_dict(),
                        job.data.dataset.classes, scored)  # fmt: skip
        log.info("%s", compute.summary())
        result = Run(job.run_dir, bundle_path, state.history, metrics, seconds)
    rt.dist.barrier()
    return result


def _score(job: Job, kept: dict, metrics: dict) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """val and test scored once with the kept weights (and with TTA when asked) into
    ``metrics``; returns split -> (plain logits, labels) for calibration.

    Scored the way ``evaluate`` scores the bundle (``Predictor``: the same chunks, batch
    rule, forward path and precision), so evaluate on the same split and precision counts
    the same correct images. A progress bar, since with TTA this takes minutes.
    """
    cfg, data = job.cfg, job.data
    x_test, y_test = data.test_set() if job.evaluate_test else (data.x_val[:0], data.y_val[:0])
    splits = [(n, x, y) for n, x, y in (("val", data.x_val, data.y_val), ("test", x_test, y_test))
              if len(x)]  # fmt: skip
    total = sum(len(x) for _, x, _ in splits) * (1 + TTA_VIEWS if cfg.tta else 1)
    if splits:  # a log line: --quiet and the tuner silence it, --log-format json keeps it
        names = ", ".join(f"{n} ({len(x):,} images)" for n, x, _ in splits)
        log.info("scoring the kept weights (epoch %d) on %s%s", kept["epoch"], names,
                 ", also with TTA (6 views)" if cfg.tta else "")  # fmt: skip
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    # One bar over every pass, counted in forward views (a TTA image is 6), so its ETA holds.
    with tqdm(total=total, desc="final scoring", unit="view", disable=not job.show,
              leave=False, dynamic_ncols=True) as bar:  # fmt: skip
        for name, x, y in splits:
            scored[name] = (_logits(job, x, False, bar), y)
            metrics[name] = split_score(*scored[name])
            if cfg.tta:  # tuning decisions read val (with TTA); test is only reported
                metrics[f"{name}_tta"] = split_score(_logits(job, x, True, bar), y)
    return scored


def _logits(job: Job, x: torch.Tensor, tta: bool, bar) -> torch.Tensor:
    """Logits in the chunks ``evaluate`` uses (``score_in_chunks``), default batches."""
    parts, rt = job.parts, job.rt

    def score(chunk: torch.Tensor, tta: bool):
        logits = predict_logits(parts.model, chunk, parts.normalizer, tta=tta, device=rt.device,
                                amp_dtype=rt.amp_dtype, multi_label=parts.multi_label)  # fmt: skip
        return logits.numpy()

    return torch.from_numpy(score_in_chunks(score, x, len(job.data.dataset.classes), tta, bar))


def split_score(logits: torch.Tensor, labels: torch.Tensor) -> dict:
    """Loss (before calibration), accuracy, and the counts behind the accuracy (multi-label:
    subset accuracy at 0.5 and ``map``)."""
    correct = int(correct_count(logits, labels, labels.ndim == 2))
    score = loss_and_accuracy(logits, labels)
    if "map" in score and not math.isfinite(score["map"]):
        score["map"] = None  # no label has a positive picture in this split
    return {**score, "correct": correct, "images": len(labels)}


def run_summary(run: Run) -> str:
    """What ``imageclf train`` prints at the end: the kept epoch and why, then each held-out
    split's figures (the kept weights', as in metrics.json), then the bundle."""
    m = run.metrics
    lines = [f"done in {run.seconds:.1f}s; " + describe_kept(
        {"epoch": m["kept_epoch"], "rule": m["kept_rule"]}, m["epochs_run"])]  # fmt: skip
    for name in ("val", "test"):
        if name in m:
            s = m[name]
            line = (
                f"  {name} accuracy {s['accuracy']:.4f} ({s['correct']:,} of {s['images']:,}, "
                f"no TTA, {m['precision']})  loss {s['loss']:.4f}"
            )
            if "map" in s:  # multi-label: the labels' figures, not one class's
                line = (
                    f"  {name} mAP {s['map']:.4f}  micro F1 {s['micro_f1']:.4f}  macro F1 "
                    f"{s['macro_f1']:.4f} ({s['images']:,} images, no TTA)  loss {s['loss']:.4f}"
                )
            if f"{name}_tta" in m:
                key = "map" if "map" in s else "accuracy"
                line += f"; with TTA {m[f'{name}_tta'][key]:.4f}"
            lines.append(line)
    lines.append(f"model: {run.bundle_path}")
    return "\n".join(lines)


def _compute(job: Job) -> ComputeReport:
    """FLOPs spent (machine-independent) and the share of this machine's GEMM peak reached;
    epochs at a reduced size (progressive resizing) count at their own size."""
    cfg, model, n_train, state = job.cfg, job.parts.model, len(job.data.x_train), job.state
    sides = [cfg.image_size_at(epoch) for epoch in range(state.epoch)]
    per_side = {s: training_flops_per_image(model, s) for s in {cfg.image_size, *sides}}
    spent = float(sum(per_side[side] for side in sides) * n_train)
    return compute_report(
        per_side[cfg.image_size],
        state.epoch * n_train,
        state.train_seconds,
        job.rt.amp_dtype,
        job.rt.device,
        training_flops=spent,
    )


def _calibrate(scored: dict[str, tuple[torch.Tensor, torch.Tensor]]) -> dict | None:
    """Temperature and unsure threshold fitted on validation (never test), with test ECE
    beside when the run scored test. ``scored``: split -> (plain logits, labels), the
    same forward passes the metrics came from.

    Without enough validation images there is nothing honest to fit on: confidences stay raw.
    """
    val_images = len(scored["val"][1]) if "val" in scored else 0
    if val_images < MIN_IMAGES:
        log.warning(
            "%d validation images (fewer than %d): confidences are not calibrated",
            val_images,
            MIN_IMAGES,
        )
        return None
    fitted = calibrate(*scored["val"]).to_dict()
    if "test" in scored:
        fitted["test"] = calibration_effect(*scored["test"], fitted["temperature"])
    return fitted


def _bundle_metadata(job: Job, metrics: dict) -> dict:
    cfg, data = job.cfg, job.data
    return {
        "name": cfg.name or default_model_name(cfg.data, cfg.recipe),
        "architecture": cfg.architecture,
        "arch_kwargs": cfg.arch_kwargs,
        "classes": data.dataset.classes,
        "input_size": cfg.image_size,
        "normalization": {"mean": data.mean, "std": data.std},
        "preprocessing": _preprocessing(cfg),
        "start": job.start.origin(cfg, data.dataset.classes),
        "recipe": cfg.recipe,
        "config": cfg.to_dict(),
        "data": data_record(data.dataset),
        "split": data.split.describe(),
        "metrics": metrics,
        "provenance": _provenance(job.state),
    }


def _provenance(state: RunState) -> dict:
    this = command_line()
    record = {
        "command": state.command or this,
        "machine": machine(),
        "date": time.strftime("%Y-%m-%d"),
    }
    if state.command and this != state.command:
        record["finished_by"] = this  # a resume: the machine and date are its own
    return record


def _preprocessing(cfg) -> dict:
    if cfg.source_size is None or cfg.source_size >= cfg.image_size:
        return {"resize": "whole frame squashed to the input size"}
    return {
        "resize": f"whole frame squashed to {cfg.source_size} px, then to the input size",
        "source_size": cfg.source_size,
    }


def command_line() -> str | None:
    """The ``imageclf ...`` command this process runs, to make the model again; None when
    training was called from Python (the recorded config says everything then)."""
    program = Path(sys.argv[0]) if sys.argv else Path()
    if program.name != "imageclf" and program.parts[-2:] != ("imageclf", "__main__.py"):
        return None  # python -m imageclf runs imageclf/__main__.py
    return shlex.join(["imageclf", *sys.argv[1:]])
