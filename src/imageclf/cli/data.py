"""``imageclf data``: download, info and inspect datasets."""

from __future__ import annotations

from pathlib import Path

import click


@click.group("data")
def data_command() -> None:
    """Download and inspect datasets."""


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
@click.pass_context
def data_info(ctx: click.Context, path: str | None) -> None:
    """Decode (or load from cache) a dataset and print its classes and sizes."""
    from ..data import TEST, TRAIN, VAL, load_dataset
    from ..fileio import printable

    ds = load_dataset(path, progress=ctx.obj["progress"])
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
@click.pass_context
def data_inspect(ctx: click.Context, path: str) -> None:
    """Check an image folder or archive before training: classes, images per class and
    split, image sizes, unreadable and non-image files. Exit 2 if it cannot be trained on."""
    from ..data.inspect import format_inspection, inspect

    found = inspect(path, progress=ctx.obj["progress"])
    click.echo(format_inspection(found), nl=False)
    if found.problems:
        ctx.exit(2)
