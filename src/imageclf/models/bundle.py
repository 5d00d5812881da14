"""The model bundle: one ``.safetensors`` file with weights and self-describing metadata.

safetensors never unpickles, so opening a bundle cannot run code. A sha256
digest over the metadata and every tensor's bytes is stored too, so a
truncated or edited file is refused with a clear message instead of
producing silently wrong predictions. A valid digest proves only that nobody
changed the file since it was written, not that its writer was friendly, so
the metadata is also checked against a schema (``BundleMetadata.check``) and
the architecture it names is built on the ``meta`` device (no memory) and
compared with the stored tensors before any real model is allocated.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import math
import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

from ..errors import BundleError
from ..fileio import atomic_write, parse_json, unreadable_reason
from ..version import __version__
from .class_names import MAX_TEXT, check_class_names, check_text
from .registry import build, names

FORMAT = "imageclf-bundle/1"
REQUIRED_KEYS = ("architecture", "arch_kwargs", "classes", "input_size", "normalization")
# The input sizes a bundle may declare. Training refuses others too, so every bundle it
# writes loads. 512 keeps a full 64-image request of prepared inputs under ~200 MB.
MIN_INPUT_SIZE, MAX_INPUT_SIZE = 8, 512


class BundleMetadata(dict):
    """A bundle's JSON metadata (a plain dict, as stored) with typed accessors.

    ``check`` validates it once when the bundle is loaded, so every accessor can trust
    its type: callers write ``meta.input_size``, never ``int(meta.get(...) or ...)``.
    """

    @property
    def architecture(self) -> str:
        return self["architecture"]

    @property
    def arch_kwargs(self) -> dict[str, Any]:
        return self["arch_kwargs"]

    @property
    def classes(self) -> list[str]:
        return list(self["classes"])

    @property
    def input_size(self) -> int:
        return self["input_size"]

    @property
    def source_size(self) -> int | None:
        """The side training pictures were made at (CIFAR: 32), below the input size: served
        pictures are reduced to it first, so the model sees what it learnt from."""
        return (self.get("preprocessing") or {}).get("source_size")

    @property
    def mean(self) -> list[float]:
        return list(self["normalization"]["mean"])

    @property
    def std(self) -> list[float]:
        return list(self["normalization"]["std"])

    @property
    def name(self) -> str:
        return self.get("name") or self.architecture

    @property
    def recipe(self) -> str | None:
        return self.get("recipe")

    @property
    def config(self) -> dict[str, Any]:
        """The training config (empty for bundles not written by ``imageclf train``)."""
        return self.get("config") or {}

    @property
    def data_source(self) -> str | None:
        return (self.get("data") or {}).get("source")

    @property
    def data_fingerprint(self) -> str | None:
        return (self.get("data") or {}).get("fingerprint")

    @property
    def split(self) -> dict[str, Any] | None:
        """The recorded split: ``name``, ``seed``, ``sizes`` and ``digest``."""
        return self.get("split")

    @property
    def metrics(self) -> dict[str, Any]:
        return self.get("metrics") or {}

    @property
    def test_accuracy(self) -> float | None:
        value = (self.metrics.get("test") or {}).get("accuracy")
        return float(value) if _is_number(value) else None

    @property
    def temperature(self) -> float:
        """Logits are divided by this before the softmax (1.0: the bundle is not calibrated)."""
        return float((self.get("calibration") or {}).get("temperature", 1.0))

    @property
    def unsure_below(self) -> float | None:
        """Calibrated top-1 confidence under which a prediction should say it is unsure;
        chosen on validation data (``calibration.threshold``), None when not calibrated."""
        value = (self.get("calibration") or {}).get("threshold")
        return float(value) if _is_number(value) else None

    @property
    def created(self) -> str | None:
        return self.get("created")

    @property
    def versions(self) -> dict[str, str]:
        return self.get("versions") or {}

    @classmethod
    def check(cls, raw: Any) -> BundleMetadata:
        """The schema: raises ``ValueError`` naming the first offending field."""
        if not isinstance(raw, dict):
            raise ValueError("metadata is not a JSON object")
        missing = [k for k in REQUIRED_KEYS if k not in raw]
        if missing:
            raise ValueError(f"lacks metadata: {', '.join(missing)}")
        check_text(raw["architecture"], "architecture")
        _expect(isinstance(raw["arch_kwargs"], dict), "arch_kwargs must be a JSON object")
        check_class_names(raw["classes"])
        size = raw["input_size"]
        _expect(
            type(size) is int and MIN_INPUT_SIZE <= size <= MAX_INPUT_SIZE,
            f"input_size must be an integer from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE}, "
            f"got {json.dumps(size)[:40]}",
        )
        norm = raw["normalization"]
        _expect(isinstance(norm, dict), "normalization must be a JSON object")
        for key, low in (("mean", -1e3), ("std", 1e-6)):
            values = norm.get(key)
            _expect(
                isinstance(values, list)
                and len(values) == 3
                and all(_is_number(v) and low <= v <= 1e3 for v in values),
                f"normalization.{key} must be 3 numbers from {low:g} to 1000",
            )
        for key in ("name", "recipe", "created"):
            if raw.get(key) is not None:
                check_text(raw[key], key, limit=10 * MAX_TEXT)
        for key in ("config", "data", "metrics", "versions"):
            _expect(raw.get(key) is None or isinstance(raw[key], dict), f"{key} must be an object")
        for key in ("source", "fingerprint"):
            value = (raw.get("data") or {}).get(key)
            _expect(value is None or isinstance(value, str), f"data.{key} must be a string")
        calibration = raw.get("calibration")
        if calibration is not None:
            _expect(isinstance(calibration, dict), "calibration must be an object")
            t = calibration.get("temperature", 1.0)
            _expect(_is_number(t) and 0.01 <= t <= 100, "calibration.temperature must be 0.01-100")
            th = calibration.get("threshold")
            _expect(th is None or (_is_number(th) and 0 <= th <= 1), "calibration.threshold: 0-1")
        split = raw.get("split")
        if split is not None:
            _expect(
                isinstance(split, dict)
                and isinstance(split.get("name"), str)
                and type(split.get("seed")) is int
                and 0 <= split["seed"] < 2**32
                and isinstance(split.get("sizes", {}), dict)
                and isinstance(split.get("digest", ""), str),
                "split must be an object with a name, an integer seed from 0 to 2^32-1, "
                "sizes and a digest",
            )
        _check_read_fields(raw)
        return cls(raw)


# The parts of ``metrics`` and ``config`` that evaluate, info and the web app read: each
# checked at load, so a bundle that loads can be described and evaluated (a metrics.test
# of "x" used to let serve say ready while every page was a 500).
METRIC_SPLITS = ("train", "val", "test", "val_tta", "test_tta")
CONFIG_FIELDS = {  # field -> (check, what it must be)
    "val_size": (lambda v: v is None or (type(v) is int and v >= 0), "null or an integer >= 0"),
    "subset": (lambda v: v is None or (type(v) is int and v >= 1), "null or an integer >= 1"),
    "label_smoothing": (lambda v: v is None or (_is_number(v) and 0 <= v < 1), "a number 0-1"),
}


def _check_read_fields(raw: dict) -> None:
    metrics = raw.get("metrics") or {}
    for split in METRIC_SPLITS:
        entry = metrics.get(split)
        if entry is None:
            continue
        _expect(isinstance(entry, dict), f"metrics.{split} must be an object")
        for key, high in (("accuracy", 1.0), ("loss", math.inf)):
            value = entry.get(key)
            _expect(
                value is None or (_is_number(value) and 0 <= value <= high),
                f"metrics.{split}.{key} must be a number from 0 to {high:g}",
            )
    config = raw.get("config") or {}
    for key, (ok, what) in CONFIG_FIELDS.items():
        _expect(ok(config.get(key)), f"config.{key} must be {what}")
    preprocessing = raw.get("preprocessing")
    _expect(
        preprocessing is None or isinstance(preprocessing, dict), "preprocessing must be an object"
    )
    source = (preprocessing or {}).get("source_size")
    _expect(
        source is None or (type(source) is int and MIN_INPUT_SIZE <= source <= raw["input_size"]),
        f"preprocessing.source_size must be a whole number from {MIN_INPUT_SIZE} to the input size",
    )


def finite_or_null(value: Any) -> Any:
    """Metadata as JSON can hold it: NaN and infinity (which ``json.dumps`` writes as
    bare ``NaN``, invalid JSON) become null, so every bundle we write loads again."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: finite_or_null(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [finite_or_null(v) for v in value]
    return value


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _expect(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


@dataclass
class Bundle:
    state_dict: dict[str, torch.Tensor]
    metadata: BundleMetadata


def versions() -> dict[str, str]:
    import numpy
    import PIL

    return {
        "imageclf": __version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "pillow": PIL.__version__,
        "python": platform.python_version(),
    }


def _digest(metadata_json: str, tensors: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256(metadata_json.encode())
    for key in sorted(tensors):
        t = tensors[key].contiguous()
        h.update(f"|{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def save_bundle(path: str | os.PathLike, state_dict: dict[str, torch.Tensor], metadata: dict):
    """Write atomically; ``metadata`` must hold at least ``REQUIRED_KEYS`` and pass the
    schema (a ``ValueError`` otherwise: writing a bundle nobody can load is a bug)."""
    metadata = finite_or_null(metadata)
    BundleMetadata.check(json.loads(json.dumps(metadata)))
    meta = {
        "format": FORMAT,
        "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
        "versions": versions(),
        **metadata,
    }
    # Shared storage (tied weights) and non-contiguous views are not allowed by safetensors.
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta_json = json.dumps(meta, sort_keys=True)
    header = {"imageclf": meta_json, "digest": _digest(meta_json, tensors), "format": FORMAT}
    blob = _st_save(tensors, metadata=header)
    with atomic_write(path) as handle:
        handle.write(blob)
    return Path(path)


def load_bundle(path: str | os.PathLike) -> Bundle:
    """Read, verify the digest, check the metadata schema and that the architecture it
    names matches the stored tensors; any failure is one ``BundleError`` line."""
    path = Path(path)
    if not path.is_file():
        raise BundleError(missing_model_message(path))
    try:
        with safe_open(str(path), framework="pt") as handle:
            header = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise BundleError(
            f"{path} is not a readable model file (truncated or not safetensors: {exc})"
        ) from None
    if header.get("format") != FORMAT or "imageclf" not in header:
        raise BundleError(f"{path} is a safetensors file but not an imageclf model bundle")
    if header.get("digest") != _digest(header["imageclf"], tensors):
        raise BundleError(
            f"{path} is corrupt or was modified after it was written (digest mismatch)"
        )
    raw = parse_json(header["imageclf"], f"{path}: the metadata", BundleError)
    try:
        metadata = BundleMetadata.check(raw)
    except ValueError as exc:
        raise BundleError(f"{path} has bad metadata: {exc}") from None
    bundle = Bundle(tensors, metadata)
    _check_shapes(bundle, path)
    _check_finite(bundle, path)
    return bundle


def missing_model_message(path: Path) -> str:
    """Why ``path`` is no model file, in words: missing, or a folder, FIFO or device
    (found with ``stat``, so a FIFO is never opened and nothing waits for a writer)."""
    reason = unreadable_reason(path)
    if reason == "no such file or folder":
        return f"model file not found: {path}"
    return f"cannot read model {path}: " + (f"it {reason}" if reason.startswith("is ") else reason)


def _check_finite(bundle: Bundle, path: Path) -> None:
    """NaN or infinite weights make NaN predictions, which JSON cannot carry: refused."""
    for key, tensor in bundle.state_dict.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise BundleError(f"{path}: weight {key} holds NaN or infinity; the model is broken")


def _build(meta: BundleMetadata) -> torch.nn.Module:
    return build(
        meta.architecture,
        num_classes=len(meta.classes),
        input_size=meta.input_size,
        **meta.arch_kwargs,
    )


def _check_shapes(bundle: Bundle, path: Path) -> None:
    """Build the architecture on the meta device (shapes only, no memory) and compare it
    with the stored tensors: absurd or wrong ``arch_kwargs`` never allocate anything."""
    meta = bundle.metadata
    if meta.architecture not in names():
        return  # e.g. an optional extra not installed here: build_model says so if used
    try:
        with torch.device("meta"):
            skeleton = _build(meta)
    except Exception as exc:  # the constructor's own complaint about the metadata
        first = (str(exc).splitlines() or [type(exc).__name__])[0][:200]
        raise BundleError(
            f"{path} has bad metadata: architecture {meta.architecture} cannot be built "
            f"from arch_kwargs {json.dumps(meta.arch_kwargs)[:100]} at input_size "
            f"{meta.input_size} ({type(exc).__name__}: {first})"
        ) from None
    expected = {k: tuple(v.shape) for k, v in skeleton.state_dict().items()}
    stored = {k: tuple(v.shape) for k, v in bundle.state_dict.items()}
    if expected != stored:
        missing = sorted(set(expected) - set(stored))
        unexpected = sorted(set(stored) - set(expected))
        wrong = [k for k in sorted(set(expected) & set(stored)) if expected[k] != stored[k]]
        if wrong:
            what = f"{wrong[0]} is {stored[wrong[0]]} in the file but {expected[wrong[0]]} here"
        else:
            what = f"missing {missing[:3]}, unexpected {unexpected[:3]}"
        raise BundleError(
            f"{path}: model weights do not match architecture {meta.architecture} "
            f"with its arch_kwargs: {what}"
        )


def build_model(bundle: Bundle) -> torch.nn.Module:
    """Instantiate the bundle's architecture and load its weights (strict)."""
    meta = bundle.metadata
    model = _build(meta)
    try:
        model.load_state_dict(bundle.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(
            f"model weights do not match architecture {meta.architecture}: {first}"
        ) from None
    return model.eval()
