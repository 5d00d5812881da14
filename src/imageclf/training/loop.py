"""Training: a driver that reads top to bottom, calling one named step at a time.

    runtime -> data -> start (scratch / pretrained / bundle) -> parts -> (resume, or the
    head first) -> epochs: [one epoch -> validate -> decide (plateau / early stop) ->
    checkpoint] -> finish (test, bundle)

Every epoch draws its randomness from ``(seed, epoch)``, and a checkpoint is
written atomically after each epoch, so ``resume(run_dir)`` after a crash or
Ctrl-C replays the remaining epochs exactly as an uninterrupted run would.
Under ``torchrun`` it trains data-parallel (DDP); only rank 0 writes files.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..data.loader import batch_indices
from ..device import DistContext, Runtime, setup_runtime
from ..errors import TrainingDiverged
from ..fileio import RunLock
from . import finetune, tracking
from .adapt import adapt_to_data
from .config import TrainConfig
from .eta import Eta
from .finish import command_line, finish
from .job import EpochHook, Job
from .multilabel import correct_count
from .optim import schedule_multiplier, set_learning_rate
from .parts import Parts, describe_counts
from .resolve import resolve
from .runs import (
    Checkpoint,
    Run,
    RunState,
    default_run_dir,
    history_record,
    save_torch,
    write_history,
    write_run_record,
)
from .start import Start, start_for
from .step import optimizer_step, training_batch
from .train_data import TrainData

log = logging.getLogger("imageclf.train")


# ---------------------------------------------------------------- public entry points
def train(
    config: TrainConfig | None = None,
    *,
    progress: bool = True,
    on_epoch_end: EpochHook | None = None,
    evaluate_test: bool = True,
    track: tracking.Tracking | str | list[str] | None = None,
    **overrides,
) -> Run | None:
    """Train and write a run folder; returns the ``Run`` (``None`` on DDP ranks but 0).

    Pass a ``TrainConfig``, or keyword overrides of a recipe:
    ``train(recipe="fast", data="images/", epochs=3)``.
    ``on_epoch_end(record)`` runs on rank 0 after each epoch's checkpoint with that
    epoch's history record (the tuner reports val_acc through it; an exception it
    raises stops the run). ``evaluate_test=False`` never touches the test split.
    ``track``: "tensorboard" and/or "mlflow" (training.tracking; a resume keeps them).
    """
    if config is None:
        config = resolve(overrides.pop("recipe", "fast"), **overrides)
    elif overrides:
        raise TypeError("pass a TrainConfig or keyword overrides of a recipe, not both")
    run_dir = Path(config.out or default_run_dir(config.recipe))
    start = start_for(config)
    config = start.prepare(config)  # e.g. the architecture the weights belong to
    return _run(config, start, run_dir, None, progress, on_epoch_end, evaluate_test, track)


def resume(run_dir: str | os.PathLike, *, progress: bool = True) -> Run | None:
    """Continue an interrupted run from its ``last.pt``, with the config it was started with."""
    dist = DistContext.from_env()  # under torchrun: rank 0's checkpoint, sent to every node
    with dist.peers_watched():
        checkpoint = Checkpoint.load(run_dir, dist)
    config = TrainConfig.from_dict(checkpoint.config)  # already prepared by its start
    config.out = str(run_dir)
    return _run(config, start_for(config), Path(run_dir), checkpoint, progress)


# ---------------------------------------------------------------- the driver
def _run(
    cfg: TrainConfig,
    start: Start,
    run_dir: Path,
    checkpoint: Checkpoint | None,
    progress: bool,
    on_epoch_end: EpochHook | None = None,
    evaluate_test: bool = True,
    track: tracking.Tracking | str | list[str] | None = None,
):
    started = time.perf_counter()
    rt = setup_runtime(cfg.device, cfg.precision, cfg.threads, cfg.depthwise)
    # One process per run folder: a second train or resume into it is refused clearly.
    lock = RunLock(run_dir) if rt.dist.is_main else None
    try:
        show = progress and rt.dist.is_main
        # A node that dies or goes silent stops the others with one clear line.
        with rt.dist.peers_watched(resume_from=run_dir):
            cfg, data, parts = _build(cfg, start, checkpoint is None, rt, show)
            job = Job(
                cfg, run_dir, rt, start, data, parts, show, started, evaluate_test, on_epoch_end
            )
            resumed = checkpoint.state.epoch if checkpoint is not None else None
            with tracking.opened(track, run_dir, cfg.to_dict(), data.dataset, resumed,
                                 rt.dist.is_main) as job.tracker:  # fmt: skip
                return _drive(job, checkpoint)
    finally:
        if lock is not None:
            lock.release()


def _build(
    cfg: TrainConfig, start: Start, fresh: bool, rt: Runtime, show: bool
) -> tuple[TrainConfig, TrainData, Parts]:
    """The data, the config adapted to its size (a fresh run only), and the parts."""
    data = TrainData.load(cfg, show)
    rt.dist.check_same(data.digest, "the data")  # each node may read its own copy
    if fresh:
        cfg, notes = adapt_to_data(cfg, len(data.x_train), start.min_steps)
        for note in notes:
            log.info("small dataset: %s (set it explicitly to override)", note)
    if show:
        log.info("%s", describe_counts(data.dataset, data.split))
        if data.twins is not None:  # one line; the pairs go to duplicates.json
            dropped = f"; --dedupe dropped {len(data.twins.training_copies())} training " \
                "copies" if cfg.dedupe else ""  # fmt: skip
            log.info("%s%s", data.twins.summary(), dropped)
    return cfg, data, Parts.build(cfg, data, rt, start)


def _drive(job: Job, checkpoint: Checkpoint | None) -> Run | None:
    cfg, data, parts, rt = job.cfg, job.data, job.parts, job.rt
    if checkpoint is not None:
        job.state, job.best = parts.restore(checkpoint, job.run_dir)
        # The run's clock goes on from the checkpoint: the bundle's train_seconds and the
        # estimate count every process's time, not only this one's.
        job.started -= job.state.wall_seconds
        if job.show:
            log.info("resuming %s after epoch %d of %d", job.run_dir, job.state.epoch, cfg.epochs)
    else:  # what makes the model again is the command that began the run, not a resume
        job.state = dataclasses.replace(job.state, command=command_line())
    if rt.dist.is_main:
        norm = {"mean": data.mean, "std": data.std}
        write_run_record(job.run_dir, cfg, data.dataset, data.split, norm, rt)
        if data.twins is not None:
            data.twins.write(job.run_dir / "duplicates.json", data.dataset)
    if job.start.fits_head_first and checkpoint is None:
        _fit_head(job)
    if rt.dist.is_main:  # one overall estimate a few steps in, the time left on each epoch line
        job.eta = Eta(
            started=job.started, epochs=cfg.epochs, epochs_done=job.state.epoch,
            steps_per_epoch=data.steps_per_epoch(cfg), batch_size=cfg.batch_size,
            n_val=len(data.x_val), tta=cfg.tta,
            n_final=len(data.x_val) + (len(data.split.test) if job.evaluate_test else 0),
        )  # fmt: skip

    # --freeze-backbone: the head fit above is the whole training.
    while job.state.epoch < cfg.epochs and not job.state.stopped_early and not cfg.freeze_backbone:
        epoch_start = time.perf_counter()
        loss, acc, steps = train_one_epoch(job)
        val_start = time.perf_counter()
        train_seconds = job.state.train_seconds + val_start - epoch_start
        val = parts.score(cfg, data.x_val, data.y_val, rt) if len(data.x_val) else None
        left = job.eta.epoch_done(val_start - epoch_start, time.perf_counter() - val_start) \
            if job.eta is not None else None  # fmt: skip
        lr = cfg.lr * schedule_multiplier(cfg, steps - 1, job.total_steps) * job.state.lr_factor
        record = history_record(job.state.epoch + 1, loss, acc, val, lr, epoch_start)
        state = dataclasses.replace(
            job.state,
            epoch=job.state.epoch + 1,
            step=steps,
            history=[*job.state.history, record],
            train_seconds=train_seconds,
            wall_seconds=time.perf_counter() - job.started,
        )
        job.state, improved = after_epoch(state, val["loss"] if val else math.nan, cfg)
        if improved:
            job.best = parts.kept_weights()  # the averaged weights under --ema
        if rt.dist.is_main:
            _checkpoint(job, new_best=job.best if improved else None)
            _log_epoch(cfg, record, job.state, left)
            job.tracker.history(job.state.history)  # --track: the epochs not reported yet
            if job.on_epoch_end is not None:
                job.on_epoch_end(record)
        rt.dist.barrier()

    return finish(job)


# ---------------------------------------------------------------- one epoch
def train_one_epoch(job: Job) -> tuple[float, float, int]:
    """One pass over the training images; returns (mean loss, accuracy, steps taken so far)."""
    cfg, parts, data, rt = job.cfg, job.parts, job.data, job.rt
    epoch, step, total_steps = job.state.epoch, job.state.step, job.total_steps
    lr_factor = job.state.lr_factor
    gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    torch.manual_seed(cfg.seed * 7_919 + epoch)  # dropout and other in-model randomness
    bias = parts.hooks.whitening_bias()
    if bias is not None:
        bias.requires_grad_(epoch < cfg.whiten_bias_epochs)
    parts.net.train()
    world, rank = rt.dist.world, rt.dist.rank
    loss_sum = torch.zeros((), dtype=torch.float64)
    correct = torch.zeros((), dtype=torch.int64)
    seen = 0
    steps = data.steps_per_epoch(cfg)
    side = cfg.image_size_at(epoch)  # progressive resizing: smaller in the first epochs
    bar = tqdm(
        total=steps, desc=f"epoch {epoch + 1}/{cfg.epochs}", leave=False, disable=not job.show,
        unit="step", dynamic_ncols=True,
    )  # fmt: skip
    batches = batch_indices(len(data.x_train), cfg.batch_size, shuffle=True, gen=gen)
    for step_in_epoch, idx in enumerate(batches):
        idx = idx[rank::world]  # each process takes its share of the batch
        x, y = training_batch(data, parts, cfg, rt, idx, epoch, gen, side)
        set_learning_rate(
            parts.optimizer, cfg, schedule_multiplier(cfg, step, total_steps) * lr_factor
        )
        logits, loss_each = optimizer_step(parts, cfg, rt, parts.net, x, y, world)
        step += 1
        if parts.lookahead is not None:
            parts.lookahead.after_step(step, total_steps)
        if parts.ema is not None:
            parts.ema.update()
        with torch.no_grad():
            loss_sum += loss_each.detach().double().sum().cpu()
            correct += correct_count(logits, y, parts.multi_label).cpu()
        seen += len(idx)
        if job.show and (step_in_epoch % 10 == 0 or step_in_epoch == steps - 1):
            mean_loss, acc = loss_sum.item() / max(seen, 1), correct.item() / max(seen, 1)
            bar.set_postfix(loss=f"{mean_loss:.3f}", acc=f"{acc:.3f}", refresh=False)
        bar.update(1)
        if job.eta is not None:
            job.eta.step(step_in_epoch)
    bar.close()
    # Every process saw its share of each batch: report the whole epoch.
    total_loss, total_correct, total_seen = rt.dist.sum(
        [loss_sum.item(), correct.item(), float(seen)]
    )
    total_seen = int(total_seen)
    if not math.isfinite(total_loss):
        raise TrainingDiverged(
            f"training diverged in epoch {epoch + 1} (loss is not finite); try a lower --lr"
        )
    return total_loss / max(total_seen, 1), total_correct / max(total_seen, 1), step


# ---------------------------------------------------------------- transfer: the head first
def _fit_head(job: Job) -> None:
    """fastai-style: the new head first, fitted on the frozen backbone's embeddings; it is
    the best state so far, so fine-tuning must beat it on val loss to replace it."""
    parts, data, rt = job.parts, job.data, job.rt
    record = finetune.fit_head(
        parts.model, parts.normalizer, data.x_train, data.y_train, data.x_val, data.y_val,
        len(data.dataset.classes), weight=parts.loss_weight, device=rt.device,
        amp_dtype=rt.amp_dtype, progress=job.show,
    )  # fmt: skip
    job.state = dataclasses.replace(job.state, history=[record])
    if record["val_loss"] is not None:
        job.state = dataclasses.replace(job.state, best_val_loss=record["val_loss"], best_epoch=0)
        job.best = copy.deepcopy(parts.model.state_dict())
    if rt.dist.is_main:
        if job.best is not None:  # a resumed run must still find it if nothing beats it
            save_torch(job.best, job.run_dir / "best.pt")
        write_history(job.run_dir, job.state.history)


# ---------------------------------------------------------------- after each epoch
def after_epoch(state: RunState, val_loss: float, cfg: TrainConfig) -> tuple[RunState, bool]:
    """Keras' ReduceLROnPlateau and EarlyStopping, both on val_loss: the next state, and
    whether this epoch is the best so far. Pure: a test can call it on its own."""
    if not math.isfinite(val_loss):  # no validation images: nothing to decide on
        return state, False
    if val_loss < state.best_val_loss - 1e-12:
        improved = dataclasses.replace(
            state, best_val_loss=val_loss, best_epoch=state.epoch, bad_epochs=0
        )
        return improved, True
    bad = state.bad_epochs + 1
    lr_factor = state.lr_factor
    if cfg.schedule == "plateau" and bad % cfg.plateau_patience == 0:
        lr_factor = max(lr_factor * cfg.plateau_factor, cfg.min_lr / cfg.lr)
    stop = state.stopped_early or bool(cfg.early_stopping and bad >= cfg.early_stopping)
    worse = dataclasses.replace(state, bad_epochs=bad, lr_factor=lr_factor, stopped_early=stop)
    return worse, False


def _checkpoint(job: Job, new_best: dict | None) -> None:
    """``best.pt`` when this epoch improved, then ``last.pt`` and the history."""
    if new_best is not None:
        save_torch(new_best, job.run_dir / "best.pt")
    parts = job.parts
    Checkpoint(
        model=parts.model.state_dict(),
        optimizer=parts.optimizer.state_dict(),
        state=job.state,
        lookahead=parts.lookahead.slow if parts.lookahead else [],
        ema=parts.ema.state_dict() if parts.ema else {},
        config=job.cfg.to_dict(),
    ).save(job.run_dir / "last.pt")
    write_history(job.run_dir, job.state.history)


def _log_epoch(cfg: TrainConfig, record: dict, state: RunState, left: str | None = None) -> None:
    val = ""
    if record["val_loss"] is not None:
        val = f"val_loss {record['val_loss']:.4f}  val_acc {record['val_acc']:.4f}  "
        if record.get("val_map") is not None:  # multi-label
            val += f"val_mAP {record['val_map']:.4f}  "
    end = "  (early stop)" if state.stopped_early else (f"  {left}" if left else "")
    log.info(
        "epoch %d/%d  loss %.4f  acc %.4f  %slr %.3g  %.1fs%s",
        record["epoch"], cfg.epochs, record["train_loss"], record["train_acc"], val,
        record["lr"], record["seconds"], end,
    )  # fmt: skip
