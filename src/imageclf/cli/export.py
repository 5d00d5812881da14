"""``imageclf export``: a model bundle to one verified ONNX file."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx"]), default="onnx", show_default=True)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output file (default: MODEL with .onnx, or ./default.onnx for the bundled model).",
)
@click.option(
    "--opset", type=click.IntRange(min=1), default=18, show_default=True, help="ONNX opset."
)
def export_cmd(model: str | None, fmt: str, out: str | None, opset: int) -> None:
    """Export a model bundle (default: the bundled model) to one self-contained ONNX file,
    checked against the original on 1,000 images. Needs the onnx extra."""
    from ..export import MAX_PROB_DIFF, export_onnx

    result = export_onnx(model, out, opset=opset)
    click.echo(
        f"verified on {result.images} images: top-1 agrees on {result.top1_agree}/"
        f"{result.images}, max probability difference {result.max_prob_diff:.2e} "
        f"(limit {MAX_PROB_DIFF:g})"
    )
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, opset {result.opset})")
