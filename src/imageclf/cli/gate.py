"""``imageclf gate``: give a bundle the ImageNet gate (``prediction.gate``), a second
opinion on photos from the 1,000-class network it was fine-tuned from."""

from __future__ import annotations

import click


@click.command("gate")
@click.argument("model", type=click.Path(dir_okay=False))
@click.option("--out", required=True, type=click.Path(dir_okay=False), help="The gated bundle.")
@click.option(
    "--map",
    "map_file",
    type=click.Path(dir_okay=False),
    default=None,
    help='JSON: {"classes": {CLASS: {"indices": [ImageNet class indices]}}} for each of the '
    "model's classes ImageNet has (default for CIFAR-10's classes: the map in the package, "
    "imageclf/models/imagenet_to_cifar10.json).",
)
@click.option(
    "--outside-below",
    type=click.FloatRange(0, 1),
    default=0.25,
    show_default=True,
    help="A photo whose ImageNet probability on the mapped classes is under this is "
    '"not one of its classes".',
)
@click.option(
    "--remove",
    is_flag=True,
    help="Write MODEL without its gate instead (a photo then costs one forward pass, "
    "not two; no extra needed).",
)
def gate_command(
    model: str, out: str, map_file: str | None, outside_below: float, remove: bool
) -> None:
    """Add the ImageNet gate to MODEL (needs the pretrained extra; about 4.7 MB of int8
    weights). Photos (not thumbnails) then get ImageNet's votes, each over its class's
    share of ImageNet's classes, multiplied into the model's probabilities, and "not one
    of its classes" from ImageNet's mass."""
    from pathlib import Path

    from ..errors import UserInputError
    from ..prediction.gate import attach_gate, remove_gate

    if remove:
        if map_file is not None:
            raise UserInputError("--map adds a gate: it does not go with --remove")
        click.echo(f"wrote {out}: {remove_gate(Path(model), Path(out))}")
        return
    written = attach_gate(Path(model), Path(out), Path(map_file) if map_file else None,
                          outside_below)  # fmt: skip
    click.echo(f"wrote {out}: {written}")
