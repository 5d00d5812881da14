"""``imageclf tune``: search a recipe's hyperparameters on the validation set (Optuna).

Each trial is an ordinary training run in ``<run>/trials/NNNN``. It reports validation
accuracy after every epoch, so unpromising trials stop early (median or successive
halving pruning); the test split is never evaluated. The study lives in SQLite in the
run folder, or in any Optuna storage URL that several workers share, so an interrupted
search resumes where it stopped. The end product is ``best.json``, a recipe file that
``imageclf train --recipe`` accepts, plus plots and a table of every trial.

This module is the search itself (``tune`` and one trial); the study's settings and
storage are in ``study.py``, the table, plots and best.json in ``results.py``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from ..data import Dataset, Split
from ..errors import TrainingDiverged, UserInputError, import_extra
from ..fileio import write_text_atomic
from ..training import train
from ..training.config import TrainConfig
from ..training.resolve import resolve
from ..training.tracking import Tracking, parent_run
from .results import (
    TuneResult,
    has_complete,
    table_header,
    table_row,
    trial_row,
    write_results,
)
from .space import SPACES, Space, validate
from .study import (
    SETTINGS_FILE,
    base_recipe,
    check_same_study,
    load_settings,
    make_pruner,
    mark_worker,
    open_study,
    recipe_changes,
    requeue_interrupted,
)

log = logging.getLogger("imageclf.tune")


def _optuna():
    """Optuna, or one line naming the extra that installs it."""
    return import_extra("optuna", "tune", "imageclf tune")


@contextlib.contextmanager
def _quiet(*names: str) -> Iterator[None]:
    """Silence chatty loggers (the training loop's per-epoch lines) during trials."""
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    for lg in loggers:
        lg.setLevel(logging.WARNING)
    try:
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def schedule_step(epoch: int, epochs: int, epochs_cap: int) -> int:
    """Where a trial reports: its position in its own schedule, on a 1..epochs_cap scale.

    Learning-rate schedules stretch with the epoch count (fast's warmup-linear decays
    to zero at the last epoch), so epoch 2 of a 4-epoch trial is as far along as epoch
    4 of an 8-epoch one: pruning compares trials at equal schedule positions, never a
    long trial's early epochs with a short trial's annealed ones.
    """
    return round(epoch * epochs_cap / epochs)


# ---------------------------------------------------------------- the search
def tune(
    recipe: str = "fast",
    *,
    data: str | os.PathLike | None = None,
    trials: int | None = None,
    timeout: float | None = None,
    study: str | None = None,
    space: str | os.PathLike | dict | None = None,
    storage: str | None = None,
    pruner: str = "median",
    epochs: int | None = None,
    subset: int | None = None,
    split: str | None = None,
    val_size: int | None = None,
    seed: int = 0,
    device: str | None = None,
    threads: int | None = None,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    track: str | list[str] | tuple[str, ...] | None = None,
    objective: str | None = None,
    table: dict | None = None,
) -> TuneResult:
    """Search ``recipe``'s space for the best validation accuracy; see the module doc.

    ``trials`` is the study's total (default 20): workers sharing ``storage`` stop
    together, and ``resume`` (a run folder) runs only the trials still missing.
    ``epochs`` caps the epochs of every trial (default: the recipe's).
    ``track``: as for train; MLflow gets one parent run, each trial a child of it.
    ``objective``: what trials maximise on validation: accuracy (single-label data), or for
    multi-label data ``map`` (mean average precision, the default) or ``macro_f1``.
    ``table``: how a labels table is read (``data.table_rules.TableOptions``), as for train.
    """
    optuna = _optuna()
    started = time.perf_counter()
    run_dir, settings = load_settings(
        resume, recipe=recipe, data=None if data is None else str(data), trials=trials,
        timeout=timeout, study=study, space=space, storage=storage, pruner=pruner,
        epochs=epochs, subset=subset, split=split, val_size=val_size, seed=seed,
        device=device, threads=threads, out=out, objective=objective, table=table,
    )  # fmt: skip
    if settings["trials"] < 1:
        raise UserInputError("--trials must be at least 1")
    plan = _plan(settings)
    pruner_ = make_pruner(optuna, settings["pruner"], settings["trials"], plan.epochs_cap)
    dataset, split_ = _load_data(plan.cfg, progress)
    # "objective" is absent from the tune.json of studies begun before multi-label data.
    plan = dataclasses.replace(plan, metric=objective_metric(dataset, settings.get("objective")))
    study_ = _start_study(optuna, run_dir, settings, plan, pruner_, dataset, split_, resume)
    data_record = {"source": dataset.source, "fingerprint": dataset.fingerprint}
    with parent_run(track, run_dir, settings, data_record, resume is not None) as tracked:
        plan = dataclasses.replace(plan, track=tracked)
        interrupted = _run_trials(optuna, study_, plan, run_dir, settings, dataset, split_,
                                  progress)  # fmt: skip
        result = write_results(optuna, study_, plan.space, plan.cfg, plan.base, run_dir, started)
        if interrupted:
            log.warning(
                "interrupted: finished trials are saved in the study; continue with "
                "imageclf tune --resume %s",
                run_dir,
            )
            raise KeyboardInterrupt
    return result


@dataclass(frozen=True)
class _Plan:
    """What the study searches: the recipe every trial starts from and the space around it."""

    base: str  # the built-in recipe underneath (a recipe file names one)
    cfg: TrainConfig
    epochs_cap: int
    declared: dict  # the space as written: the study records it
    space: Space
    track: Tracking | None = None  # what each trial reports to (--track)
    metric: str = "accuracy"  # the key of metrics["val"] trials maximise (objective_metric)


def _plan(settings: dict) -> _Plan:
    """The recipe's config and its validated space; a bad space fails before any data loads."""
    base, recipe_space = base_recipe(settings["recipe"])
    cfg = resolve(
        settings["recipe"], data=settings["data"], split=settings["split"],
        val_size=settings["val_size"], subset=settings["subset"], seed=settings["seed"],
        device=settings["device"], threads=settings["threads"], epochs=settings["epochs"],
        table=settings.get("table"),  # absent from studies begun before labels tables
    )  # fmt: skip
    epochs_cap = cfg.epochs
    # --epochs is the cap by definition: the small-data adaptation must not raise it.
    cfg = dataclasses.replace(cfg, user_set=sorted({*cfg.user_set, "epochs"}))
    declared = settings["space"] or recipe_space or SPACES.get(base)
    if declared is None:
        raise UserInputError(f"the {base} recipe declares no search space: pass --space FILE")
    source = "--space" if settings["space"] else "the recipe's space"
    space_ = validate(declared, cfg, epochs_cap, source)
    if not space_.searched:
        raise UserInputError(f"bad search space in {source}: every value is fixed")
    return _Plan(base, cfg, epochs_cap, declared, space_)


def _load_data(cfg: TrainConfig, progress: bool) -> tuple[Dataset, Split]:
    """Load the data once up front: a bad path or split fails before any trial."""
    from ..data import load_dataset, make_split

    dataset = load_dataset(cfg.data, image_size=cfg.image_size, progress=progress,
                           table=cfg.table)  # fmt: skip
    split_ = make_split(dataset, cfg.split, cfg.seed, cfg.val_size, cfg.subset)
    if not len(split_.val):
        raise UserInputError("tuning needs a validation set: --val-size must be above 0")
    return dataset, split_


# The per-epoch history key pruning compares, per objective: thresholds (and so F1) exist
# only at the end of a trial, so a macro-F1 study prunes on the epoch's validation mAP.
PRUNED_ON = {"accuracy": "val_acc", "map": "val_map", "macro_f1": "val_map"}


def objective_metric(dataset: Dataset, objective: str | None) -> str:
    """What trials maximise: ``accuracy`` for single-label data; multi-label data ``map``
    (the default) or ``macro_f1`` at the thresholds fitted at the end of the trial."""
    multi = bool(getattr(dataset, "multi_label", False))
    choices = ("map", "macro_f1") if multi else ("accuracy",)
    chosen = objective or choices[0]
    if chosen not in choices:
        kind = "multi-label" if multi else "single-label"
        raise UserInputError(
            f"--objective {chosen!r} does not apply to {kind} data; choose {', '.join(choices)}"
        )
    return chosen


def _start_study(
    optuna, run_dir: Path, settings: dict, plan: _Plan, pruner, dataset: Dataset, split_: Split,
    resume,
):  # fmt: skip
    """Open or join the study (it must search what this call searches), write tune.json,
    queue the recipe's own settings first in a new study, and seed the sampler."""
    data_record = {"source": dataset.source, "fingerprint": dataset.fingerprint}
    run_dir.mkdir(parents=True, exist_ok=True)
    # ERROR: a Ctrl-C would otherwise print a failed-trial traceback before our one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study_, created = open_study(optuna, settings["storage"], settings["study"], pruner)
    first = check_same_study(
        study_,
        {
            "base": plan.base,
            "config": recipe_changes(plan.cfg, plan.base),
            "space": plan.declared,
            "epochs_cap": plan.epochs_cap,
            "data": data_record,
            "split": split_.describe(),
        },
        created,
    )
    write_text_atomic(run_dir / SETTINGS_FILE, json.dumps(settings, indent=2))
    if first and not study_.get_trials(deepcopy=False):
        baseline = plan.space.current(plan.cfg)
        if baseline:
            study_.enqueue_trial(baseline, user_attrs={"baseline": True})
            log.info("the first trial runs the recipe's own settings (the baseline)")
    existing = len(study_.get_trials(deepcopy=False))
    # The first worker draws from --seed. One that joins or resumes has a seed of its own:
    # workers started together see the same history and would draw the same settings.
    seed = settings["seed"] + existing if first else int.from_bytes(os.urandom(4), "little")
    study_.sampler = optuna.samplers.TPESampler(
        seed=seed, n_startup_trials=max(3, min(10, settings["trials"] // 3))
    )
    if resume is not None:
        requeue_interrupted(optuna, study_)
    return study_


def _run_trials(
    optuna, study_, plan: _Plan, run_dir: Path, settings: dict, dataset: Dataset, split_: Split,
    progress: bool,
) -> bool:  # fmt: skip
    """The trials still missing from the study's total, one table row each as they end;
    True when Ctrl-C cut the search short."""
    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study_.get_trials(deepcopy=False, states=finished_states))
    remaining = settings["trials"] - finished
    names = plan.space.searched
    log.info(
        "study %r: %d of %d trials done; %s on %s (%d train / %d val images), up to %d epochs",
        settings["study"], finished, settings["trials"], settings["recipe"], dataset.source,
        len(split_.train), len(split_.val), plan.epochs_cap,
    )  # fmt: skip
    if plan.metric != "accuracy":  # the table's val_acc column then holds this metric
        log.info("objective: validation %s (multi-label data)", plan.metric)
    log.info("%s", table_header(names))

    def objective(trial) -> float:
        mark_worker(trial)  # a killed worker's trial is then known on resume
        params = plan.space.suggest(trial)
        trial_cfg = plan.space.apply(plan.cfg, params)
        # TTA only changes the reported metric, not the model: trials skip its cost.
        trial_cfg = dataclasses.replace(trial_cfg, tta=False)
        trial_cfg.out = str(run_dir / "trials" / f"{trial.number:04d}")
        return _run_trial(
            optuna, trial, trial_cfg, plan.epochs_cap, progress, plan.track, plan.metric
        )

    def show_row(study, trial) -> None:
        best = study.best_value if has_complete(study) else None
        log.info("%s", table_row(trial_row(trial, best), names))

    if remaining <= 0:
        return False
    with _quiet("imageclf.train"):
        try:
            study_.optimize(
                objective,
                n_trials=remaining,
                timeout=settings["timeout"],
                callbacks=[
                    optuna.study.MaxTrialsCallback(settings["trials"], states=finished_states),
                    show_row,
                ],
            )
        except KeyboardInterrupt:
            return True
    return False


def _run_trial(
    optuna, trial, cfg: TrainConfig, epochs_cap: int, progress: bool, track: Tracking | None = None,
    metric: str = "accuracy",
) -> float:  # fmt: skip
    """One training run that reports val accuracy (multi-label: val mAP) per epoch and
    stops when pruned; returns the final model's validation ``metric``."""
    key = PRUNED_ON[metric]
    bar = tqdm(
        total=cfg.epochs,
        desc=f"trial {trial.number}",
        unit="epoch",
        leave=False,
        disable=not progress,
        dynamic_ncols=True,
    )

    def report(record: dict) -> None:
        bar.update(1)
        if record.get(key) is None:  # no validation positive for any label: nothing to report
            return
        bar.set_postfix({key: f"{record[key]:.4f}"})
        trial.report(record[key], schedule_step(record["epoch"], cfg.epochs, epochs_cap))
        trial.set_user_attr("epochs_run", record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}: {key} {record[key]:.4f}")

    try:
        result = train(cfg, progress=False, on_epoch_end=report, evaluate_test=False, track=track)
    except TrainingDiverged as exc:
        # Too high a learning rate is an answer, not an error: prune and move on.
        trial.set_user_attr("diverged", str(exc))
        raise optuna.TrialPruned(str(exc)) from None
    finally:
        bar.close()
    return result.metrics["val"][metric]
