"""``imageclf tune``: search a recipe's hyperparameters (needs imageclf[tune])."""

from __future__ import annotations

import json

import click

from ..data.splits import SPLITS
from ..errors import UserInputError
from ..training.tracking import TRACKERS
from .table_flags import fold_table, table_flags
from .train import RECIPE_HELP


@click.command("tune")
@click.option("--recipe", default="fast", show_default=True, help=RECIPE_HELP)
@click.option("--data", "data_path", default=None, help="Dataset, as for train.")
@table_flags
@click.option("--split", type=click.Choice(SPLITS), default=None)
@click.option("--subset", type=click.IntRange(min=1), default=None, help="As for train.")
@click.option("--val-size", type=click.IntRange(min=1), default=None, help="As for train.")
@click.option(
    "--epochs", type=click.IntRange(min=1), default=None, help="Most epochs a trial may train."
)
@click.option(
    "--trials", type=click.IntRange(min=1), default=None, help="Trials in the study [20]."
)
@click.option(
    "--timeout",
    type=click.FloatRange(min=0, min_open=True),
    default=None,
    help="Start no new trial after this many seconds.",
)
@click.option("--study", default=None, help="Study name (default tune-<recipe>).")
@click.option(
    "--space",
    type=click.Path(exists=True, dir_okay=False),
    default=None,
    help="JSON search space (default: the recipe's own).",
)
@click.option(
    "--storage",
    default=None,
    metavar="URL",
    help="Optuna storage shared by several workers, e.g. sqlite:///study.db or a "
    "PostgreSQL URL (default: study.db in the run folder).",
)
@click.option(
    "--pruner",
    type=click.Choice(["median", "halving", "none"]),
    default="median",
    show_default=True,
    help="Stop unpromising trials early.",
)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder (default runs/tune-<timestamp>).",
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False),
    default=None,
    help="Continue the study in this run folder (only --trials/--timeout may change).",
)
@click.option(
    "--track",
    type=click.Choice(TRACKERS),
    multiple=True,
    help="As for train: MLflow gets one parent run with a child per trial, TensorBoard "
    "event files in each trial's folder; --resume keeps the study's own.",
)
@click.option(
    "--objective",
    type=click.Choice(["accuracy", "map", "macro_f1"]),
    default=None,
    help="What trials maximise on validation: accuracy (single-label data); multi-label "
    "data: map (mean average precision, the default) or macro_f1.",
)
@click.pass_context
def tune_command(ctx: click.Context, data_path, resume, **options):
    """Search hyperparameters on the validation set (needs imageclf[tune]); writes
    best.json, a recipe for `imageclf train --recipe`."""
    from ..tuning import tune

    options = fold_table(options)  # the table flags as one "table" setting
    if resume:
        fixed = {"data": data_path, "table": None, **options}
        keys = ("data", "split", "subset", "val_size", "epochs", "study", "space", "storage",
                "objective", "table")  # fmt: skip
        changed = ["--" + k.replace("_", "-") for k in keys if fixed[k] is not None]
        changed = [f if f != "--table" else "the table flags (--file-column...)" for f in changed]
        if changed:
            raise UserInputError(
                f"--resume takes its settings from {resume}/tune.json; drop {', '.join(changed)}"
            )
    result = tune(data=data_path, resume=resume, progress=ctx.obj["progress"], **options)
    if result.best_recipe is None:
        raise click.ClickException("no trial completed, so there is no best recipe")
    counts = ", ".join(
        f"{sum(t['state'] == s for t in result.trials)} {s}" for s in ("complete", "pruned")
    )
    baseline = result.baseline_value
    click.echo(
        f"done in {result.seconds:.0f}s ({counts}): best trial {result.best_trial}, "
        f"val accuracy {result.best_value:.4f}"
        + (f" (the recipe's own settings: {baseline:.4f})" if baseline is not None else "")
    )
    if any(t["baseline"] and t["trial"] == result.best_trial for t in result.trials):
        click.echo("no trial beat the recipe's own settings: best.json holds them")
    click.echo(f"best recipe: {result.best_recipe}")
    click.echo(f"plots: {', '.join(str(p) for p in result.plots)}")
    data = data_path or json.loads((result.run_dir / "tune.json").read_text()).get("data")
    data_hint = f" --data {data}" if data else ""
    click.echo(f"train it: imageclf train --recipe {result.best_recipe}{data_hint}")
