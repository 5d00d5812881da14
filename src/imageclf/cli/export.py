"""``imageclf export``: a model bundle to one verified ONNX file (fp32 or int8), or to a
half-size bundle."""

from __future__ import annotations

from pathlib import Path

import click

from .table_flags import fold_table, table_flags


@click.command("export")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["onnx", "onnx-int8", "fp16"]),
    default="onnx",
    show_default=True,
    help="onnx: one file for onnxruntime (needs the onnx extra); onnx-int8: the same with "
    "int8 weights and activations, kept only if it keeps the accuracy (--max-drop); fp16: "
    "the bundle with half-precision weights (half the size, computes in fp32 as before).",
)
@click.option(
    "--out",
    type=click.Path(dir_okay=False),
    default=None,
    help="Output file (default: beside MODEL, or in this folder for the bundled model: "
    "NAME.onnx, NAME.int8.onnx or NAME.fp16.safetensors).",
)
@click.option("--opset", type=click.IntRange(min=1), default=None, help="ONNX opset (default 18).")
@click.option(
    "--calibration",
    type=click.Path(file_okay=False),
    default=None,
    help="onnx-int8: a folder of pictures to calibrate on (default: the training split of "
    "the data the bundle records).",
)
@click.option(
    "--check-data",
    default=None,
    help="onnx-int8: labelled data whose test split checks the accuracy (default: the "
    "bundle's recorded data and test split).",
)
@click.option(
    "--max-drop",
    type=click.FloatRange(-100, 100),
    default=None,
    help="onnx-int8: accuracy points the int8 model may lose on the test split before "
    "the file is refused (default 1).",
)
@table_flags
def export_command(
    model: str | None,
    fmt: str,
    out: str | None,
    opset: int | None,
    calibration: str | None,
    check_data: str | None,
    max_drop: float | None,
    **table_options,
) -> None:
    """Export a model bundle (default: the bundled model), checked against the original
    before the file is kept: on 1,000 images, and for int8 on a labelled test split."""
    from ..errors import UserInputError
    from ..prediction.export import DEFAULT_OPSET, export_half, export_onnx

    table = fold_table(table_options).get("table")
    table_flag = "--" + next(iter(table)).replace("_", "-") if table else None
    int8_only = {"--calibration": calibration, "--check-data": check_data, "--max-drop": max_drop,
                 table_flag: table}  # fmt: skip
    given = [name for name, value in int8_only.items() if value is not None]
    if fmt != "onnx-int8" and given:
        raise UserInputError(f"{given[0]} applies to --format onnx-int8 only")
    if table and check_data is None:  # the recorded data is read as its run recorded
        raise UserInputError(f"{table_flag} says how --check-data is read: pass --check-data too")
    if fmt == "onnx-int8":
        data = int8_data(model, calibration, check_data, table)
        _export_int8(model, out, opset or DEFAULT_OPSET, data, max_drop)
        return
    if fmt == "fp16":
        if opset is not None:
            raise UserInputError("--opset applies to --format onnx only (and onnx-int8)")
        result = export_half(model, out)
        written = "float16 weights"
    else:
        result = export_onnx(model, out, opset=opset or DEFAULT_OPSET)
        written = f"opset {result.opset}"
    agreeing = "top-1 agrees" if result.label_agree is None else "every label agrees"
    click.echo(
        f"verified on {result.images} images: {agreeing} on {result.top1_agree}/"
        f"{result.images}, max probability difference {result.max_prob_diff:.2e} "
        f"({result.limits})"
    )
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, {written})")


def _export_int8(model, out, opset, data, max_drop) -> None:
    from ..prediction.quantize import MAX_DROP, export_int8

    result = export_int8(
        model,
        out,
        data=data,
        max_drop=MAX_DROP if max_drop is None else max_drop,
        opset=opset,
    )
    facts, check = result.facts, result.check
    agrees, accuracy = "top-1 agrees", "accuracy"
    if check.get("decisions") == "labels":  # multi-label: each label on or off
        agrees, accuracy = "every label agrees", "label accuracy"
    click.echo(
        f"calibrated on {facts['calibration']['images']} pictures from "
        f"{facts['calibration']['source']}"
    )
    click.echo(
        f"checked on {check['test_images']} test pictures of {check['test_source']}: {agrees} "
        f"with the float model on {check['top1_agree']}/{check['agreement_images']}; "
        f"{accuracy} {check['float_accuracy']:.2%} -> {check['int8_accuracy']:.2%} "
        f"({check['accuracy_change_points']:+.2f} points, --max-drop {check['max_drop_points']:g})"
    )
    click.echo(f"wrote {result.path} ({result.size_bytes / 1e6:.1f} MB, int8 QDQ, opset {opset})")


def int8_data(
    model: str | None, calibration: str | None, check_data: str | None, table: dict | None = None
):
    """The int8 export's pictures (``quantize.Int8Data``): calibration from the folder
    given, else a seeded sample of the bundle's recorded training split; the check on the
    test split of ``check_data`` (a labels table read by ``table``'s options, else as the
    run recorded), else of the bundle's recorded data."""
    import numpy as np

    from ..errors import UserInputError
    from ..evaluation.evaluator import labelled_split
    from ..fileio import printable
    from ..models.bundle import load_bundle
    from ..prediction.predictor import default_model_path, is_onnx_path
    from ..prediction.quantize import CALIBRATION_IMAGES, Int8Data, pictures_from_folder

    if is_onnx_path(model):
        raise UserInputError("export takes a .safetensors bundle, not an ONNX file")
    meta = load_bundle(model or default_model_path()).metadata
    recorded = meta.data_source
    here = bool(recorded) and Path(recorded).exists()
    gone = (
        f"its training data ({printable(recorded)}) is not here"
        if recorded
        else "the bundle records no training data"
    )
    loaded = {}

    def load(data: str, options: dict | None = None):  # once when both read the same data
        key = (Path(data).resolve(), repr(options))
        if key not in loaded:
            loaded[key] = labelled_split(meta, data, Path(model) if model else None, options)
        return loaded[key]

    if calibration is not None:
        pictures = pictures_from_folder(
            calibration, meta.input_size, meta.source_size, CALIBRATION_IMAGES
        )
        calibration_source = f"the folder {printable(calibration)}"
    elif here:
        dataset, split, _ = load(recorded)
        rng = np.random.default_rng(0)
        chosen = rng.choice(split.train, min(CALIBRATION_IMAGES, len(split.train)), replace=False)
        pictures = dataset.images[np.sort(chosen)]
        calibration_source = f"{printable(recorded)} (training split)"
    else:
        raise UserInputError(
            f"no pictures to calibrate the int8 model on: {gone}; pass --calibration DIR "
            "(a folder of pictures like the ones it will classify)"
        )
    if check_data is None and not here:
        raise UserInputError(
            f"no labelled test set to check the int8 model against: {gone}; pass "
            "--check-data DATA (a dataset with a test split)"
        )
    source = check_data or recorded
    dataset, split, labels = load(source, table if check_data else None)
    if not len(split.test):
        raise UserInputError(f"{printable(source)} has no test split to check the int8 model on")
    return Int8Data(
        pictures,
        calibration_source,
        dataset.images[split.test],
        labels[split.test],
        f"{printable(source)} (test split)",
    )
