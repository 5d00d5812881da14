"""``imageclf evaluate``: metrics, plots, Grad-CAM and report.html for a model or an ensemble."""

from __future__ import annotations

import time
from pathlib import Path

import click

from ..data.splits import SPLITS
from ..device import PRECISIONS
from ..errors import UserInputError
from .table_flags import fold_table, table_flags


def _sample_size(ctx, param, value: str) -> int | None:
    if value.strip().lower() == "all":
        return None
    try:
        size = int(value)
    except ValueError:
        size = 0
    if size < 1:
        raise click.BadParameter(f"{value!r} is neither a positive number of images nor 'all'")
    return size


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
    help="Comma-separated subset of train,val,test (default: all that exist).",
)
@click.option(
    "--train-sample",
    default="5000",
    show_default=True,
    metavar="N|all",
    callback=_sample_size,
    help="Score a seeded sample of N training images (the train/test gap), or all.",
)
@click.option(
    "--tta-sample",
    default="5000",
    show_default=True,
    metavar="N|all",
    callback=_sample_size,
    help="TTA on a seeded sample of N images of each TTA split (its gain, paired), or all.",
)
@click.option(
    "--tta/--no-tta",
    default=True,
    show_default=True,
    help="Also evaluate with test-time augmentation (6 views per image).",
)
@click.option(
    "--tta-splits",
    default=None,
    metavar="LIST",
    help="Splits that get TTA (default: the headline split, test else val).",
)
@click.option(
    "--precision",
    type=click.Choice([p for p in PRECISIONS if p != "fp16"]),
    default="auto",
    show_default=True,
    help="auto: bf16 where the CPU has it natively (or on a GPU), else fp32.",
)
@click.option(
    "--gradcam/--no-gradcam",
    default=True,
    show_default=True,
    help="Grad-CAM overlays for the sample and top-loss grids.",
)
@click.option(
    "--others",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=None,
    help="A folder of pictures of none of the classes: how often the model says so "
    "(AUROC, and the share flagged at its threshold).",
)
@click.option(
    "--gradcam-label",
    default=None,
    metavar="NAME",
    help="Multi-label models: Grad-CAM of this label on the pictures most likely to have it.",
)
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda.")
@click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Report folder (default runs/eval-<model>-<timestamp>).",
)
@table_flags
@click.pass_context
def evaluate_command(
    ctx: click.Context, models, data_path, split, splits, train_sample, tta_sample, tta,
    tta_splits, precision, gradcam, others, gradcam_label, device, out, **table,
):  # fmt: skip
    """Evaluate a model, or an ensemble of several (probabilities averaged): metrics,
    plots, Grad-CAM and one self-contained report.html."""
    from ..evaluation.evaluator import default_out_dir, evaluate
    from ..evaluation.report import console_report, write_report
    from ..evaluation.views import parse_splits

    started = time.perf_counter()
    result = evaluate(
        list(models) or None, data_path, split=split, splits=parse_splits(splits), tta=tta,
        tta_splits=parse_splits(tta_splits), train_sample=train_sample, tta_sample=tta_sample,
        device=device, precision=precision, progress=ctx.obj["progress"], others=others,
        table=fold_table(table).get("table"),
    )  # fmt: skip
    if getattr(result, "multi_label", False):  # one sigmoid per label: its own report
        from ..evaluation.multilabel_report import console_label_report, write_label_report

        report = write_label_report(
            result, out or default_out_dir(result), gradcam_label=gradcam_label if gradcam else None
        )
        click.echo(console_label_report(result, report))
    else:
        if gradcam_label is not None:
            raise UserInputError("--gradcam-label is for multi-label models; this one is not")
        report = write_report(result, out or default_out_dir(result), gradcam=gradcam)
        click.echo(console_report(result, report))
    click.echo(f"wall time: {time.perf_counter() - started:.0f} s")
