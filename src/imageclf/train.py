"""The training loop: one function, read top to bottom, no callback machinery.

Every epoch draws its randomness from ``(seed, epoch)``, and a checkpoint is
written atomically after each epoch, so ``--resume`` after a crash or Ctrl-C
replays the remaining epochs exactly as an uninterrupted run would.
Under ``torchrun`` it trains data-parallel (DDP); only rank 0 writes files.
"""

from __future__ import annotations

import copy
import csv
import io
import json
import logging
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from . import finetune
from .bundle import save_bundle
from .data import Dataset, load_dataset, make_split
from .data.augment import augment_batch
from .data.loader import Normalizer, batch_indices, channel_stats
from .device import autocast, resolve_device, resolve_precision
from .errors import UserInputError
from .fileio import RunLock, atomic_write, write_text_atomic
from .inference import evaluate_logits, predict_logits
from .models import build
from .recipes import TrainConfig, adapt_to_data

log = logging.getLogger("imageclf.train")

HISTORY_FIELDS = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
LOOKAHEAD_EVERY = 5  # steps between lookahead syncs


# ---------------------------------------------------------------- distributed context
@dataclass
class DistContext:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()


# ---------------------------------------------------------------- optimiser and schedule
def _norm_biases(model: nn.Module) -> list[nn.Parameter]:
    biases = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.bias is not None:
            biases.append(module.bias)
    return biases


def make_optimizer(model: nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer != "sgd":
        raise UserInputError(f"unknown optimizer {cfg.optimizer!r}; choose adam or sgd")
    # Decay per step scales with the batch (a bigger batch means fewer steps per epoch).
    decay = cfg.weight_decay * cfg.batch_size / 1024
    bias_ids = {id(p) for p in _norm_biases(model)}
    groups = []
    for scale, members in (
        (cfg.bias_lr_scale, [p for p in params if id(p) in bias_ids]),
        (1.0, [p for p in params if id(p) not in bias_ids]),
    ):
        if members:
            lr = cfg.lr * scale
            # torch's SGD multiplies decay by lr; dividing here makes the decay lr-independent.
            groups.append({"params": members, "lr": lr, "weight_decay": decay / lr, "base_lr": lr})
    return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)


def schedule_multiplier(cfg: TrainConfig, step: int, total_steps: int) -> float:
    if cfg.schedule == "warmup-linear":
        peak = max(1, int(cfg.warmup * total_steps))
        if step < peak:
            return 0.2 + 0.8 * step / peak
        return max(0.0, (total_steps - step) / max(1, total_steps - peak))
    if cfg.schedule in ("constant", "plateau"):
        return 1.0
    raise UserInputError(
        f"unknown schedule {cfg.schedule!r}; choose constant, plateau, warmup-linear"
    )


@torch.no_grad()
def _lookahead_sync(slow: list[torch.Tensor], model: nn.Module, decay: float) -> None:
    for buf, p in zip(slow, model.parameters(), strict=True):
        buf.lerp_(p.detach(), 1 - decay)
        p.copy_(buf)


# ---------------------------------------------------------------- run folder I/O
def _save_torch(obj: dict, path: Path) -> None:
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    with atomic_write(path) as handle:
        handle.write(buffer.getvalue())


def _write_history(run_dir: Path, history: list[dict]) -> None:
    write_text_atomic(run_dir / "history.json", json.dumps(history, indent=2))
    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=HISTORY_FIELDS, extrasaction="ignore")
    writer.writeheader()
    writer.writerows(history)
    write_text_atomic(run_dir / "history.csv", text.getvalue())


def default_run_dir(recipe: str) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path("runs") / f"{recipe}-{stamp}"


# ---------------------------------------------------------------- result
@dataclass
class TrainResult:
    run_dir: Path
    bundle_path: Path
    history: list[dict]
    metrics: dict
    seconds: float


def _fingerprint(dataset: Dataset) -> dict:
    return {
        "source": dataset.source,
        "fingerprint": dataset.fingerprint,
        "classes": dataset.classes,
        "num_images": len(dataset),
    }


def _plot_curves(run_dir: Path, history: list[dict], cfg: TrainConfig) -> None:
    """curves.png in the run folder; a plotting failure must never lose a finished run."""
    try:
        from .plots import save_training_curves

        title = f"{cfg.recipe}: {run_dir.name}"
        save_training_curves(history, run_dir / "curves.png", title, cfg.label_smoothing)
    except Exception as exc:
        log.warning("could not plot the training curves: %s", exc)


# ---------------------------------------------------------------- the loop
def train(cfg: TrainConfig, *, progress: bool = True, resume: str | os.PathLike | None = None):
    """Train per ``cfg`` and write the run folder; returns a ``TrainResult``."""
    started = time.perf_counter()
    run_dir = Path(resume or cfg.out or default_run_dir(cfg.recipe))
    device = resolve_device(cfg.device)
    ctx = DistContext.from_env(device.type)
    # One process per run folder: a second train/--resume into it is refused clearly.
    lock = RunLock(run_dir) if ctx.is_main else None
    try:
        return _train(cfg, run_dir, device, ctx, started, progress=progress, resume=resume)
    finally:
        if lock is not None:
            lock.release()


def _train(
    cfg, run_dir: Path, device, ctx, started: float, *, progress: bool, resume
) -> TrainResult | None:
    checkpoint = None
    if resume is not None:
        last = run_dir / "last.pt"
        if not last.is_file():
            raise UserInputError(f"nothing to resume: {last} does not exist")
        checkpoint = torch.load(last, map_location="cpu", weights_only=True)
        cfg = TrainConfig.from_dict(checkpoint["config"])
        cfg.out = str(run_dir)
    elif finetune.is_transfer(cfg):
        cfg = finetune.prepare_config(cfg)
    if device.type == "cuda" and ctx.world > 1:
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    elif ctx.world > 1 and device.type == "cpu":
        # N processes on one machine would each grab every core: share them out instead.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    amp_dtype = resolve_precision(device, cfg.precision)
    scaler = torch.amp.GradScaler("cuda", enabled=amp_dtype == torch.float16)
    show = progress and ctx.is_main

    # ---- data: everything stays one uint8 tensor; batches are sliced from it
    dataset = load_dataset(cfg.data, image_size=cfg.image_size, progress=show)
    split = make_split(dataset, cfg.split, cfg.seed, cfg.val_size, cfg.subset)
    images = torch.from_numpy(dataset.images)
    labels = torch.from_numpy(dataset.labels)
    train_idx = torch.from_numpy(split.train)
    x_train, y_train = images[train_idx], labels[train_idx]
    n_classes = len(dataset.classes)
    if checkpoint is None:
        cfg, notes = adapt_to_data(cfg, len(x_train))
        for note in notes:
            log.info("small dataset: %s (set it explicitly to override)", note)
    if show:
        log.info("%s", finetune.describe_counts(dataset, split))
    loss_weight = finetune.class_weights(y_train.numpy(), n_classes, cfg.class_weights)
    if loss_weight is not None:
        loss_weight = loss_weight.to(device)

    # ---- model
    torch.manual_seed(cfg.seed)
    transfer = finetune.is_transfer(cfg)
    if transfer:
        model, norm, bundle_fields = finetune.start_model(cfg, dataset.classes)
        mean, std = norm["mean"], norm["std"]
    else:
        mean, std = channel_stats(x_train.numpy())
        model = build(cfg.architecture, n_classes, cfg.image_size, **cfg.arch_kwargs)
        bundle_fields = {"architecture": cfg.architecture, "arch_kwargs": cfg.arch_kwargs}
    normalizer = Normalizer(mean, std)
    if hasattr(model, "init_whitening") and not transfer:
        # Whitening from the first 5,000 training images: a deterministic, cheap estimate.
        model.init_whitening(normalizer(x_train[:5000]))
    model = model.to(device, memory_format=torch.channels_last)
    whiten_bias = getattr(getattr(model, "whiten", None), "bias", None)
    optimizer = finetune.make_optimizer(model, cfg) if transfer else make_optimizer(model, cfg)
    lookahead = [p.detach().clone() for p in model.parameters()] if cfg.lookahead else None

    steps_per_epoch = math.ceil(len(x_train) / cfg.batch_size)
    total_steps = steps_per_epoch * cfg.epochs
    state = {
        "epoch": 0,
        "step": 0,
        "history": [],
        "lr_factor": 1.0,
        "best_val_loss": float("inf"),
        "best_epoch": 0,
        "bad_epochs": 0,
        "stopped_early": False,
    }
    best_state = None
    if checkpoint is not None:
        model.load_state_dict(checkpoint["model"])
        optimizer.load_state_dict(checkpoint["optimizer"])
        state.update(checkpoint["state"])
        if lookahead is not None:
            for buf, saved in zip(lookahead, checkpoint["lookahead"], strict=True):
                buf.copy_(saved)
        if (run_dir / "best.pt").is_file():
            best_state = torch.load(run_dir / "best.pt", map_location="cpu", weights_only=True)
        if show:
            log.info("resuming %s after epoch %d of %d", run_dir, state["epoch"], cfg.epochs)

    net: nn.Module = model
    if ctx.world > 1:
        net = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None
        )
    if ctx.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        config_record = {
            "config": cfg.to_dict(),
            "split": split.describe(),
            "data": _fingerprint(dataset),
            "normalization": {"mean": mean, "std": std},
            "device": str(device),
            "precision": str(amp_dtype).replace("torch.", "") if amp_dtype else "fp32",
            "threads": torch.get_num_threads(),
            "world_size": ctx.world,
        }
        write_text_atomic(run_dir / "config.json", json.dumps(config_record, indent=2))
        np.savez(run_dir / "split.npz", train=split.train, val=split.val, test=split.test)

    val_idx = torch.from_numpy(split.val)
    x_val, y_val = images[val_idx], labels[val_idx]

    def evaluate(x, y, tta=False):
        logits = predict_logits(
            model,
            x,
            normalizer,
            batch_size=cfg.eval_batch_size,
            tta=tta,
            device=device,
            amp_dtype=amp_dtype,
        )
        return evaluate_logits(logits, y)

    if transfer and checkpoint is None:
        # fastai-style: the new head first, fitted on the frozen backbone's embeddings.
        record = finetune.fit_head(
            model, normalizer, x_train, y_train, x_val, y_val, n_classes, cfg,
            weight=loss_weight, device=device, amp_dtype=amp_dtype, progress=show,
        )  # fmt: skip
        state["history"].append(record)
        if ctx.is_main:
            _write_history(run_dir, state["history"])
        if record["val_loss"] is not None:  # the fine-tune must beat the head to replace it
            state["best_val_loss"] = record["val_loss"]
            best_state = copy.deepcopy(model.state_dict())
        if show:
            log.info(
                "head fitted on frozen features: train acc %.4f  val acc %s  %.1fs",
                record["train_acc"], record["val_acc"], record["seconds"],
            )  # fmt: skip

    # ---- epochs (none for --freeze-backbone: the head fit above is the whole training)
    while state["epoch"] < cfg.epochs and not state["stopped_early"] and not cfg.freeze_backbone:
        epoch = state["epoch"]
        epoch_start = time.perf_counter()
        gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
        torch.manual_seed(cfg.seed * 7_919 + epoch)  # dropout and other in-model randomness
        if whiten_bias is not None:
            whiten_bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
        net.train()
        loss_sum = torch.zeros((), dtype=torch.float64)
        correct = torch.zeros((), dtype=torch.int64)
        seen = 0
        bar = tqdm(
            total=steps_per_epoch,
            desc=f"epoch {epoch + 1}/{cfg.epochs}",
            leave=False,
            disable=not show,
            unit="step",
            dynamic_ncols=True,
        )
        for step_in_epoch, idx in enumerate(
            batch_indices(len(x_train), cfg.batch_size, shuffle=True, gen=gen)
        ):
            idx = idx[ctx.rank :: ctx.world]  # each process takes its share of the batch
            x = normalizer(x_train[idx], device)
            x = augment_batch(x, train_idx[idx], epoch, cfg.augment, gen, cfg.seed)
            y = y_train[idx].to(device)
            multiplier = schedule_multiplier(cfg, state["step"], total_steps) * state["lr_factor"]
            for group in optimizer.param_groups:
                group["lr"] = group.get("base_lr", cfg.lr) * multiplier
            with autocast(device, amp_dtype):
                logits = net(x)
                loss_each = F.cross_entropy(
                    logits.float(),
                    y,
                    weight=loss_weight,
                    label_smoothing=cfg.label_smoothing,
                    reduction="none",
                )
                loss = (
                    loss_each.sum() * ctx.world if cfg.loss_reduction == "sum" else loss_each.mean()
                )
                penalty = getattr(model, "l2_penalty", lambda: None)()
                if penalty is not None:
                    loss = loss + penalty
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            state["step"] += 1
            if lookahead is not None and state["step"] % LOOKAHEAD_EVERY == 0:
                # Lookahead: pull weights toward a slow average; the decay ramps up late in
                # training so the final weights are a smoothed average (airbench).
                _lookahead_sync(
                    lookahead, model, 0.95**LOOKAHEAD_EVERY * (state["step"] / total_steps) ** 3
                )
            with torch.no_grad():
                loss_sum += loss_each.detach().double().sum().cpu()
                correct += (logits.argmax(1) == y).sum().cpu()
            seen += len(idx)
            if show and (step_in_epoch % 10 == 0 or step_in_epoch == steps_per_epoch - 1):
                bar.set_postfix(
                    loss=f"{loss_sum.item() / max(seen, 1):.3f}",
                    acc=f"{correct.item() / max(seen, 1):.3f}",
                    refresh=False,
                )
            bar.update(1)
        bar.close()
        if ctx.world > 1:  # every process saw its share of each batch: report the whole epoch
            totals = torch.tensor([loss_sum.item(), float(correct.item()), float(seen)])
            dist.all_reduce(totals)
            loss_sum, correct, seen = totals[0], totals[1], int(totals[2].item())
        if not math.isfinite(loss_sum.item()):
            raise UserInputError(
                f"training diverged in epoch {epoch + 1} (loss is not finite); try a lower --lr"
            )

        val = (
            evaluate(x_val, y_val)
            if len(x_val)
            else {"loss": float("nan"), "accuracy": float("nan")}
        )
        lr_now = (
            cfg.lr * schedule_multiplier(cfg, state["step"] - 1, total_steps) * state["lr_factor"]
        )
        record = {
            "epoch": epoch + 1,
            "train_loss": round(loss_sum.item() / max(seen, 1), 6),
            "train_acc": round(correct.item() / max(seen, 1), 6),
            "val_loss": round(val["loss"], 6) if math.isfinite(val["loss"]) else None,
            "val_acc": round(val["accuracy"], 6) if math.isfinite(val["accuracy"]) else None,
            "lr": lr_now,
            "seconds": round(time.perf_counter() - epoch_start, 3),
        }
        state["history"].append(record)
        state["epoch"] = epoch + 1

        # ---- ReduceLROnPlateau / EarlyStopping, both on val_loss like Keras
        improved = math.isfinite(val["loss"]) and val["loss"] < state["best_val_loss"] - 1e-12
        if improved:
            state["best_val_loss"] = val["loss"]
            state["best_epoch"] = epoch + 1
            state["bad_epochs"] = 0
            best_state = copy.deepcopy(model.state_dict())
        elif math.isfinite(val["loss"]):
            state["bad_epochs"] += 1
            if cfg.schedule == "plateau" and state["bad_epochs"] % cfg.plateau_patience == 0:
                state["lr_factor"] = max(
                    state["lr_factor"] * cfg.plateau_factor, cfg.min_lr / cfg.lr
                )
            if cfg.early_stopping and state["bad_epochs"] >= cfg.early_stopping:
                state["stopped_early"] = True

        if ctx.is_main:
            if improved:
                _save_torch(best_state, run_dir / "best.pt")
            _save_torch(
                {
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "state": state,
                    "lookahead": lookahead or [],
                    "config": cfg.to_dict(),
                },
                run_dir / "last.pt",
            )
            _write_history(run_dir, state["history"])
            val_text = (
                f"val_loss {record['val_loss']:.4f}  val_acc {record['val_acc']:.4f}  "
                if record["val_loss"] is not None
                else ""
            )
            log.info(
                "epoch %d/%d  loss %.4f  acc %.4f  %slr %.3g  %.1fs%s",
                epoch + 1,
                cfg.epochs,
                record["train_loss"],
                record["train_acc"],
                val_text,
                lr_now,
                record["seconds"],
                "  (early stop)" if state["stopped_early"] else "",
            )
        ctx.barrier()

    # ---- finish: restore best, evaluate once on test, write the bundle
    if lookahead is not None:
        _lookahead_sync(lookahead, model, 1.0)  # end on the slow weights
    if cfg.restore_best and best_state is not None:
        model.load_state_dict(best_state)
        if transfer and not state["best_epoch"] and state["epoch"] and ctx.is_main:
            log.info("fine-tuning never beat the head fit on val loss: keeping the head fit")
    train_seconds = time.perf_counter() - started
    result = None
    if ctx.is_main:
        test_idx = torch.from_numpy(split.test)
        x_test, y_test = images[test_idx], labels[test_idx]
        metrics: dict = {"train_seconds": round(train_seconds, 2)}
        if len(x_val):
            metrics["val"] = evaluate(x_val, y_val)
            if cfg.tta:  # tuning decisions read val (with TTA); test is only reported
                metrics["val_tta"] = evaluate(x_val, y_val, tta=True)
        if len(x_test):
            metrics["test"] = evaluate(x_test, y_test)
            if cfg.tta:
                metrics["test_tta"] = evaluate(x_test, y_test, tta=True)
        metrics["epochs_run"] = state["epoch"]
        metrics["best_epoch"] = state["best_epoch"] or state["epoch"]
        bundle_path = run_dir / "model.safetensors"
        save_bundle(
            bundle_path,
            model.state_dict(),
            {
                "name": f"{cfg.recipe}",
                "architecture": bundle_fields["architecture"],
                "arch_kwargs": bundle_fields["arch_kwargs"],
                "start": bundle_fields.get("start"),
                "classes": dataset.classes,
                "input_size": cfg.image_size,
                "normalization": {"mean": mean, "std": std},
                "preprocessing": {"resize": "whole frame squashed to the input size"},
                "recipe": cfg.recipe,
                "config": cfg.to_dict(),
                "data": _fingerprint(dataset),
                "split": split.describe(),
                "metrics": metrics,
            },
        )
        seconds = time.perf_counter() - started
        metrics["wall_seconds"] = round(seconds, 2)
        write_text_atomic(run_dir / "metrics.json", json.dumps(metrics, indent=2))
        _plot_curves(run_dir, state["history"], cfg)
        result = TrainResult(run_dir, bundle_path, state["history"], metrics, seconds)
    ctx.barrier()
    return result
