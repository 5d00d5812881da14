"""``imageclf predict``: classify image files and folders."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import UserInputError
from ..fileio import printable


@click.command("predict")
@click.argument("inputs", nargs=-1, required=True, metavar="[MODEL] IMAGES_OR_FOLDERS...")
@click.option("--top-k", type=click.IntRange(min=1), default=3, show_default=True)
@click.option(
    "--format",
    "out_format",
    type=click.Choice(["table", "json", "csv"]),
    default="table",
    show_default=True,
)
@click.option(
    "--explain",
    "explain_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Write a Grad-CAM overlay per image into this folder.",
)
@click.option(
    "--sort-into",
    "sort_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Copy each picture into DIR/<label>/ (DIR/unsure/ when the model is not sure; "
    "a multi-label model: into each of its labels' folders, DIR/no-label/ for none); "
    "nothing is overwritten or moved.",
)
@click.option(
    "--threshold",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Multi-label models: one threshold for every label, instead of each label's own "
    "(chosen on validation).",
)
@click.option("--link", is_flag=True, help="With --sort-into: symlinks instead of copies.")
@click.option("--tta", is_flag=True, help="Average over flipped and shifted views.")
@click.option("--batch-size", type=click.IntRange(min=1), default=64, show_default=True)
@click.option("--device", default="cpu", show_default=True, help="auto, cpu or cuda.")
@click.pass_context
def predict_command(
    ctx: click.Context, inputs, top_k, out_format, explain_dir, sort_dir, threshold, link,
    tta, batch_size, device,
):  # fmt: skip
    """Classify image files and folders (recursively). MODEL (a .safetensors bundle or an
    exported .onnx file) is optional; without it the bundled model is used. Exit code 2
    if any file failed."""
    from ..prediction.files import format_results, predict_files
    from ..prediction.predictor import Predictor
    from ..prediction.sorting import Sorter

    model = inputs[0] if inputs[0].lower().endswith((".safetensors", ".onnx")) else None
    paths = inputs[1:] if model else inputs
    if not paths:
        raise UserInputError("give at least one image file or folder after the model")
    if link and sort_dir is None:
        raise UserInputError("--link goes with --sort-into DIR")
    predictor = Predictor.load(model, device=device)
    if explain_dir and not predictor.explainable:
        raise UserInputError("--explain (Grad-CAM) needs the PyTorch model, not an ONNX export")
    predictor.label_thresholds(threshold)  # a single-label model refuses --threshold now
    sorter = None
    if sort_dir:
        sorter = Sorter.create(sort_dir, predictor.classes, link, paths, predictor.multi_label)
    results = []
    for item in predict_files(
        predictor, paths, top_k=top_k, tta=tta, threshold=threshold, explain_dir=explain_dir,
        batch_size=batch_size, progress=ctx.obj["progress"], skip=sort_dir,
    ):  # fmt: skip
        if sorter:
            item = sorter.place(item)
        if not item.ok:
            click.echo(f"imageclf: skipped {printable(item.path)}: {item.error}", err=True)
        results.append(item)
    click.echo(format_results(results, out_format, model=predictor.name), nl=False)
    if sorter:  # stdout stays pure JSON / CSV for machines
        click.echo(sorter.summary(), nl=False, err=out_format != "table")
    failed = sum(not r.ok for r in results)
    if failed:
        click.echo(f"imageclf: {failed} of {len(results)} files could not be classified", err=True)
        ctx.exit(2)
