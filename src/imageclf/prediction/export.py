"""``imageclf export``: a model bundle -> one self-contained ONNX file, or a bundle with
half-precision weights; either verified against the original before it is kept.

The exported graph takes decoded pixels (uint8 NHWC, the model's input size) and
returns logits, with the bundle's normalisation folded in and a dynamic batch size;
the bundle's metadata goes into the file's metadata props (see ``onnx_backend``), and
the reference is the bundle's own ``TorchBackend``.
Before the file is kept, the same images run through torch and onnxruntime: top-1 must
agree on every one and probabilities may differ by at most ``MAX_PROB_DIFF``. For a
multi-label model the probabilities are its calibrated sigmoids and every label's
decision (on or off at its threshold) must agree on every image instead of top-1.

``--format fp16`` stores the bundle's float tensors in half precision: half the file
(what lets a wide model ship under the package's size limit); it loads into fp32 and
computes exactly as before. Rounding every weight moves the outputs a little and can
flip a near-tie, so its check allows ``HALF_MAX_PROB_DIFF`` and ``HALF_MAX_FLIPS``.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import os
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import ExportError, UserInputError, import_extra
from ..models.bundle import load_bundle, save_bundle
from ..models.metadata import BundleMetadata
from . import labels
from .onnx_backend import (
    FORMAT_KEY,
    INPUT_NAME,
    METADATA_KEY,
    ONNX_FORMAT,
    OUTPUT_NAME,
    OnnxBackend,
)
from .predictor import DEFAULT_BUNDLE, default_model_path, is_onnx_path
from .torch_backend import TorchBackend

DEFAULT_OPSET = 18  # the dynamo exporter's own; others go through onnx's version converter
VERIFY_IMAGES = 1000
MAX_PROB_DIFF = 1e-4
HALF_MAX_PROB_DIFF = 0.01
HALF_MAX_FLIPS = 0.01  # of the verification images whose top-1 may change


@dataclass
class ExportResult:
    path: Path
    opset: int | None  # ONNX only
    images: int  # how many images the parity check ran
    top1_agree: int
    max_prob_diff: float
    size_bytes: int
    limits: str  # what the check allowed, e.g. "limit 0.0001"
    # A multi-label model: per label, the images whose decision (on/off) agrees; top1_agree
    # then counts the images whose every label agrees.
    label_agree: list[int] | None = None


def require_onnx_extra() -> None:
    """One clear line naming the first optional package missing (exit code 2)."""
    for module in ("onnx", "onnxscript", "onnxruntime"):
        import_extra(module, "onnx", f"ONNX export ({module})")


class _PixelsToLogits(nn.Module):
    """uint8 NHWC pixels -> logits: the model with the bundle's normalisation in front."""

    def __init__(self, reference: TorchBackend) -> None:
        super().__init__()
        self.model = reference.model
        self.register_buffer("scale", reference.normalizer.scale.clone())
        self.register_buffer("shift", reference.normalizer.shift.clone())

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        x = images.permute(0, 3, 1, 2).float() * self.scale - self.shift
        return self.model(x)


def verification_images(size: int, count: int = VERIFY_IMAGES, seed: int = 0) -> np.ndarray:
    """Deterministic picture-like test inputs: smooth random fields at several scales
    plus plain noise, so the check covers flat regions, edges and saturation."""
    rng = np.random.default_rng(seed)
    images = np.empty((count, size, size, 3), np.uint8)
    for i in range(count):
        coarse = max(2, size // (2 ** (i % 4 + 1)))
        field = rng.uniform(0, 255, (coarse, coarse, 3))
        reps = -(-size // coarse)
        smooth = np.kron(field, np.ones((reps, reps, 1)))[:size, :size]
        noise = rng.normal(0, 8 + 24 * (i % 3), (size, size, 3))
        images[i] = np.clip(smooth + noise, 0, 255).astype(np.uint8)
    return images


def _quiet():
    """The exporter prints progress and warns about torchvision ops we never use."""
    stack = contextlib.ExitStack()
    stack.enter_context(contextlib.redirect_stdout(io.StringIO()))
    stack.enter_context(warnings.catch_warnings())
    warnings.simplefilter("ignore")
    logger = logging.getLogger("torch.onnx")
    level = logger.level
    logger.setLevel(logging.ERROR)
    stack.callback(logger.setLevel, level)
    return stack


def onnx_metadata(metadata: BundleMetadata) -> dict[str, str]:
    """Metadata props: the bundle's own JSON plus a few keys readable without parsing it."""
    # The ImageNet gate (``gate.py``) stays behind: the ONNX file is the model alone.
    alone = {k: v for k, v in metadata.items() if k != "gate"}
    props = {
        FORMAT_KEY: ONNX_FORMAT,
        METADATA_KEY: json.dumps(alone, sort_keys=True),
        "classes": json.dumps(list(metadata["classes"])),
        "input_size": str(int(metadata["input_size"])),
        "input": f"{INPUT_NAME}: uint8 RGB, N x H x W x 3, resized to the input size",
        "output": f"{OUTPUT_NAME}: float32 N x classes; softmax(logits / temperature)",
        "normalization": json.dumps(metadata["normalization"]),
        "temperature": repr(metadata.temperature),
    }
    if metadata.multi_label:  # independent sigmoids: what a client without imageclf needs
        props["task"] = "multi_label"
        props["output"] = (
            f"{OUTPUT_NAME}: float32 N x classes; per label p = sigmoid(scale * logit + bias), "
            "the label is on iff p >= its threshold"
        )
        props["thresholds"] = json.dumps(metadata.label_thresholds)
        props["label_calibration"] = json.dumps(metadata.label_calibration.as_dict())
        del props["temperature"]
    for key in ("name", "architecture", "recipe"):
        if key in metadata:
            props[key] = str(metadata[key])
    if "metrics" in metadata:
        props["metrics"] = json.dumps(metadata["metrics"], sort_keys=True)
    return props


def _build_onnx(reference: TorchBackend, opset: int):
    """The ONNX ModelProto for the bundle's model (eval mode, dynamic batch)."""
    import onnx

    wrapper = _PixelsToLogits(reference).eval()
    if any(module.training for module in wrapper.modules()):
        raise ExportError("the model is not in eval mode; refusing to export")
    size = reference.metadata.input_size
    example = torch.zeros((2, size, size, 3), dtype=torch.uint8)
    batch = torch.export.Dim("batch", min=1, max=65536)
    with _quiet():
        try:
            program = torch.onnx.export(
                wrapper,
                (example,),
                dynamo=True,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_shapes=({0: batch},),
                opset_version=opset,
                external_data=False,
                verbose=False,
            )
        except Exception as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ExportError(f"the ONNX exporter failed: {first}") from None
    proto = program.model_proto
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        # The exporter falls back to its own opset when the converter cannot go there.
        raise UserInputError(f"cannot export to opset {opset} (the converter produced {got})")
    for key, value in onnx_metadata(reference.metadata).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    proto.doc_string = f"imageclf model {reference.metadata.name}: uint8 NHWC pixels in, logits out"
    onnx.checker.check_model(proto)
    return proto


def raw_logits(reference: TorchBackend, images: np.ndarray) -> np.ndarray:
    """The torch model's uncalibrated logits for prepared uint8 images."""
    return reference.logits(images).numpy()


def _reference(model: str | os.PathLike | None, refusal: str) -> TorchBackend:
    """The bundle to export, on the CPU in fp32: what the export must reproduce."""
    if is_onnx_path(model):
        raise UserInputError(refusal)
    return TorchBackend(load_bundle(model or default_model_path()))


def verify(
    reference: TorchBackend, exported_logits: Callable[[np.ndarray], np.ndarray], images: np.ndarray
) -> tuple[int, float, list[int] | None]:
    """(images whose top-1 agrees, largest probability difference, None) between the
    original and the exported model, both from raw logits (a temperature scales both
    alike). A multi-label model: (images whose every label's decision agrees, largest
    difference of calibrated probabilities, images agreeing per label)."""
    meta = reference.metadata
    if not len(images):
        return 0, 0.0, [0] * len(meta.classes) if meta.multi_label else None
    pair = [
        torch.from_numpy(raw_logits(reference, images)),
        torch.from_numpy(exported_logits(images)),
    ]
    if not meta.multi_label:
        expected, got = (torch.softmax(z, 1) for z in pair)
        agree = int((expected.argmax(1) == got.argmax(1)).sum())
        return agree, float((expected - got).abs().max()), None
    limits = labels.thresholds(meta.label_thresholds or [])
    expected, got = (
        labels.probabilities(labels.calibrate(z, meta.label_calibration).numpy()) for z in pair
    )
    same = labels.labels_on(expected, limits) == labels.labels_on(got, limits)
    diff = float(np.abs(expected - got).max())
    return int(same.all(1).sum()), diff, same.sum(0).tolist()


def _output_path(model, out, ending: str) -> Path:
    """``out``, or beside MODEL (here for the bundled model) as NAME + ``ending``."""
    source = Path(model) if model else Path(DEFAULT_BUNDLE)
    target = Path(out) if out else source.with_name(source.stem + ending)
    suffix = "." + ending.rsplit(".", 1)[-1]
    if target.suffix.lower() != suffix:
        raise UserInputError(f"the output file must end in {suffix}: {target}")
    if target.parent and not target.parent.is_dir():
        raise UserInputError(f"the output folder does not exist: {target.parent}")
    if target.resolve() == Path(model or default_model_path()).resolve():
        raise UserInputError(f"the output would overwrite the model itself: {target}")
    return target


def _write_verified(
    reference: TorchBackend,
    target: Path,
    write: Callable[[Path], Callable[[np.ndarray], np.ndarray]],
    images: np.ndarray | None,
    *,
    max_changed: float,
    max_diff: float,
    what: str,
    opset: int | None = None,
) -> ExportResult:
    """``write`` the export to a partial file and return its logits function; keep the
    file only if it reproduces ``reference``."""
    if images is None:
        images = verification_images(reference.metadata.input_size)
    limits = f"limits {max_changed:.0%} changed, " if max_changed else "limit "
    limits += f"{max_diff:g}"
    draft = target.with_name(f".{target.name}.partial")
    try:
        agree, diff, per_label = verify(reference, write(draft), images)
        if len(images) - agree > max_changed * len(images) or not diff <= max_diff:
            agreeing = "top-1 agrees" if per_label is None else "every label agrees"
            raise ExportError(
                f"{what}: {agreeing} on {agree} of {len(images)} images, max probability "
                f"difference {diff:.2e} ({limits})"
            )
        os.replace(draft, target)
    finally:
        draft.unlink(missing_ok=True)
    size = target.stat().st_size
    return ExportResult(target, opset, len(images), agree, diff, size, limits, per_label)


def export_onnx(
    model: str | os.PathLike | None,
    out: str | os.PathLike | None = None,
    *,
    opset: int = DEFAULT_OPSET,
    verify_images: np.ndarray | None = None,
) -> ExportResult:
    """Export, verify, then move the file into place (a failed check leaves nothing)."""
    require_onnx_extra()
    import onnx

    reference = _reference(model, "export takes a .safetensors bundle, not an ONNX file")
    target = _output_path(model, out, ".onnx")
    proto = _build_onnx(reference, opset)

    def write(path: Path):
        onnx.save_model(proto, str(path), save_as_external_data=False)
        return OnnxBackend(path, threads=torch.get_num_threads()).graph_logits

    return _write_verified(
        reference,
        target,
        write,
        verify_images,
        max_changed=0,
        max_diff=MAX_PROB_DIFF,
        what="the ONNX model does not reproduce the original",
        opset=opset,
    )


def export_half(
    model: str | os.PathLike | None,
    out: str | os.PathLike | None = None,
    *,
    verify_images: np.ndarray | None = None,
) -> ExportResult:
    """Write the bundle with float16 weights, verify it against the original, then move it
    into place (a failed check leaves nothing)."""
    reference = _reference(model, "--format fp16 takes a .safetensors bundle, not an ONNX file")
    target = _output_path(model, out, ".fp16.safetensors")
    bundle = reference.bundle
    half = {k: v.half() if v.is_floating_point() else v for k, v in bundle.state_dict.items()}
    overflow = [k for k, v in half.items() if v.is_floating_point() and not v.isfinite().all()]
    if overflow:
        raise ExportError(
            f"{len(overflow)} weight tensor(s) exceed float16's range (65504), e.g. "
            f"{overflow[0]}: keep this model in fp32"
        )

    def write(path: Path):
        save_bundle(path, half, dict(bundle.metadata), bundle.gate)  # the gate is int8 already
        return partial(raw_logits, TorchBackend(load_bundle(path)))

    return _write_verified(
        reference,
        target,
        write,
        verify_images,
        max_changed=HALF_MAX_FLIPS,
        max_diff=HALF_MAX_PROB_DIFF,
        what="the float16 weights change the model too much",
    )
