"""The model bundle: one ``.safetensors`` file with weights and self-describing metadata.

safetensors never unpickles, so opening a bundle cannot run code. A sha256
digest over the metadata and every tensor's bytes is stored too, so a
truncated or edited file is refused with a clear message instead of
producing silently wrong predictions. A valid digest proves only that nobody
changed the file since it was written, not that its writer was friendly, so
the metadata is also checked against a schema (``metadata.BundleMetadata.check``) and
the architecture it names is built on the ``meta`` device (no memory) and
compared with the stored tensors before any real model is allocated.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

from ..errors import BundleError
from ..fileio import atomic_write, parse_json, unreadable_reason
from ..version import __version__
from .metadata import (
    MAX_INPUT_SIZE,
    MIN_INPUT_SIZE,
    REQUIRED_KEYS,
    BundleMetadata,
    finite_or_null,
)
from .registry import build, names

FORMAT = "imageclf-bundle/1"
GATE_PREFIX = "gate."  # the ImageNet gate's tensors (``prediction.gate``)
# Re-exported: the file format's readers and writers import these from here.
__all__ = [
    "FORMAT",
    "MAX_INPUT_SIZE",
    "MIN_INPUT_SIZE",
    "REQUIRED_KEYS",
    "Bundle",
    "BundleMetadata",
    "build_model",
    "load_bundle",
    "save_bundle",
]


@dataclass
class Bundle:
    state_dict: dict[str, torch.Tensor]
    metadata: BundleMetadata
    # The ImageNet gate's tensors (``prediction.gate``), without their prefix; empty
    # unless the metadata has a ``gate``.
    gate: dict[str, torch.Tensor] = field(default_factory=dict)


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


def save_bundle(
    path: str | os.PathLike,
    state_dict: dict[str, torch.Tensor],
    metadata: dict,
    gate: dict[str, torch.Tensor] | None = None,
):
    """Write atomically; ``metadata`` must hold at least ``REQUIRED_KEYS`` and pass the
    schema (a ``ValueError`` otherwise: writing a bundle nobody can load is a bug).
    ``gate``: the ImageNet gate's tensors (``Bundle.gate``), when the metadata has one."""
    metadata = finite_or_null(metadata)
    BundleMetadata.check(json.loads(json.dumps(metadata)))
    if bool(gate) != (metadata.get("gate") is not None):
        raise ValueError("a gate needs both its metadata and its tensors")
    state_dict = {**state_dict, **{GATE_PREFIX + k: v for k, v in (gate or {}).items()}}
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
    gate = {k[len(GATE_PREFIX) :]: v for k, v in tensors.items() if k.startswith(GATE_PREFIX)}
    if bool(gate) != (metadata.get("gate") is not None):
        raise BundleError(f"{path} has bad metadata: a gate needs both its metadata and tensors")
    model = {k: v for k, v in tensors.items() if not k.startswith(GATE_PREFIX)}
    bundle = Bundle(model, metadata, gate)
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
    gate = {GATE_PREFIX + k: v for k, v in bundle.gate.items()}
    for key, tensor in {**bundle.state_dict, **gate}.items():
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
