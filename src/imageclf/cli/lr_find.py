"""``imageclf lr-find``: the learning-rate range test on what ``train`` with the same
options would build; a plot and a suggested ``--lr``, nothing else written."""

from __future__ import annotations

import json
from pathlib import Path

import click

from .table_flags import fold_table
from .train import _parse_set, train_command

# train's options, less those about a run folder, its length or its end
NOT_HERE = {"resume_dir", "out", "name", "epochs", "early_stopping", "track"}


@click.command("lr-find")
@click.option("--start-lr", type=click.FloatRange(min=0, min_open=True), default=1e-7,
              show_default=True, help="The sweep's first learning rate.")  # fmt: skip
@click.option("--end-lr", type=click.FloatRange(min=0, min_open=True), default=10.0,
              show_default=True, help="The sweep's last (stops early on divergence).")  # fmt: skip
@click.option("--steps", type=click.IntRange(5, 10_000), default=100, show_default=True,
              help="Training batches in the sweep, one learning rate each.")  # fmt: skip
@click.option("--plot", "plot_path", type=click.Path(dir_okay=False), default="lr_find.png",
              show_default=True, help="Where the loss-vs-rate plot goes (PNG).")  # fmt: skip
@click.option("--json", "json_path", type=click.Path(dir_okay=False), default=None,
              help="Also write the curve and the suggestion as JSON.")  # fmt: skip
@click.pass_context
def lr_find_command(
    ctx: click.Context, recipe, data_path, sets, start_lr, end_lr, steps, plot_path,
    json_path, **options,
):  # fmt: skip
    """Sweep the learning rate exponentially for a few batches on the run's real model,
    data and augmentation; plot the loss and suggest an --lr. The model is thrown away."""
    from .. import plots
    from ..errors import UserInputError
    from ..fileio import atomic_write
    from ..training.lr_find import lr_find
    from ..training.resolve import resolve

    if not start_lr < end_lr:
        raise UserInputError(f"--start-lr {start_lr:g} must be below --end-lr {end_lr:g}")
    if Path(plot_path).is_dir():
        raise UserInputError(f"--plot {plot_path} is a folder; give a .png file name")
    if recipe is None:
        recipe = "finetune" if options.get("pretrained") or options.get("init") else "fast"
    cfg = resolve(recipe, **{**fold_table(options), "data": data_path, **_parse_set(sets)})
    found = lr_find(cfg, start_lr=start_lr, end_lr=end_lr, steps=steps,
                    progress=ctx.obj["progress"])  # fmt: skip
    tenth = found.minimum / 10 if found.minimum else None
    marks = {"suggested (steepest)": found.suggestion, "minimum/10": tenth,
             "recipe lr": found.recipe_lr}  # fmt: skip
    fig = plots.lr_curve(found.lrs, found.losses, found.smoothed, marks,
                         title=f"lr range test: {cfg.recipe}, {len(found.lrs)} steps")  # fmt: skip
    with atomic_write(plot_path) as handle:
        handle.write(plots.to_png_bytes(fig))
    if json_path:
        with atomic_write(json_path, "w") as handle:
            json.dump(found.to_dict(), handle, indent=1)
    click.echo(f"sweep: {found.stopped}; plot: {plot_path}")
    if found.suggestion is None:
        click.echo("no suggestion: the loss never fell (try a wider --start-lr/--end-lr)")
        return
    tenth_said = f"a tenth of the minimum's rate: {found.minimum / 10:.3g}"
    click.echo(f"suggested --lr {found.suggestion:.3g} ({found.rule}); {tenth_said}; "
               f"the recipe's lr: {found.recipe_lr:.3g}")  # fmt: skip


lr_find_command.params.extend(p for p in train_command.params if p.name not in NOT_HERE)
