"""Several models in one server: their names, the version each serves, what each costs.

``serve --model NAME=PATH`` (repeatable) names each model; the first is the default,
which today's routes serve. Each name has a ``ModelSlot`` holding its current
``Loaded`` version. A request takes ``slot.current`` once and uses that object to the
end, so a reload (``web/reload.py``) that swaps the reference never changes a model
under a request in flight: it finishes on the version it started with, and its answer
names that version.

A version is the sha256 of the bytes that were loaded (the first 16 hex digits), never
of the file read again afterwards: a file replaced between the two reads would name a
version the server does not run.
"""

from __future__ import annotations

import hashlib
import os
import re
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import UserInputError
from ..prediction.predictor import Predictor, default_model_path, is_onnx_path
from ..prediction.traced import TRACE_ON_PASS, eager

DEFAULT_NAME = "default"
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
NAME_RULE = "1-32 characters of a-z, 0-9, '_' and '-', starting with a letter or digit"
MB = 1024 * 1024


@dataclass(frozen=True)
class ModelSpec:
    """One ``--model`` value: the name it is served as and its file (None: bundled)."""

    name: str
    path: Path | None

    @property
    def source(self) -> Path:
        return self.path or default_model_path()


def parse_model_specs(values: Sequence[str | os.PathLike]) -> list[ModelSpec]:
    """``NAME=PATH`` or a plain ``PATH`` per value (none: the bundled model as "default").

    A plain path is named after its file (``cats.safetensors`` -> ``cats``); names must
    be unique and match ``NAME_PATTERN`` (they appear in URLs, metrics labels and logs).
    """
    specs = [_parse_one(str(value)) for value in values] or [ModelSpec(DEFAULT_NAME, None)]
    seen: set[str] = set()
    for spec in specs:
        if spec.name in seen:
            raise UserInputError(f"--model: the name {spec.name!r} is given twice")
        seen.add(spec.name)
    return specs


def _parse_one(value: str) -> ModelSpec:
    name, sep, path = value.partition("=")
    if not sep or os.sep in name or Path(value).is_file():
        return ModelSpec(_name_from_file(Path(value)), Path(value))
    if not NAME_PATTERN.fullmatch(name):
        raise UserInputError(f"--model: bad model name {name!r} ({NAME_RULE})")
    if not path:
        raise UserInputError(f"--model {value}: no file after '='")
    return ModelSpec(name, Path(path))


def _name_from_file(path: Path) -> str:
    """A served name from a file name: lower case, other characters as '-'."""
    name = re.sub(r"[^a-z0-9_-]+", "-", path.stem.lower()).strip("-_")[:32]
    return name if NAME_PATTERN.fullmatch(name) else DEFAULT_NAME


def content_version(data: bytes) -> str:
    """A model file's version: the sha256 of its bytes, first 16 hex digits (the same
    rule for a bundle and an .onnx; every retrained file differs)."""
    return hashlib.sha256(data).hexdigest()[:16]


# ---------------------------------------------------------------- memory
@dataclass(frozen=True)
class MemoryCost:
    """What one loaded model holds in each worker: its parameters, and the working
    memory of a full merged batch (``serve --max-batch`` pictures) going through it."""

    parameter_bytes: int
    working_bytes: int

    @property
    def total_bytes(self) -> int:
        return self.parameter_bytes + self.working_bytes

    def as_dict(self) -> dict[str, float]:
        return {
            "parameters_mb": round(self.parameter_bytes / MB, 2),
            "working_mb": round(self.working_bytes / MB, 2),
            "total_mb": round(self.total_bytes / MB, 2),
        }

    def text(self) -> str:
        d = self.as_dict()
        return (
            f"{d['total_mb']:.1f} MB ({d['parameters_mb']:.1f} MB parameters + "
            f"{d['working_mb']:.1f} MB working memory)"
        )


def measure_cost(predictor: Predictor, batch: int, file_bytes: int) -> MemoryCost:
    """Parameter bytes (a torch model's tensors; an ONNX file's size, which its
    initialisers fill) plus working memory measured on a probe pass.

    torch: every layer's output is recorded on one picture; the largest layer's input
    and output live at once, times ``batch`` pictures (inference frees the rest as it
    goes). onnxruntime: the growth of resident memory over a pass of ``batch`` probe
    pictures (its arena keeps what it needed)."""
    model = predictor.model
    if model is None:
        before = _resident_bytes()
        predictor.calibrated_logits(probe_batch(predictor.input_size, batch))
        return MemoryCost(file_bytes, max(0, _resident_bytes() - before))
    # Both of the backend's modules: the bundle's (Grad-CAM) and the folded one
    # (predictions); and the ImageNet gate's network where the bundle has one.
    gate = predictor.gate
    held = (model, predictor.engine.inference_model, *((gate.net,) if gate else ()))
    if predictor.device.type == "cpu" and predictor.precision == "fp32":
        # Each one's frozen trace holds a copy of its weights, and its oneDNN Graph trace
        # for one picture another, in oneDNN's layout (``traced``; measured: 1.4 copies).
        traces = held[1:]
        held += traces + tuple(m for m in traces if m.single is not None)
    tensors = [t for m in held for t in (*m.parameters(), *m.buffers())]
    parameters = sum(t.numel() * t.element_size() for t in tensors)
    return MemoryCost(parameters, _largest_layer_bytes(predictor) * max(1, batch))


def _largest_layer_bytes(predictor: Predictor) -> int:
    import torch

    largest = 0

    def record(module, inputs, output) -> None:
        nonlocal largest
        tensors = [t for t in (*inputs, output) if isinstance(t, torch.Tensor)]
        largest = max(largest, sum(t.numel() * t.element_size() for t in tensors))

    net = predictor.engine.inference_model
    leaves = [m for m in net.modules() if not list(m.children())]
    handles = [m.register_forward_hook(record) for m in leaves]
    try:
        with eager(net):  # a frozen trace would run past the hooks
            predictor.calibrated_logits(probe_batch(predictor.input_size, 1))
    finally:
        for handle in handles:
            handle.remove()
    return largest


def _resident_bytes() -> int:
    try:
        pages = int(Path("/proc/self/statm").read_text().split()[1])
    except (OSError, IndexError, ValueError):
        return 0
    return pages * os.sysconf("SC_PAGE_SIZE")


def probe_batch(size: int, count: int = 1) -> np.ndarray:
    """Probe pictures: a colour gradient, so every channel and position carries signal."""
    ramp = np.linspace(0, 255, size, dtype=np.float32)
    picture = np.stack(
        [np.add.outer(ramp, ramp) / 2, np.tile(ramp, (size, 1)), np.tile(ramp[:, None], size)],
        axis=-1,
    ).astype(np.uint8)
    return np.repeat(picture[None], max(1, count), axis=0)


# ---------------------------------------------------------------- versions
@dataclass(frozen=True)
class Loaded:
    """One version of one served model: the predictor and what it is."""

    name: str
    predictor: Predictor
    version: str
    cost: MemoryCost
    loaded_at: float = field(default_factory=time.time)


def load_checked(name: str, path: Path, version: str, batch: int) -> Loaded:
    """Load ``path`` (whose bytes hash to ``version``) and check it answers a probe
    picture; raises the bundle's own error (``BundleError``) otherwise."""
    predictor = Predictor.load(path)
    predictor.calibrated_logits(probe_batch(predictor.input_size))  # one finite row, checked
    warm(predictor)
    cost = measure_cost(predictor, batch, path.stat().st_size)
    return Loaded(name, predictor, version, cost)


def warm(predictor: Predictor) -> None:
    """A probe photo through everything a request runs, until the frozen traces
    (``prediction.traced``) are made: the first requests never wait for them."""
    gate = predictor.gate
    side = max(predictor.input_size, gate.spec.side if gate else 0)  # one the gate sees
    photo = Image.fromarray(probe_batch(side)[0])
    for _ in range(TRACE_ON_PASS):
        predictor.judged(predictor.prepare(photo)[None], [photo])


class ModelSlot:
    """One served name: its source file and the version it serves now (``current``)."""

    def __init__(self, spec: ModelSpec, *, default: bool) -> None:
        self.spec = spec
        self.name = spec.name
        self.default = default
        self.suffix = ".onnx" if is_onnx_path(spec.path) else ".safetensors"
        self.current: Loaded | None = None
        # The source file's (mtime, size, inode) when it was last read: the watcher
        # checks the file again only when that changes (None: check at the next look).
        self.seen: tuple[int, int, int] | None = None

    def look(self) -> tuple[int, int, int] | None:
        """The source file's (mtime, size, inode) now; None if it cannot be read."""
        try:
            info = self.spec.source.stat()
        except OSError:
            return None
        return (info.st_mtime_ns, info.st_size, info.st_ino)

    def switch(self, loaded: Loaded) -> Loaded | None:
        """Serve ``loaded`` from the next request on (one reference assignment)."""
        old, self.current = self.current, loaded
        return old
