"""``imageclf export``: a model bundle to one verified ONNX file, or to a half-size bundle."""

from __future__ import annotations

import click


@click.command("export")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "fp16"]),
    default="onnx",
    show_default=True,
    help="onnx: one file for onnxruntime (needs the onnx extra); fp16: the bundle with "
    "half-precision weights (half the size, computes in fp32 as before).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output file (default: beside MODEL, or in this folder for the bundled model: "
    "NAME.onnx or NAME.fp16.safetensors).",
)
@click.option("--opset", type=click.IntRange(min=1), default=None, help="ONNX opset (default 18).")
def export_command(model: str | None, fmt: str, out: str | None, opset: int | None) -> None:
    """Export a model bundle (default: the bundled model), checked against the original on
    1,000 images before the file is kept."""
    from ..errors import UserInputError
    from ..prediction.export import DEFAULT_OPSET, export_half, export_onnx

    if fmt == "fp16":
        if opset is not None:
            raise UserInputError("--opset applies to --format onnx only")
        result = export_half(model, out)
        written = "float16 weights"
    else:
        result = export_onnx(model, out, opset=opset or DEFAULT_OPSET)
        written = f"opset {result.opset}"
    click.echo(
        f"verified on {result.images} images: top-1 agrees on {result.top1_agree}/"
        f"{result.images}, max probability difference {result.max_prob_diff:.2e} "
        f"({result.limits})"
    )
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {written})")
