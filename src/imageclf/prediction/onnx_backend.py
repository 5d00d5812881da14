"""The onnxruntime backend: an exported ``.onnx`` model behind the ``Backend`` protocol.

The graph ``imageclf export`` writes takes the model's input as decoded pixels
(``images``: uint8, N x S x S x 3, RGB) and returns ``logits`` (float32, N x classes);
normalisation is inside the graph, so any onnxruntime client only resizes and feeds
pixels. The bundle's metadata travels in the file's metadata props (``imageclf`` key,
the same JSON a bundle holds), so the file alone is enough to serve.

Decoding and resizing stay ``Predictor``'s (one preprocessing path for both backends);
only the forward pass differs, TTA views included (made in numpy here). onnxruntime
gives no gradients, so ``can_explain`` is False: no Grad-CAM.

The file is untrusted: ``onnx_graph`` checks it before onnxruntime opens it (signature,
sizes, no external data or control flow), a probe pass on two blank pictures checks
what it answers, and every pass after that is checked again (float32, one finite row
per picture), so a broken graph is one error line, never a 500 or a short answer.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from ..errors import BundleError, ModelOutputError, UserInputError, import_extra
from ..fileio import parse_json, read_file_capped
from ..models.bundle import missing_model_message
from ..models.metadata import BundleMetadata
from . import onnx_graph
from .backends import checked_logits, probe_pictures
from .inference import tta_views
from .onnx_graph import INPUT_NAME, OUTPUT_NAME, GraphFacts

ONNX_FORMAT = "imageclf-onnx/1"
METADATA_KEY = "imageclf"  # the bundle's metadata, JSON
FORMAT_KEY = "format"


def import_onnxruntime():
    """onnxruntime, or the one ``MissingExtraError`` for the onnx extra."""
    return import_extra("onnxruntime", "onnx", "running an ONNX model (onnxruntime)")


def read_onnx_metadata(props: dict[str, str]) -> BundleMetadata:
    """The bundle metadata stored in an exported file's props, checked like a bundle's."""
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


def read_onnx_file(path: Path) -> tuple[bytes, BundleMetadata, GraphFacts]:
    """The file's bytes, metadata and facts once ``onnx_graph`` found nothing to refuse:
    nothing of it has reached onnxruntime yet."""
    if not path.is_file():
        raise BundleError(missing_model_message(path))
    try:
        data = read_file_capped(path, onnx_graph.MAX_FILE_BYTES)
    except UserInputError as exc:
        raise BundleError(str(exc)) from None
    model = onnx_graph.inspect_graph(data, path)
    about = onnx_graph.facts(model)
    metadata = read_onnx_metadata(about.props)
    onnx_graph.check_signature(model, path, metadata.input_size, len(metadata.classes))
    onnx_graph.check_sizes(model, path)
    return data, metadata, about


class OnnxBackend:
    """An onnxruntime session on one exported file (a ``Backend``; no Grad-CAM)."""

    name = "onnxruntime"
    can_explain = False

    def __init__(self, path: str | os.PathLike, *, device: str = "cpu", threads: int = 1) -> None:
        ort = import_onnxruntime()
        path = Path(path)
        if device not in ("cpu", "auto"):
            raise UserInputError("ONNX models run on the CPU here (onnxruntime); use --device cpu")
        data, self.metadata, self.facts = read_onnx_file(path)
        options = ort.SessionOptions()
        options.intra_op_num_threads = max(1, threads)
        options.inter_op_num_threads = 1
        options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
        # Server workers share the cores: an idle pool thread must not spin on one.
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(
                data, sess_options=options, providers=["CPUExecutionProvider"]
            )
        except Exception as exc:  # onnxruntime raises its own types for bad files
            raise BundleError(f"{path} is not a readable ONNX model ({_first_line(exc)})") from None
        self.device = torch.device("cpu")
        try:  # what the graph says is checked; now what it does, on two blank pictures
            self.graph_logits(probe_pictures(self.metadata.input_size))
        except ModelOutputError as exc:
            raise BundleError(f"{path}: {exc}") from None

    @classmethod
    def open(
        cls, path: str | os.PathLike, *, device: str = "cpu", precision: str = "fp32"
    ) -> OnnxBackend:
        """``Predictor.load``'s settings, checked for what onnxruntime can do here."""
        if precision not in ("fp32", "auto"):
            raise UserInputError("ONNX models run in fp32; use --precision fp32")
        # One thread knob for both backends: the server sets torch's per worker.
        return cls(path, device=device, threads=torch.get_num_threads())

    def graph_logits(self, batch_u8: np.ndarray) -> np.ndarray:
        """The graph's raw logits (N, classes) for prepared uint8 NHWC images, checked:
        float32, one finite row per picture (``ModelOutputError`` otherwise)."""
        batch = np.ascontiguousarray(batch_u8, dtype=np.uint8)
        classes = len(self.metadata.classes)
        if len(batch) == 0:
            return np.zeros((0, classes), np.float32)
        try:
            out = self.session.run([OUTPUT_NAME], {INPUT_NAME: batch})[0]
        except Exception as exc:  # onnxruntime's own types: the graph failed on this batch
            raise ModelOutputError(f"the ONNX model failed to run ({_first_line(exc)})") from None
        if not isinstance(out, np.ndarray) or out.dtype != np.float32:
            kind = getattr(out, "dtype", type(out).__name__)
            raise ModelOutputError(f"the ONNX model answered {kind} values, not float32 logits")
        checked_logits(torch.from_numpy(out), len(batch), classes)
        return out

    def logits(self, batch_u8: np.ndarray, *, tta: bool = False) -> torch.Tensor:
        """Uncalibrated logits as the torch backend makes them: the graph's, or with TTA
        the views' weighted log-probabilities (the views shifted as uint8 pictures; a
        multi-label model's weighted logits, as ``inference.predict_logits``)."""
        if not tta:
            return torch.from_numpy(self.graph_logits(batch_u8))
        pixels = torch.from_numpy(np.ascontiguousarray(batch_u8)).permute(0, 3, 1, 2)
        multi = self.metadata.multi_label
        return sum(
            weight * _tta_view(torch.from_numpy(self.graph_logits(_pixels(view))), multi)
            for weight, view in tta_views(pixels.float())
        )


def _tta_view(logits: torch.Tensor, multi_label: bool) -> torch.Tensor:
    """What TTA averages: log-probabilities, or a multi-label model's logits themselves."""
    return logits if multi_label else torch.log_softmax(logits, 1)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:200] if text else type(exc).__name__


def _pixels(view: torch.Tensor) -> np.ndarray:
    """A TTA view (N x 3 x H x W, whole-number floats) back to the graph's uint8 NHWC."""
    return view.permute(0, 2, 3, 1).to(torch.uint8).contiguous().numpy()
