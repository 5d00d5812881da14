"""``imageclf data show``: a contact sheet of a dataset's pictures with their labels
(``data.contact_sheet`` draws it; this module resolves the recipe it is shown for)."""

from __future__ import annotations

from pathlib import Path

import click

from ..training.recipes import RECIPES
from .table_flags import fold_table, table_flags


@click.command("show")
@click.argument("path", required=False)
@click.option(
    "--per-class",
    type=click.IntRange(min=1),
    default=None,
    help="Pictures of each class (default: up to 8; fewer with many classes).",
)
@click.option(
    "--sample",
    type=click.IntRange(min=1),
    default=None,
    help="A random sample of N pictures (at most 200) instead, seeded by --seed.",
)
@click.option("--seed", type=click.IntRange(0, 2**32 - 1), default=0, show_default=True)
@click.option(
    "--augment",
    is_flag=True,
    help="Show them after the recipe's training augmentation (one batch, first epoch).",
)
@click.option(
    "--recipe",
    default="fast",
    show_default=True,
    help=f"Whose picture size and augmentation: {', '.join(RECIPES)}, or a recipe .json file.",
)
@click.option(
    "--image-size",
    type=click.IntRange(min=8),
    default=None,
    help="Decode at SxS pixels (default: the recipe's, as training would).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("contact-sheet.png"),
    show_default=True,
    help="The PNG to write.",
)
@table_flags
@click.pass_context
def data_show_command(
    ctx: click.Context, path, per_class, sample, seed, augment, recipe, image_size, out, **table
) -> None:
    """Draw a contact sheet (PNG) of a dataset's pictures with their labels and file
    names: N per class, or a random sample; --augment shows what training sees. PATH:
    an image folder or archive, or CIFAR-10 (default: the official download)."""
    from ..data import load_dataset
    from ..data.contact_sheet import describe, write_contact_sheet
    from ..errors import UserInputError
    from ..fileio import printable
    from ..training.adapt import adapt_to_data
    from ..training.resolve import resolve

    if per_class is not None and sample is not None:
        raise UserInputError("choose one of --per-class and --sample")
    cfg = resolve(recipe, image_size=image_size, data=path)
    dataset = load_dataset(path, image_size=cfg.image_size, progress=ctx.obj["progress"],
                           table=fold_table(table).get("table"))  # fmt: skip
    # Pixel translations scale with the picture size, as training adapts them.
    cfg, _ = adapt_to_data(cfg, len(dataset), min_steps=0)
    sheet = write_contact_sheet(
        dataset, out, per_class=per_class, sample=sample, seed=seed,
        augment=cfg.augment if augment else None,
    )  # fmt: skip
    if augment:
        click.echo(f"augmentation of recipe {printable(cfg.recipe)}: {describe(cfg.augment)}")
    click.echo(
        f"{sheet.pictures} pictures of {sheet.classes} classes at {cfg.image_size} px: "
        f"{printable(sheet.path)}"
    )
