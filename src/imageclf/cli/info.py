"""``imageclf info``: what a model bundle or an exported ONNX file holds, in lines people read."""

from __future__ import annotations

import json
from pathlib import Path

import click


def _num(value, digits: int = 4) -> str:
    """Floats as people read them (``0.00146``, not ``0.0014648437500000002``)."""
    return f"{value:.{digits}g}" if isinstance(value, float) else str(value)


def _format_metrics(metrics: dict) -> list[str]:
    lines = []
    for key, value in metrics.items():
        if isinstance(value, dict):
            inner = ", ".join(f"{k} {_num(v)}" for k, v in value.items())
            lines.append(f"  {key:<14}{inner}")
        else:
            lines.append(f"  {key:<14}{_num(value)}")
    return lines


def _bundle_line(path: Path):
    """A ``.safetensors`` bundle: its metadata and the line saying what the file holds."""
    from ..models.bundle import load_bundle

    bundle = load_bundle(path)
    params = sum(t.numel() for k, t in bundle.state_dict.items() if "running" not in k)
    stored = sorted({str(t.dtype).removeprefix("torch.") for t in bundle.state_dict.values()})
    first = (
        f"model        {path} ({path.stat().st_size / 1e6:.1f} MB, {params:,} numbers, "
        f"stored as {'/'.join(stored)})"
    )
    gate = bundle.metadata.get("gate")
    if gate:  # prediction.gate: the ImageNet network's second opinion on photos
        from ..prediction.gate import SCALE_SUFFIX

        numbers = sum(t.numel() for k, t in bundle.gate.items() if not k.endswith(SCALE_SUFFIX))
        named = sum(len(v) for v in gate["groups"].values())
        first += (
            f"\ngate         {gate['architecture']} ImageNet network at {gate['side']} px "
            f"({numbers:,} numbers, int8): {named} ImageNet classes are its classes; a photo "
            f"with less than {_num(gate['outside_below'])} of ImageNet's mass on them is outside"
        )
    return bundle.metadata, first


def _onnx_line(path: Path):
    """An ``imageclf export`` ONNX file: the metadata it carries, read and checked the way
    the ONNX backend reads it (without running the graph)."""
    from ..prediction.onnx_backend import read_onnx_file

    _, metadata, facts = read_onnx_file(path)
    first = (
        f"model        {path} ({path.stat().st_size / 1e6:.1f} MB, ONNX opset {facts.opset}, "
        f"{facts.numbers:,} numbers; runs on onnxruntime)"
    )
    return metadata, "\n".join([first, *_quantization_lines(facts.props)])


def _quantization_lines(props: dict[str, str]) -> list[str]:
    """What an int8 export says of itself (``prediction.quantize``); the file is
    untrusted, so anything unreadable is said to be, and its text printed escaped."""
    from ..errors import BundleError
    from ..fileio import parse_json, printable
    from ..prediction.quantize import QUANT_KEY

    if QUANT_KEY not in props:
        return []
    try:
        q = parse_json(props[QUANT_KEY], "quantization", BundleError)
        cal, check = q["calibration"], q["check"]
        return [
            f"quantized    {printable(q['weights'])} weights, {printable(q['activations'])} "
            f"activations ({printable(q['format'])}); calibrated ({printable(cal['method'])}) "
            f"on {int(cal['images'])} pictures from {printable(cal['source'])}",
            f"int8 check   {'every label' if check.get('decisions') == 'labels' else 'top-1'} "
            f"agrees with the float model on {int(check['top1_agree'])}/"
            f"{int(check['agreement_images'])}; accuracy {float(check['float_accuracy']):.2%} "
            f"-> {float(check['int8_accuracy']):.2%} "
            f"({float(check['accuracy_change_points']):+.2f} points, bound "
            f"{float(check['max_drop_points']):g}) on {int(check['test_images'])} pictures of "
            f"{printable(check['test_source'])}",
        ]
    except (BundleError, KeyError, TypeError, ValueError):
        return ["quantized    (the file's quantization facts are unreadable)"]


@click.command("info")
@click.argument("model", required=False, type=click.Path(dir_okay=False))
@click.option("--json", "as_json", is_flag=True, help="Print the raw metadata as JSON.")
def info_command(model: str | None, as_json: bool) -> None:
    """Show what a model bundle or an exported .onnx file contains (default: the bundled
    model)."""
    from ..prediction.predictor import default_model_path, is_onnx_path

    path = Path(model) if model else default_model_path()
    meta, first = _onnx_line(path) if is_onnx_path(path) else _bundle_line(path)
    if as_json:
        click.echo(json.dumps(meta, indent=2))
        return
    mean, std = (", ".join(f"{v:.3g}" for v in values) for values in (meta.mean, meta.std))
    lines = [
        first,
        f"name         {meta.name}",
        f"architecture {meta.architecture} {json.dumps(meta.arch_kwargs)}",
        f"input        {meta.input_size}x{meta.input_size} RGB, mean [{mean}], std [{std}]",
        f"classes      {len(meta.classes)}: {', '.join(meta.classes)}",
    ]
    if meta.multi_label:  # independent sigmoids: each label's threshold and calibration
        cal = meta.label_calibration
        limits = ", ".join(
            f"{c} {t:.3g}" for c, t in zip(meta.classes, meta.label_thresholds, strict=True)
        )
        lines.append(f"task         multi-label (calibration: {cal.method}); thresholds {limits}")
    if meta.data_source or meta.data_fingerprint:
        lines.append(f"data         {meta.data_source} (fingerprint {meta.data_fingerprint})")
    if meta.split:
        s = meta.split
        lines.append(f"split        {s['name']} seed {s['seed']} {s.get('sizes')}")
    if meta.recipe:
        cfg = meta.config
        lines.append(
            f"recipe       {meta.recipe}: {cfg.get('epochs')} epochs, batch "
            f"{cfg.get('batch_size')}, {cfg.get('optimizer')} lr {_num(cfg.get('lr'), 3)}"
        )
    if meta.metrics:
        lines.append("metrics")
        lines += _format_metrics(meta.metrics)
    lines.append(f"created      {meta.created}")
    lines.append("versions     " + ", ".join(f"{k} {v}" for k, v in meta.versions.items()))
    click.echo("\n".join(lines))
