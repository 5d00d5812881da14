"""``imageclf data``: download, info, inspect and show datasets."""

from __future__ import annotations

from pathlib import Path

import click

from .data_show import data_show_command
from .table_flags import fold_table, table_flags


@click.group("data")
def data_command() -> None:
    """Download and inspect datasets."""


data_command.add_command(data_show_command)


@data_command.command("download")
@click.option(
    "--dir",
    "directory",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where to save it (default: ~/.cache/imageclf).",
)
@click.pass_context
def data_download(ctx: click.Context, directory: Path | None) -> None:
    """Download the official CIFAR-10 python archive (md5-verified)."""
    from ..data.download import CIFAR10_FILENAME, download
    from ..paths import default_cifar10_path

    dest = directory / CIFAR10_FILENAME if directory else default_cifar10_path()
    path = download(dest, progress=ctx.obj["progress"])
    click.echo(f"CIFAR-10 ready: {path}")


@data_command.command("info")
@click.argument("path", required=False)
@table_flags
@click.pass_context
def data_info(ctx: click.Context, path: str | None, **table) -> None:
    """Decode (or load from cache) a dataset and print its classes and sizes."""
    from ..data import TEST, TRAIN, VAL, load_dataset
    from ..fileio import printable

    ds = load_dataset(path, progress=ctx.obj["progress"], table=fold_table(table).get("table"))
    click.echo(f"source: {printable(ds.source)}")
    click.echo(f"images: {len(ds)} at {ds.image_size}x{ds.image_size}")
    parts = {"train": TRAIN, "val": VAL, "test": TEST}
    counts = {k: ds.counts(v) for k, v in parts.items()}
    if not ds.has_val_partition:
        del counts["val"]  # a val/ folder is the exception; CIFAR has train and test
    click.echo(f"{'class':<16}" + "".join(f"{k:>8}" for k in counts))
    for name in ds.classes:
        click.echo(f"{printable(name):<16}" + "".join(f"{c[name]:>8}" for c in counts.values()))


@data_command.command("inspect")
@click.argument("path", type=click.Path(exists=True))
@click.option(
    "--image-size",
    type=click.IntRange(8, 512),
    default=32,
    show_default=True,
    help="The training size: how much disk the decoded cache will take at it.",
)
@click.option(
    "--duplicates/--no-duplicates",
    default=True,
    show_default=True,
    help="Look for exact and near twins across train/val/test (decodes at 32 px).",
)
@click.option(
    "--duplicates-sheet",
    type=click.Path(dir_okay=False),
    default=None,
    help="Also draw the twin pairs (held-out picture, then its twin) to this PNG.",
)
@click.option(
    "--embedding-check",
    is_flag=True,
    default=False,
    help="Also compare pretrained EfficientNet-Lite0 embeddings (96 px) across the split: "
    "look-alikes the hash misses, such as hard crops or recoloured copies "
    "(needs imageclf[pretrained]).",
)
@table_flags
@click.pass_context
def data_inspect(
    ctx: click.Context,
    path: str,
    image_size: int,
    duplicates: bool,
    duplicates_sheet,
    embedding_check: bool,
    **table,
) -> None:
    """Check an image folder or archive, or a labels table, before training: classes,
    images per class and split, image sizes, unreadable and non-image files, the decoded
    cache's disk size, pictures on both sides of the split. Exit 2 if it cannot be
    trained on."""
    from ..data.inspect import format_inspection, inspect

    table = fold_table(table).get("table")
    found = inspect(path, progress=ctx.obj["progress"], image_size=image_size, table=table)
    click.echo(format_inspection(found), nl=False)
    if found.problems:
        ctx.exit(2)
    if duplicates or duplicates_sheet:
        from ..data import duplicates as dup
        from ..data import load_dataset

        # Decoded again, not cached: inspecting leaves nothing behind.
        dataset = load_dataset(path, image_size=dup.HASH_SIDE, use_cache=False,
                               progress=ctx.obj["progress"], table=table)  # fmt: skip
        report = dup.check_dataset(dataset)
        click.echo(dup.format_pairs(report, dataset))
        if duplicates_sheet:
            shown = dup.write_sheet(report, dataset, duplicates_sheet)
            click.echo(f"contact sheet of {shown} pairs: {duplicates_sheet}")
    if embedding_check:
        from ..data import embedding_twins as twins

        known = twins.named_pairs(report, dataset) if duplicates or duplicates_sheet else set()
        pairs, seen = twins.check_source(path, known, ctx.obj["progress"], table)
        click.echo(twins.format_embedding_pairs(pairs, seen))
