"""What a study found, written for people: the trial table, trials.csv, plots, best.json.

Everything here reads the study (every worker's trials, not only this process's), so
any worker, or a resumed search, writes the same files from the same trials.
"""

from __future__ import annotations

import csv
import io
import logging
import time
from dataclasses import dataclass
from pathlib import Path

from ..fileio import write_text_atomic
from ..training.config import TrainConfig
from ..training.recipe_files import write_recipe_file
from .space import Space
from .study import recipe_changes

log = logging.getLogger("imageclf.tune")


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


def trial_row(trial, best_value: float | None) -> dict:
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
        rows.append(trial_row(trial, best))
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
    from ..plots import figure, save

    fig = figure(7, 4)
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
    from ..plots import figure, save

    names = list(importances)[::-1]  # most important on top
    fig = figure(7, 0.5 * len(names) + 1.5)
    ax = fig.subplots()
    ax.barh(names, [importances[n] for n in names], color="#1f77b4")
    ax.set_xlabel("importance for validation accuracy (fANOVA, sums to 1)")
    # fANOVA fits a random forest to the completed trials: few trials, rough estimate.
    ax.set_title(f"Hyperparameter importances ({n_trials} completed trials)")
    ax.grid(axis="x", alpha=0.3)
    return save(fig, path)


def write_plots(optuna, study, rows: list[dict], run_dir: Path) -> list[Path]:
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


# ---------------------------------------------------------------- best.json
def has_complete(study) -> bool:
    return any(t.state.name == "COMPLETE" for t in study.get_trials(deepcopy=False))


def write_results(
    optuna, study, space_: Space, cfg: TrainConfig, base: str, run_dir: Path, started: float
) -> TuneResult:
    """Write best.json, trials.csv and the plots from the whole study (every worker's trials)."""
    rows = trial_rows(study)
    _write_trials_csv(run_dir / "trials.csv", rows, space_.searched)
    plots = write_plots(optuna, study, rows, run_dir)
    best_recipe, best_trial, best_value, best_params = None, None, None, {}
    if has_complete(study):
        best = study.best_trial
        best_trial, best_value, best_params = best.number, best.value, dict(best.params)
        tuned = space_.apply(cfg, best.params)
        counts = {s: sum(r["state"] == s for r in rows) for s in ("complete", "pruned", "diverged")}
        best_recipe = write_recipe_file(
            run_dir / "best.json",
            name=f"{base}-tuned",
            base=base,
            config=recipe_changes(tuned, base),
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
