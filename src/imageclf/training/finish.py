"""The end of a training run: the best weights back, val/test scored once, the bundle.

Everything a finished run leaves besides its checkpoints: ``metrics.json`` (accuracy
and loss per split, with TTA when asked, the compute spent, calibration fitted on
validation), ``model.safetensors`` with the metadata that describes it, and the curves.
Only rank 0 writes; the others wait at the barrier.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

import torch

from ..calibration import MIN_IMAGES, calibrate, calibration_effect
from ..device import Runtime
from ..fileio import write_text_atomic
from ..models.bundle import save_bundle
from ..prediction.inference import evaluate_logits
from . import finetune
from .compute import ComputeReport, compute_report, training_flops_per_image
from .config import TrainConfig
from .parts import Parts, TrainData
from .runs import Run, RunState, data_record, plot_curves

log = logging.getLogger("imageclf.train")  # the training logger: the tuner quiets it


def finish(
    cfg: TrainConfig,
    run_dir: Path,
    parts: Parts,
    data: TrainData,
    rt: Runtime,
    state: RunState,
    best: dict | None,
    started: float,
    evaluate_test: bool = True,
) -> Run | None:
    """Restore the best weights, score val/test once, write the bundle and metrics."""
    if parts.lookahead is not None:
        parts.lookahead.sync(1.0)  # end on the slow weights
    if cfg.restore_best and best is not None:
        parts.model.load_state_dict(best)
    train_seconds = time.perf_counter() - started
    result = None
    if rt.dist.is_main:
        metrics: dict = {"train_seconds": round(train_seconds, 2)}
        x_test, y_test = data.test_set() if evaluate_test else (data.x_val[:0], data.y_val[:0])
        scored: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # plain logits, labels
        for name, x, y in (("val", data.x_val, data.y_val), ("test", x_test, y_test)):
            if len(x):
                scored[name] = (parts.logits(cfg, x, rt), y)
                metrics[name] = evaluate_logits(*scored[name])
                if cfg.tta:  # tuning decisions read val (with TTA); test is only reported
                    metrics[f"{name}_tta"] = parts.evaluate(cfg, x, y, rt, tta=True)
        metrics["epochs_run"] = state.epoch
        metrics["best_epoch"] = state.best_epoch or state.epoch
        compute = _compute(cfg, parts, data, rt, state)
        metrics["compute"] = compute.to_dict()
        calibration = _calibrate(scored)
        if calibration is not None:
            metrics["calibration"] = calibration
        bundle_path = run_dir / "model.safetensors"
        meta = _bundle_metadata(cfg, data, metrics)
        if calibration is not None:
            meta["calibration"] = calibration
        save_bundle(bundle_path, parts.model.state_dict(), meta)
        seconds = time.perf_counter() - started
        metrics["wall_seconds"] = round(seconds, 2)
        write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        plot_curves(run_dir, state.history, cfg)
        log.info("%s", compute.summary())
        result = Run(run_dir, bundle_path, state.history, metrics, seconds)
    rt.dist.barrier()
    return result


def _compute(
    cfg: TrainConfig, parts: Parts, data: TrainData, rt: Runtime, state: RunState
) -> ComputeReport:
    """FLOPs spent (machine-independent) and the share of this machine's GEMM peak reached;
    epochs at a reduced size (progressive resizing) count at their own size."""
    sides = [cfg.image_size_at(epoch) for epoch in range(state.epoch)]
    per_side = {s: training_flops_per_image(parts.model, s) for s in {cfg.image_size, *sides}}
    spent = float(sum(per_side[side] for side in sides) * len(data.x_train))
    return compute_report(
        per_side[cfg.image_size],
        state.epoch * len(data.x_train),
        state.train_seconds,
        rt.amp_dtype,
        rt.device,
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


def _bundle_metadata(cfg: TrainConfig, data: TrainData, metrics: dict) -> dict:
    return {
        "name": f"{cfg.recipe}",
        "architecture": cfg.architecture,
        "arch_kwargs": cfg.arch_kwargs,
        "classes": data.dataset.classes,
        "input_size": cfg.image_size,
        "normalization": {"mean": data.mean, "std": data.std},
        "preprocessing": {"resize": "whole frame squashed to the input size"},
        "start": finetune.origin(cfg, data.dataset.classes),
        "recipe": cfg.recipe,
        "config": cfg.to_dict(),
        "data": data_record(data.dataset),
        "split": data.split.describe(),
        "metrics": metrics,
    }
