"""``imageclf evaluate``: metrics, plots, Grad-CAM and report.html for a model or an ensemble."""

from __future__ import annotations

from pathlib import Path

import click

from ..data.splits import SPLITS


@click.command("evaluate")
@click.argument("models", nargs=-1, type=click.Path(dir_okay=False), metavar="[MODEL]...")
@click.option(
    "--data",
    "data_path",
    default=None,
    help="Dataset to evaluate on (default: the one recorded in the model, if present).",
)
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default=None,
    help="Default: the split recorded in the model when --data is its training data "
    "(so val/test are truly held out), else auto.",
)
@click.option(
    "--splits",
    default=None,
    metavar="LIST",
    help="Comma-separated subset of train,val,test (default: all that exist). The "
    "train split is the slow one: up to 45,000 CIFAR images, 7x that with TTA.",
)
@click.option(
    "--tta/--no-tta",
    default=True,
    show_default=True,
    help="Also evaluate with test-time augmentation (6 extra views per image).",
)
@click.option(
    "--gradcam/--no-gradcam",
    default=True,
    show_default=True,
    help="Grad-CAM overlays for the sample and top-loss grids.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default runs/eval-<model>-<timestamp>).",
)
@click.pass_context
def evaluate_command(
    ctx: click.Context, models, data_path, split, splits, tta, gradcam, device, out
):
    """Evaluate a model, or an ensemble of several (probabilities averaged): metrics,
    plots, Grad-CAM and one self-contained report.html."""
    from ..evaluation.evaluator import default_out_dir, evaluate, parse_splits
    from ..evaluation.report import console_report, write_report

    result = evaluate(
        list(models) or None, data_path, split=split, splits=parse_splits(splits), tta=tta,
        device=device, progress=ctx.obj["progress"],
    )  # fmt: skip
    report = write_report(result, out or default_out_dir(result), gradcam=gradcam)
    click.echo(console_report(result, report))
