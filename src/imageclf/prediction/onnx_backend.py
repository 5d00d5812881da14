"""The onnxruntime backend: an exported ``.onnx`` model behind the ``Backend`` protocol.

The graph ``imageclf export`` writes takes the model's input as decoded pixels
(``images``: uint8, N x S x S x 3, RGB) and returns ``logits`` (float32, N x classes);
normalisation is inside the graph, so any onnxruntime client only resizes and feeds
pixels. The bundle's metadata travels in the file's metadata props (``imageclf`` key,
the same JSON a bundle holds), so the file alone is enough to serve.

Decoding and resizing stay ``Predictor``'s (one preprocessing path for both backends);
only the forward pass differs, TTA views included (made in numpy here). onnxruntime
gives no gradients, so ``can_explain`` is False: no Grad-CAM.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import BundleError, UserInputError, import_extra
from ..fileio import parse_json
from ..models.bundle import BundleMetadata
from .inference import tta_views

ONNX_FORMAT = "imageclf-onnx/1"
METADATA_KEY = "imageclf"  # the bundle's metadata, JSON
FORMAT_KEY = "format"
INPUT_NAME = "images"
OUTPUT_NAME = "logits"


def import_onnxruntime():
    """onnxruntime, or the one ``MissingExtraError`` for the onnx extra."""
    return import_extra("onnxruntime", "onnx", "running an ONNX model (onnxruntime)")


def read_onnx_metadata(session) -> BundleMetadata:
    """The bundle metadata stored in an exported file, checked like a bundle's."""
    props = session.get_modelmeta().custom_metadata_map
    if props.get(FORMAT_KEY) != ONNX_FORMAT or METADATA_KEY not in props:
        raise BundleError(
            "the ONNX file was not written by 'imageclf export' (no imageclf metadata)"
        )
    raw = parse_json(props[METADATA_KEY], "the ONNX file's imageclf metadata", BundleError)
    try:
        metadata = BundleMetadata.check(raw)
    except ValueError as exc:
        raise BundleError(f"the ONNX file has bad metadata: {exc}") from None
    return metadata


class OnnxBackend:
    """An onnxruntime session on one exported file (a ``Backend``; no Grad-CAM)."""

    name = "onnxruntime"
    can_explain = False

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int = 1) -> None:
        ort = import_onnxruntime()
        path = Path(path)
        if not path.is_file():
            raise BundleError(f"model file not found: {path}")
        if device not in ("cpu", "auto"):
            raise UserInputError("ONNX models run on the CPU here (onnxruntime); use --device cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Server workers share the cores: an idle pool thread must not spin on one.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                str(path), sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for bad files
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise BundleError(f"{path} is not a readable ONNX model ({first})") from None
        self.metadata = read_onnx_metadata(self.session)
        self.device = torch.device("cpu")
        self._check_signature(path)

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, device: str = "cpu", precision: str = "fp32"
    ) -> OnnxBackend:
        """``Predictor.load``'s settings, checked for what onnxruntime can do here."""
        if precision not in ("fp32", "auto"):
            raise UserInputError("ONNX models run in fp32; use --precision fp32")
        # One thread knob for both backends: the server sets torch's per worker.
        return cls(path, device=device, threads=torch.get_num_threads())

    def _check_signature(self, path: Path) -> None:
        size, classes = self.metadata.input_size, len(self.metadata.classes)
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        ok = (
            len(inputs) == 1
            and inputs[0].name == INPUT_NAME
            and inputs[0].type == "tensor(uint8)"
            and list(inputs[0].shape[1:]) == [size, size, 3]
            and outputs
            and outputs[0].name == OUTPUT_NAME
            and outputs[0].shape[-1] == classes
        )
        if not ok:
            raise BundleError(
                f"{path}: the graph's inputs/outputs do not match its metadata "
                f"(expected {INPUT_NAME} uint8 Nx{size}x{size}x3 -> {OUTPUT_NAME} Nx{classes})"
            )

    def graph_logits(self, batch_u8: np.ndarray) -> np.ndarray:
        """The graph's raw logits (N, classes) for prepared uint8 NHWC images."""
        batch = np.ascontiguousarray(batch_u8, dtype=np.uint8)
        if len(batch) == 0:
            return np.zeros((0, len(self.metadata.classes)), np.float32)
        return self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]

    def logits(self, batch_u8: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """Uncalibrated logits as the torch backend makes them: the graph's, or with TTA
        the views' weighted log-probabilities (the views shifted as uint8 pictures)."""
        if not tta:
            return torch.from_numpy(self.graph_logits(batch_u8))
        pixels = torch.from_numpy(np.ascontiguousarray(batch_u8)).permute(0, 3, 1, 2)
        return sum(
            weight * torch.log_softmax(torch.from_numpy(self.graph_logits(_pixels(view))), 1)
            for weight, view in tta_views(pixels.float())
        )


def _pixels(view: torch.Tensor) -> np.ndarray:
    """A TTA view (N x 3 x H x W, whole-number floats) back to the graph's uint8 NHWC."""
    return view.permute(0, 2, 3, 1).to(torch.uint8).contiguous().numpy()
