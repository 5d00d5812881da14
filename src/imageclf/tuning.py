"""``imageclf tune``: search a recipe's hyperparameters on the validation set (Optuna).

Each trial is an ordinary training run in ``<run>/trials/NNNN``. It reports validation
accuracy after every epoch, so unpromising trials stop early (median or successive
halving pruning); the test split is never evaluated. The study lives in SQLite in the
run folder, or in any Optuna storage URL that several workers share, so an interrupted
search resumes where it stopped. The end product is ``best.json``, a recipe file that
``imageclf train --recipe`` accepts, plus plots and a table of every trial.
"""

from __future__ import annotations

import contextlib
import csv
import dataclasses
import io
import json
import logging
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from . import recipes, search_space
from .errors import UserInputError
from .fileio import write_text_atomic
from .recipes import TrainConfig

log = logging.getLogger("imageclf.tune")

EXTRA_HINT = "imageclf tune needs Optuna: pip install 'imageclf[tune]'"
SETTINGS_FILE = "tune.json"
PRUNERS = ("median", "halving", "none")
# Fields of a recipe that describe the run, not the recipe: never written to best.json.
RUN_FIELDS = {
    "recipe", "data", "split", "val_size", "subset", "image_size", "seed",
    "device", "precision", "threads", "eval_batch_size", "out", "user_set",
}  # fmt: skip


def _optuna():
    """Optuna, or one line naming the extra that installs it."""
    try:
        import optuna
    except ImportError:
        raise UserInputError(EXTRA_HINT) from None
    return optuna


# ---------------------------------------------------------------- result
@dataclass
class TuneResult:
    """What a study found; ``trials`` has one dict per trial (see ``trial_rows``)."""

    run_dir: Path
    study_name: str
    best_trial: int | None
    best_value: float | None
    best_params: dict
    best_recipe: Path | None
    baseline_value: float | None  # val accuracy of the recipe's own settings, if measured
    trials: list[dict]
    plots: list[Path]
    seconds: float

    def table(self) -> str:
        names = list(self.best_params) or sorted({k for t in self.trials for k in t["params"]})
        return "\n".join([table_header(names), *(table_row(t, names) for t in self.trials)])


def _trial_row(trial, best_value: float | None) -> dict:
    """One finished (or running) trial as plain data: the progress table's row."""
    state = trial.state.name.lower()
    if trial.user_attrs.get("diverged"):
        state = "diverged"
    steps = trial.intermediate_values
    seconds = trial.duration.total_seconds() if trial.duration else None
    return {
        "trial": trial.number,
        "baseline": bool(trial.user_attrs.get("baseline")),  # the recipe's own settings
        "state": state,
        "val_acc": trial.value,
        "best": best_value,
        "epochs_run": trial.user_attrs.get("epochs_run"),
        "last": steps[max(steps)] if steps else None,  # val_acc at the last epoch reported
        "seconds": round(seconds, 1) if seconds is not None else None,
        "params": dict(trial.params),
    }


def trial_rows(study) -> list[dict]:
    rows, best = [], None
    for trial in sorted(study.get_trials(deepcopy=False), key=lambda t: t.number):
        complete = trial.state.name == "COMPLETE"  # a pruned trial's value is its last epoch's
        if complete and (best is None or trial.value > best):
            best = trial.value
        rows.append(_trial_row(trial, best))
    return rows


def _fmt(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _width(name: str) -> int:
    return max(len(name), 9)


def table_header(names: list[str]) -> str:
    """``ran``: epochs the trial trained before it finished or was pruned."""
    head = f"{'trial':>5}  {'state':<9}{'val_acc':>8}{'best':>8}{'ran':>5}{'time':>7}"
    return head + "".join(f"  {n:>{_width(n)}}" for n in names)


def table_row(row: dict, names: list[str]) -> str:
    seconds = f"{row['seconds']:.0f}s" if row["seconds"] is not None else "-"
    line = (
        f"{row['trial']:>5}  {row['state']:<9}{_fmt(row['val_acc']):>8}{_fmt(row['best']):>8}"
        f"{_fmt(row['epochs_run']):>5}{seconds:>7}"
    )
    return line + "".join(f"  {_fmt(row['params'].get(n)):>{_width(n)}}" for n in names)


def _write_trials_csv(path: Path, rows: list[dict], names: list[str]) -> None:
    text = io.StringIO()
    writer = csv.writer(text)
    writer.writerow(["trial", "baseline", "state", "val_acc", "epochs_run", "seconds", *names])
    for r in rows:
        values = [r["trial"], r["baseline"], r["state"], r["val_acc"], r["epochs_run"]]
        values.append(r["seconds"])
        writer.writerow(values + [r["params"].get(n) for n in names])
    write_text_atomic(path, text.getvalue())


# ---------------------------------------------------------------- plots
def _plot_history(rows: list[dict], path: Path) -> Path:
    """Validation accuracy per trial, pruned ones at their last epoch, best so far."""
    from .plots import _figure, save

    fig = _figure(7, 4)
    ax = fig.subplots()
    done = [r for r in rows if r["state"] == "complete"]
    ax.scatter([r["trial"] for r in done], [r["val_acc"] for r in done], label="complete", zorder=3)
    pruned = [r for r in rows if r["state"] in ("pruned", "diverged") and r.get("last") is not None]
    if pruned:
        ax.scatter(
            [r["trial"] for r in pruned],
            [r["last"] for r in pruned],
            marker="x",
            color="grey",
            label="pruned (last epoch reported)",
        )
    base = [r for r in done if r["baseline"]]
    if base:
        ax.scatter(
            [r["trial"] for r in base],
            [r["val_acc"] for r in base],
            marker="*",
            s=180,
            color="#2ca02c",
            label="the recipe's own settings",
            zorder=4,
        )
    best = [(r["trial"], r["best"]) for r in rows if r["best"] is not None]
    if best:
        ax.step(*zip(*best, strict=True), where="post", color="#ff7f0e", label="best so far")
    from matplotlib.ticker import MaxNLocator

    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("trial")
    ax.set_ylabel("validation accuracy")
    ax.set_title("Optimisation history")
    ax.grid(alpha=0.3)
    ax.legend(loc="best")
    return save(fig, path)


def _plot_importances(importances: dict[str, float], n_trials: int, path: Path) -> Path:
    from .plots import _figure, save

    names = list(importances)[::-1]  # most important on top
    fig = _figure(7, 0.5 * len(names) + 1.5)
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance for validation accuracy (fANOVA, sums to 1)")
    # fANOVA fits a random forest to the completed trials: few trials, rough estimate.
    ax.set_title(f"Hyperparameter importances ({n_trials} completed trials)")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def _write_plots(optuna, study, rows: list[dict], run_dir: Path) -> list[Path]:
    """history.png always; importances.png once two trials completed with varied settings."""
    plots = [_plot_history(rows, run_dir / "history.png")]
    complete = [r for r in rows if r["state"] == "complete"]
    if len(complete) >= 2:
        try:
            evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
            importances = optuna.importance.get_param_importances(study, evaluator=evaluator)
        except (ValueError, RuntimeError) as exc:
            log.info("no importance plot: %s", exc)
        else:
            if importances:
                plots.append(
                    _plot_importances(importances, len(complete), run_dir / "importances.png")
                )
    return plots


# ---------------------------------------------------------------- settings and study
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


def _base_recipe(recipe: str) -> tuple[str, dict | None]:
    """The built-in recipe under ``recipe`` and the space a recipe file declares, if any."""
    recipes.recipe_values(recipe)  # an unknown name or a bad file fails here, clearly
    if recipe in recipes.RECIPES:
        return recipe, None
    doc = recipes.read_recipe_file(recipe)
    return doc["base"], doc.get("space")


def schedule_step(epoch: int, epochs: int, epochs_cap: int) -> int:
    """Where a trial reports: its position in its own schedule, on a 1..epochs_cap scale.

    Learning-rate schedules stretch with the epoch count (fast's warmup-linear decays
    to zero at the last epoch), so epoch 2 of a 4-epoch trial is as far along as epoch
    4 of an 8-epoch one: pruning compares trials at equal schedule positions, never a
    long trial's early epochs with a short trial's annealed ones.
    """
    return round(epoch * epochs_cap / epochs)


def _make_pruner(optuna, name: str, trials: int, epochs_cap: int = 8):
    if name == "median":
        # Compare from a quarter of the schedule on (the first epochs are noisy), once a
        # few trials have finished.
        return optuna.pruners.MedianPruner(
            n_startup_trials=max(2, min(5, trials // 4)), n_warmup_steps=max(2, epochs_cap // 4)
        )
    if name == "halving":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=2, reduction_factor=3)
    if name == "none":
        return optuna.pruners.NopPruner()
    raise UserInputError(f"unknown pruner {name!r}; choose {', '.join(PRUNERS)}")


def _settings(resume, **given) -> tuple[Path, dict]:
    """The study's settings: from the arguments, or from ``tune.json`` when resuming."""
    if resume is not None:
        run_dir = Path(resume)
        path = run_dir / SETTINGS_FILE
        if not path.is_file():
            raise UserInputError(f"nothing to resume: {path} does not exist")
        settings = json.loads(path.read_text())
        for key in ("trials", "timeout", "device", "threads"):
            if given.get(key) is not None:
                settings[key] = given[key]
        return run_dir, settings
    run_dir = Path(given.pop("out") or Path("runs") / f"tune-{time.strftime('%Y%m%d-%H%M%S')}")
    if (run_dir / SETTINGS_FILE).exists():
        raise UserInputError(
            f"{run_dir} already holds a study; continue it with --resume {run_dir}"
        )
    settings = dict(given)
    settings["trials"] = settings["trials"] or 20
    for key in ("recipe", "data"):  # so --resume works from any directory
        value = settings[key]
        if value is not None and (key == "data" or Path(value).is_file()):
            settings[key] = str(Path(value).resolve())
    space = settings["space"]
    if isinstance(space, str | os.PathLike):
        settings["space"] = search_space.read_space_file(space)
    if settings["storage"] is None:
        settings["storage"] = f"sqlite:///{(run_dir / 'study.db').resolve()}"
    if settings["study"] is None:
        settings["study"] = f"tune-{Path(settings['recipe']).stem}"
    return run_dir, settings


def _open_study(optuna, storage: str, name: str, pruner):
    """Create or join the study; retries the race of two workers creating one new database."""
    from sqlalchemy.exc import SQLAlchemyError

    for attempt in range(6):
        try:
            return optuna.create_study(
                storage=storage,
                study_name=name,
                direction="maximize",
                pruner=pruner,
                load_if_exists=True,
            )
        except SQLAlchemyError as exc:  # e.g. "table alembic_version already exists"
            error = exc
            time.sleep(0.5 * (attempt + 1))
        except (ValueError, ImportError) as exc:  # a malformed URL, a missing driver
            error = exc
            break
    shown = re.sub(r"://([^:/@]+):[^@]*@", r"://\1:***@", storage)  # never print a password
    detail = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
    raise UserInputError(f"cannot open the study storage {shown}: {detail}")


def _check_same_study(study, record: dict) -> bool:
    """Workers sharing a study must search the same space on the same data; True when
    this worker created the study's record (it is the first)."""
    existing = study.user_attrs.get("imageclf")
    if existing is None:
        study.set_user_attr("imageclf", record)
        return True

    def same(key: str, value) -> bool:
        if key == "data":  # the same images may live at another path on another machine
            return (value or {}).get("fingerprint") == record["data"]["fingerprint"]
        return value == record.get(key)

    for key in ("base", "config", "space", "epochs_cap", "data", "split"):
        if not same(key, existing.get(key)):
            raise UserInputError(
                f"study {study.study_name!r} was created with a different {key} "
                f"({json.dumps(existing.get(key))[:120]}); use another --study name"
            )
    return False


def _requeue_interrupted(optuna, study) -> None:
    """Trials cut off by Ctrl-C (failed) run again with the same settings on resume."""
    done = set(study.user_attrs.get("requeued", []))
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    again = [t for t in failed if t.number not in done and t.params]
    for trial in again:
        study.enqueue_trial(trial.params, skip_if_exists=False)
        log.info("trial %d was interrupted: queued again with the same settings", trial.number)
    if again:
        study.set_user_attr("requeued", sorted(done | {t.number for t in again}))


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
) -> TuneResult:
    """Search ``recipe``'s space for the best validation accuracy; see the module doc.

    ``trials`` is the study's total (default 20): workers sharing ``storage`` stop
    together, and ``resume`` (a run folder) runs only the trials still missing.
    ``epochs`` caps the epochs of every trial (default: the recipe's).
    """
    optuna = _optuna()
    started = time.perf_counter()
    run_dir, settings = _settings(
        resume, recipe=recipe, data=None if data is None else str(data), trials=trials,
        timeout=timeout, study=study, space=space, storage=storage, pruner=pruner,
        epochs=epochs, subset=subset, split=split, val_size=val_size, seed=seed,
        device=device, threads=threads, out=out,
    )  # fmt: skip
    if settings["trials"] < 1:
        raise UserInputError("--trials must be at least 1")
    base, recipe_space = _base_recipe(settings["recipe"])
    cfg = recipes.resolve(
        settings["recipe"], data=settings["data"], split=settings["split"],
        val_size=settings["val_size"], subset=settings["subset"], seed=settings["seed"],
        device=settings["device"], threads=settings["threads"], epochs=settings["epochs"],
    )  # fmt: skip
    epochs_cap = cfg.epochs
    # --epochs is the cap by definition: the small-data adaptation must not raise it.
    cfg = dataclasses.replace(cfg, user_set=sorted({*cfg.user_set, "epochs"}))
    declared = settings["space"] or recipe_space or search_space.SPACES.get(base)
    if declared is None:
        raise UserInputError(f"the {base} recipe declares no search space: pass --space FILE")
    source = "--space" if settings["space"] else "the recipe's space"
    space_ = search_space.validate(declared, cfg, epochs_cap, source)
    if not space_.searched:
        raise UserInputError(f"bad search space in {source}: every value is fixed")
    pruner_ = _make_pruner(optuna, settings["pruner"], settings["trials"], epochs_cap)

    # Load the data once up front: a bad path or split fails before any trial.
    from .data import load_dataset, make_split

    dataset = load_dataset(cfg.data, image_size=cfg.image_size, progress=progress)
    split_ = make_split(dataset, cfg.split, cfg.seed, cfg.val_size, cfg.subset)
    if not len(split_.val):
        raise UserInputError("tuning needs a validation set: --val-size must be above 0")
    data_record = {"source": dataset.source, "fingerprint": dataset.fingerprint}

    run_dir.mkdir(parents=True, exist_ok=True)
    # ERROR: a Ctrl-C would otherwise print a failed-trial traceback before our one line.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    study_ = _open_study(optuna, settings["storage"], settings["study"], pruner_)
    first = _check_same_study(
        study_,
        {
            "base": base,
            "config": _recipe_changes(cfg, base),
            "space": declared,
            "epochs_cap": epochs_cap,
            "data": data_record,
            "split": split_.describe(),
        },
    )
    write_text_atomic(run_dir / SETTINGS_FILE, json.dumps(settings, indent=2))
    if first and not study_.get_trials(deepcopy=False):
        baseline = space_.current(cfg)
        if baseline:
            study_.enqueue_trial(baseline, user_attrs={"baseline": True})
            log.info("the first trial runs the recipe's own settings (the baseline)")
    existing = len(study_.get_trials(deepcopy=False))
    # Seeded per start, so a resumed or second worker does not redraw the same settings.
    study_.sampler = optuna.samplers.TPESampler(
        seed=settings["seed"] + existing, n_startup_trials=max(3, min(10, settings["trials"] // 3))
    )
    if resume is not None:
        _requeue_interrupted(optuna, study_)

    finished_states = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED)
    finished = len(study_.get_trials(deepcopy=False, states=finished_states))
    remaining = settings["trials"] - finished
    names = space_.searched
    log.info(
        "study %r: %d of %d trials done; %s on %s (%d train / %d val images), up to %d epochs",
        settings["study"], finished, settings["trials"], settings["recipe"], dataset.source,
        len(split_.train), len(split_.val), epochs_cap,
    )  # fmt: skip
    log.info("%s", table_header(names))

    def objective(trial) -> float:
        params = space_.suggest(trial)
        trial_cfg = space_.apply(cfg, params)
        # TTA only changes the reported metric, not the model: trials skip its cost.
        trial_cfg = dataclasses.replace(trial_cfg, tta=False)
        trial_cfg.out = str(run_dir / "trials" / f"{trial.number:04d}")
        return _run_trial(optuna, trial, trial_cfg, epochs_cap, progress)

    def show_row(study, trial) -> None:
        best = study.best_value if _has_complete(study) else None
        log.info("%s", table_row(_trial_row(trial, best), names))

    interrupted = False
    if remaining > 0:
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
                interrupted = True
    result = _finish(optuna, study_, space_, cfg, base, run_dir, names, started, settings)
    if interrupted:
        log.warning(
            "interrupted: finished trials are saved in the study; continue with "
            "imageclf tune --resume %s",
            run_dir,
        )
        raise KeyboardInterrupt
    return result


def _has_complete(study) -> bool:
    return any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


def _run_trial(optuna, trial, cfg: TrainConfig, epochs_cap: int, progress: bool) -> float:
    """One training run that reports val accuracy per epoch and stops when pruned."""
    from .training import TrainingDiverged, train

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
        bar.set_postfix(val_acc=f"{record['val_acc']:.4f}")
        trial.report(record["val_acc"], schedule_step(record["epoch"], cfg.epochs, epochs_cap))
        trial.set_user_attr("epochs_run", record["epoch"])
        if trial.should_prune():
            raise optuna.TrialPruned(f"epoch {record['epoch']}: val_acc {record['val_acc']:.4f}")

    try:
        result = train(cfg, progress=False, on_epoch_end=report, evaluate_test=False)
    except TrainingDiverged as exc:
        # Too high a learning rate is an answer, not an error: prune and move on.
        trial.set_user_attr("diverged", str(exc))
        raise optuna.TrialPruned(str(exc)) from None
    finally:
        bar.close()
    return result.metrics["val"]["accuracy"]


def _recipe_changes(cfg: TrainConfig, base: str) -> dict:
    """The recipe fields where ``cfg`` differs from the built-in ``base``."""
    reference = recipes.resolve(base).to_dict()
    return {k: v for k, v in cfg.to_dict().items() if k not in RUN_FIELDS and reference[k] != v}


def _finish(optuna, study, space_, cfg, base, run_dir, names, started, settings) -> TuneResult:
    """Write best.json, trials.csv and the plots from the whole study (every worker's trials)."""
    rows = trial_rows(study)
    _write_trials_csv(run_dir / "trials.csv", rows, names)
    plots = _write_plots(optuna, study, rows, run_dir)
    best_recipe, best_trial, best_value, best_params = None, None, None, {}
    if _has_complete(study):
        best = study.best_trial
        best_trial, best_value, best_params = best.number, best.value, dict(best.params)
        tuned = space_.apply(cfg, best.params)
        counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "diverged")}
        best_recipe = recipes.write_recipe_file(
            run_dir / "best.json",
            name=f"{base}-tuned",
            base=base,
            config=_recipe_changes(tuned, base),
            tuned={
                "study": study.study_name,
                "trial": best.number,
                "val_accuracy": best.value,
                "params": best_params,
                "trials": counts,
                "data": study.user_attrs["imageclf"]["data"],
                "split": study.user_attrs["imageclf"]["split"],
                "subset": cfg.subset,
                "epochs_cap": cfg.epochs,
                "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            },
        )
    else:
        log.warning("no trial completed yet, so there is no best recipe to write")
    seconds = round(time.perf_counter() - started, 1)
    baseline = next(
        (r["val_acc"] for r in rows if r["baseline"] and r["state"] == "complete"), None
    )
    return TuneResult(
        run_dir, study.study_name, best_trial, best_value, best_params, best_recipe, baseline,
        rows, plots, seconds,
    )  # fmt: skip
