"""``imageclf export --format onnx-int8``: the ONNX export with int8 weights and
activations, kept only if it keeps the model's accuracy.

onnxruntime's static quantisation (``quantize_static``, QDQ format: QuantizeLinear /
DequantizeLinear pairs around standard ops, so ``onnx_graph``'s checks read it like any
export) with per-channel int8 weights and uint8 activations whose ranges are measured
(MinMax) on calibration pictures. The interface stays the export's: uint8 NHWC pixels
in, float32 logits out, the normalisation inside the graph.

Rounding weights and activations to 8 bits changes answers, so the fp32 export's "agree
on every image" cannot hold; the check is stated in accuracy instead, on real labelled
pictures: top-1 agreement with the float model on ``AGREE_IMAGES`` of them and the
accuracy change on all of them. Both go into the file's metadata (``QUANT_KEY``); a drop
of more than ``max_drop`` points refuses the file (nothing written, exit code 2).

A multi-label model (``labels.py``) is checked on its decisions instead: each label on
or off at its threshold, from its calibrated sigmoid. "Accuracy" is then the share of
(picture, label) decisions that are right (1 - Hamming loss), and agreement counts the
pictures whose every label agrees.

This module takes pictures as arrays; where they come from (the bundle's recorded
training and test splits, a folder) is the caller's (``cli/export.py``), so prediction
reads no datasets.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..errors import ImageError, UserInputError
from ..imaging import open_image, resize_for_model
from . import labels
from .export import (
    DEFAULT_OPSET,
    _build_onnx,
    _output_path,
    _quiet,
    _reference,
    raw_logits,
    require_onnx_extra,
)
from .files import collect_images
from .onnx_backend import OnnxBackend

QUANT_KEY = "quantization"  # metadata prop: JSON of the facts below
AGREE_IMAGES = 1000
CALIBRATION_IMAGES = 500
MAX_DROP = 1.0  # accuracy points the int8 model may lose on the test set
CHUNK = 500


@dataclass
class Int8Data:
    """The pictures an int8 export needs, prepared (uint8 N x S x S x 3), and where
    they came from (said in the output and the file's metadata)."""

    calibration: np.ndarray
    calibration_source: str
    check_images: np.ndarray
    check_labels: np.ndarray  # the model's class indices (multi-label: N x C multi-hot)
    check_source: str


@dataclass
class Int8Result:
    path: Path
    size_bytes: int
    facts: dict  # what QUANT_KEY holds

    @property
    def check(self) -> dict:
        return self.facts["check"]


def pictures_from_folder(
    folder: str | os.PathLike, size: int, source_size: int | None, limit: int
) -> np.ndarray:
    """Up to ``limit`` pictures of a folder (recursively; a seeded sample when there
    are more), decoded like a request and squashed to the model's input; unreadable
    files are skipped, but a folder with no usable picture is one clear error."""
    path = Path(folder)
    if not path.is_dir():
        raise UserInputError(f"--calibration takes a folder of pictures: {path} is not one")
    files, _ = collect_images([path])
    if len(files) > limit:
        chosen = np.random.default_rng(0).choice(len(files), limit, replace=False)
        files = [files[i] for i in sorted(chosen)]
    pictures = []
    for file in files:
        try:
            pictures.append(resize_for_model(open_image(file), size, source_size))
        except ImageError:
            continue
    if not pictures:
        raise UserInputError(f"no readable pictures in {path} to calibrate the int8 model on")
    return np.stack(pictures)


def _reader(images: np.ndarray):
    """onnxruntime's CalibrationDataReader over prepared pictures, in batches."""
    from onnxruntime.quantization import CalibrationDataReader

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([images[i : i + 50] for i in range(0, len(images), 50)])

        def get_next(self):
            batch = next(self.batches, None)
            return None if batch is None else {"images": np.ascontiguousarray(batch)}

    return Reader()


def _quantize(fp32, calibration: np.ndarray, scratch: Path):
    """The fp32 ModelProto -> its int8 QDQ ModelProto, calibrated on ``calibration``."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    onnx.save_model(fp32, str(scratch / "fp32.onnx"))
    with _quiet():  # both print progress and warnings on the root logger
        # Shape inference and graph fusions first, as onnxruntime recommends.
        quant_pre_process(str(scratch / "fp32.onnx"), str(scratch / "pre.onnx"))
        quantize_static(
            str(scratch / "pre.onnx"),
            str(scratch / "int8.onnx"),
            _reader(calibration),
            quant_format=QuantFormat.QDQ,
            # Per tensor, the bundled model scored 78.6% instead of 92.1% (docs/benchmarks.md):
            # depthwise convolutions' channels differ widely in range.
            per_channel=True,
            # 7-bit weights: on CPUs without VNNI (AVX2) onnxruntime's u8s8 dot products
            # saturate their 16-bit sums; with 8-bit weights the bundled model lost 3.9
            # points there (93.14% -> 89.21%), and a file may run on any CPU.
            reduce_range=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
    return onnx.load_model(str(scratch / "int8.onnx"))


def _finish(proto, props: dict[str, str]) -> None:
    """Set the metadata props (the export's plus ours) and keep only the opset imports
    the nodes use (the optimiser declares a dozen domains it never uses)."""
    import onnx

    merged = {p.key: p.value for p in proto.metadata_props} | props
    del proto.metadata_props[:]
    for key, value in merged.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    used = {node.domain for node in proto.graph.node} | {""}
    kept = [o for o in proto.opset_import if o.domain in used or o.domain == "ai.onnx"]
    del proto.opset_import[:]
    proto.opset_import.extend(kept)
    onnx.checker.check_model(proto)


def _decider(meta) -> Callable[[np.ndarray], np.ndarray]:
    """Raw logits -> what the model answers: top-1, or a multi-label model's labels on."""
    if not meta.multi_label:
        return lambda logits: logits.argmax(1)
    limits = labels.thresholds(meta.label_thresholds or [])

    def decide(logits: np.ndarray) -> np.ndarray:
        calibrated = labels.calibrate(torch.from_numpy(logits), meta.label_calibration)
        return labels.labels_on(labels.probabilities(calibrated.numpy()), limits)

    return decide


def _accuracy_check(
    float_logits: Callable[[np.ndarray], np.ndarray],
    int8_logits: Callable[[np.ndarray], np.ndarray],
    data: Int8Data,
    decide: Callable[[np.ndarray], np.ndarray] = lambda logits: logits.argmax(1),
) -> dict:
    """Top-1 agreement (multi-label: every label's decision) on the first
    ``AGREE_IMAGES`` check pictures and accuracy of both models on all of them."""
    ours, theirs = [], []
    for start in range(0, len(data.check_images), CHUNK):
        batch = data.check_images[start : start + CHUNK]
        ours.append(decide(float_logits(batch)))
        theirs.append(decide(int8_logits(batch)))
    top_float, top_int8 = np.concatenate(ours), np.concatenate(theirs)
    agree = min(AGREE_IMAGES, len(top_float))
    truth = data.check_labels.astype(bool) if top_float.ndim == 2 else data.check_labels
    float_acc = float((top_float == truth).mean())
    int8_acc = float((top_int8 == truth).mean())
    same = top_float[:agree] == top_int8[:agree]
    return {
        "decisions": "labels" if top_float.ndim == 2 else "top-1",  # what is compared
        "agreement_images": agree,
        "top1_agree": int((same.all(1) if same.ndim == 2 else same).sum()),
        "test_images": len(top_float),
        "test_source": data.check_source,
        "float_accuracy": round(float_acc, 6),
        "int8_accuracy": round(int8_acc, 6),
        "accuracy_change_points": round((int8_acc - float_acc) * 100, 4),
    }


def _check_inputs(data: Int8Data, size: int, classes: int) -> None:
    for name, images in (("calibration", data.calibration), ("check", data.check_images)):
        if images.ndim != 4 or images.shape[1:] != (size, size, 3) or images.dtype != np.uint8:
            raise UserInputError(f"the {name} pictures must be uint8 N x {size} x {size} x 3")
    if not len(data.calibration):
        raise UserInputError("no pictures to calibrate the int8 model on")
    if not len(data.check_images) or len(data.check_labels) != len(data.check_images):
        raise UserInputError("no labelled test pictures to check the int8 model against")
    if data.check_labels.ndim == 2:  # multi-hot, one column per label
        if data.check_labels.shape[1] != classes or not np.isin(data.check_labels, (0, 1)).all():
            raise UserInputError(f"the check labels must be 0/1, one column per label ({classes})")
    elif data.check_labels.min() < 0 or data.check_labels.max() >= classes:
        raise UserInputError("the check labels must be the model's class indices")


def export_int8(
    model: str | os.PathLike | None,
    out: str | os.PathLike | None = None,
    *,
    data: Int8Data,
    max_drop: float = MAX_DROP,
    opset: int = DEFAULT_OPSET,
) -> Int8Result:
    """Quantise, check on ``data``, then move the file into place; a drop of more than
    ``max_drop`` accuracy points refuses it (``UserInputError``, nothing written)."""
    require_onnx_extra()
    import onnx
    import onnxruntime

    reference = _reference(model, "export takes a .safetensors bundle, not an ONNX file")
    target = _output_path(model, out, ".int8.onnx")
    meta = reference.metadata
    _check_inputs(data, meta.input_size, len(meta.classes))
    facts = {
        "format": "QDQ",
        "weights": "int8 per channel",
        "activations": "uint8 per tensor",
        "calibration": {
            "method": "MinMax",
            "images": len(data.calibration),
            "source": data.calibration_source,
        },
        "onnxruntime": onnxruntime.__version__,
    }
    draft = target.with_name(f".{target.name}.partial")
    try:
        with tempfile.TemporaryDirectory(prefix="imageclf-int8-") as scratch:
            proto = _quantize(_build_onnx(reference, opset), data.calibration, Path(scratch))
        _finish(proto, {QUANT_KEY: json.dumps(facts)})
        onnx.save_model(proto, str(draft), save_as_external_data=False)
        int8 = OnnxBackend(draft, threads=torch.get_num_threads())
        check = _accuracy_check(
            lambda b: raw_logits(reference, b), int8.graph_logits, data, _decider(meta)
        )
        facts["check"] = {**check, "max_drop_points": max_drop}
        drop = -check["accuracy_change_points"]
        if drop > max_drop:
            raise UserInputError(
                f"the int8 model loses {drop:.2f} accuracy points on {check['test_images']} "
                f"test pictures ({check['float_accuracy']:.2%} -> {check['int8_accuracy']:.2%}; "
                f"--max-drop {max_drop:g}): not written"
            )
        _finish(proto, {QUANT_KEY: json.dumps(facts)})
        onnx.save_model(proto, str(draft), save_as_external_data=False)
        OnnxBackend(draft)  # the file as written still opens and answers
        os.replace(draft, target)
    finally:
        draft.unlink(missing_ok=True)
    return Int8Result(target, target.stat().st_size, facts)
