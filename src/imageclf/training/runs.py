"""The run folder: what a training run writes, and what ``resume`` reads back.

``runs/<name>/`` holds ``config.json`` (resolved config, split, data, device),
``split.npz``, ``history.json``/``.csv``, ``last.pt``/``best.pt`` checkpoints
(written atomically after every epoch), ``metrics.json``, ``curves.png`` and
the final ``model.safetensors``. Checkpoints are ``torch.save`` files of plain
tensors, dicts and numbers, loaded with ``weights_only=True``: never unpickled.
"""

from __future__ import annotations

import csv
import dataclasses
import io
import json
import logging
import math
import os
import pickle
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from ..data import Dataset, Split
from ..device import DistContext, Runtime
from ..errors import UserInputError
from ..fileio import atomic_write, write_text_atomic
from .config import TrainConfig

log = logging.getLogger("imageclf.train")

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]


@dataclass
class RunState:
    """Everything besides weights and optimiser that a resumed run must continue from."""

    epoch: int = 0  # epochs finished
    step: int = 0  # optimiser steps taken
    history: list[dict] = field(default_factory=list)
    lr_factor: float = 1.0  # ReduceLROnPlateau's cut so far
    best_val_loss: float = math.inf
    best_epoch: int = 0
    bad_epochs: int = 0  # epochs since val_loss last improved
    stopped_early: bool = False
    train_seconds: float = 0.0  # time inside training epochs only: the compute rate's divisor
    wall_seconds: float = 0.0  # since the run began, across resumes, at this checkpoint
    command: str | None = None  # the imageclf command that began the run (not a resume)

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> RunState:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass
class Checkpoint:
    """``last.pt``: the model, optimiser, run state, lookahead buffers and config."""

    model: dict[str, torch.Tensor]
    optimizer: dict
    state: RunState
    lookahead: list[torch.Tensor]
    config: dict
    ema: dict = field(default_factory=dict)  # --ema: WeightAverage.state_dict()

    def save(self, path: Path) -> None:
        save_torch(
            {
                "model": self.model,
                "optimizer": self.optimizer,
                "state": self.state.to_dict(),
                "lookahead": self.lookahead,
                "config": self.config,
                "ema": self.ema,
            },
            path,
        )

    @classmethod
    def load(cls, run_dir: str | os.PathLike, dist: DistContext | None = None) -> Checkpoint:
        """``last.pt`` of ``run_dir``. Under torchrun (``dist``) rank 0 reads it and sends
        it to the other ranks, whose machines need not share its disk."""
        last = Path(run_dir) / "last.pt"

        def read() -> bytes:
            if not last.is_file():
                raise UserInputError(f"nothing to resume: {last} does not exist")
            try:
                return last.read_bytes()
            except OSError as exc:
                raise UserInputError(f"cannot resume from {last}: {exc.strerror}") from None

        data = dist.share(read) if dist is not None else read()
        try:
            raw = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
            return cls(
                raw["model"],
                raw["optimizer"],
                RunState.from_dict(raw["state"]),
                raw["lookahead"],
                raw["config"],
                raw.get("ema", {}),
            )
        # An empty or cut-off file raises EOFError, which click would report as Ctrl-C.
        except (EOFError, RuntimeError, pickle.UnpicklingError, KeyError, TypeError) as exc:
            why = {EOFError: "empty or cut short", KeyError: f"no {exc} entry"}.get(
                type(exc), "not a checkpoint written by imageclf train"
            )
            raise UserInputError(f"cannot resume from {last}: {why}") from None


def save_torch(obj: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def load_best(run_dir: Path) -> dict[str, torch.Tensor] | None:
    path = run_dir / "best.pt"
    return torch.load(path, map_location="cpu", weights_only=True) if path.is_file() else None


def default_run_dir(recipe: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe}-{stamp}"


def data_record(dataset: Dataset) -> dict:
    """Which data a model saw: recorded in config.json and in the bundle."""
    return {
        "source": dataset.source,
        "fingerprint": dataset.fingerprint,
        "classes": dataset.classes,
        "num_images": len(dataset),
    }


def write_run_record(
    run_dir: Path, cfg: TrainConfig, dataset: Dataset, split: Split, norm: dict, rt: Runtime
) -> None:
    """config.json and split.npz: enough to re-create this run's inputs exactly."""
    run_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "config": cfg.to_dict(),
        "split": split.describe(),
        "data": data_record(dataset),
        "normalization": norm,
        "device": str(rt.device),
        "precision": rt.precision,
        "threads": torch.get_num_threads(),
        "world_size": rt.dist.world,
    }
    write_text_atomic(run_dir / "config.json", json.dumps(record, indent=2))
    np.savez(run_dir / "split.npz", train=split.train, val=split.val, test=split.test)


def history_record(
    epoch: int, loss: float, acc: float, val: dict | None, lr: float | None, started: float
) -> dict:
    """One row of ``history.json``: an epoch (0 is a transfer run's head fit), its train
    and val loss/accuracy, learning rate (None: no optimiser step) and seconds since
    ``started``."""

    def rounded(value: float | None) -> float | None:
        return round(value, 6) if value is not None and math.isfinite(value) else None

    record = {
        "epoch": epoch,
        "train_loss": round(loss, 6),
        "train_acc": round(acc, 6),
        "val_loss": rounded(val["loss"] if val else None),
        "val_acc": rounded(val["accuracy"] if val else None),
        "lr": lr,
        "seconds": round(time.perf_counter() - started, 3),
    }
    if val and "map" in val:  # multi-label: val_acc is subset accuracy, this the mean AP
        record["val_map"] = rounded(val["map"])
    return record


def write_history(run_dir: Path, history: list[dict]) -> None:
    write_text_atomic(run_dir / "history.json", json.dumps(history, indent=2))
    text = io.StringIO()
    fields = HISTORY_FIELDS + (["val_map"] if any("val_map" in r for r in history) else [])
    writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / "history.csv", text.getvalue())


def kept_epoch(state: RunState, restore_best: bool, has_best: bool) -> dict:
    """Which epoch's weights a finished run keeps, and why: the one definition that
    metrics.json, the bundle, curves.png, the console summary and evaluate all name.

    With validation images and ``restore_best`` (the default) it is the epoch of lowest
    validation loss (0: a transfer run's head fit, when fine-tuning never beat it);
    otherwise the last epoch.
    """
    if restore_best and has_best:
        rule = "lowest validation loss"
        if state.best_epoch == 0:
            rule += "; epoch 0 is the head fitted on frozen features"
        return {"epoch": state.best_epoch, "rule": rule}
    why = "restore_best is off" if not restore_best else "no validation images"
    return {"epoch": state.epoch, "rule": f"last epoch: {why}"}


def describe_kept(kept: dict, epochs_run: int) -> str:
    """``kept epoch 3 of 8 (lowest validation loss)``: the same words in every output."""
    return f"kept epoch {kept['epoch']} of {epochs_run} ({kept['rule']})"


def plot_curves(run_dir: Path, history: list[dict], cfg: TrainConfig, kept: dict) -> None:
    """curves.png in the run folder, the kept epoch marked; a plotting failure must never
    lose a finished run."""
    try:
        from ..plots import save_training_curves

        title = f"{cfg.recipe}: {run_dir.name}"
        save_training_curves(history, run_dir / "curves.png", title, cfg.label_smoothing, kept=kept)
    except Exception as exc:
        log.warning("could not plot the training curves: %s", exc)


@dataclass
class Run:
    """A finished training run: where it lives, what it learned, how it scored."""

    run_dir: Path
    bundle_path: Path
    history: list[dict]
    metrics: dict
    seconds: float
