"""The model bundle: one ``.safetensors`` file with weights and self-describing metadata.

safetensors never unpickles, so opening a bundle cannot run code. A sha256
digest over the metadata and every tensor's bytes is stored too, so a
truncated or edited file is refused with a clear message instead of
producing silently wrong predictions.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save as _st_save

from .errors import BundleError
from .fileio import atomic_write

FORMAT = "imageclf-bundle/1"
REQUIRED_KEYS = ("architecture", "arch_kwargs", "classes", "input_size", "normalization")


@dataclass
class Bundle:
    state_dict: dict[str, torch.Tensor]
    metadata: dict

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def name(self) -> str:
        return str(self.metadata.get("name") or self.metadata["architecture"])


def versions() -> dict[str, str]:
    import numpy
    import PIL

    from . import __version__

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
    """Write atomically; ``metadata`` must hold at least ``REQUIRED_KEYS``."""
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise ValueError(f"bundle metadata lacks {missing}")
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


def read_metadata(path: str | os.PathLike) -> dict:
    """Metadata only (cheap: reads the header), after the same integrity checks."""
    return load_bundle(path).metadata


def load_bundle(path: str | os.PathLike) -> Bundle:
    path = Path(path)
    if not path.is_file():
        raise BundleError(f"model file not found: {path}")
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
    try:
        metadata = json.loads(header["imageclf"])
    except json.JSONDecodeError:
        raise BundleError(f"{path} has unreadable metadata") from None
    missing = [k for k in REQUIRED_KEYS if k not in metadata]
    if missing:
        raise BundleError(f"{path} lacks metadata: {', '.join(missing)}")
    return Bundle(tensors, metadata)


def build_model(bundle: Bundle) -> torch.nn.Module:
    """Instantiate the bundle's architecture and load its weights (strict)."""
    from .models import build

    meta = bundle.metadata
    model = build(
        meta["architecture"],
        num_classes=len(meta["classes"]),
        input_size=int(meta["input_size"]),
        **meta["arch_kwargs"],
    )
    try:
        model.load_state_dict(bundle.state_dict, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise BundleError(
            f"model weights do not match architecture {meta['architecture']}: {first}"
        ) from None
    return model.eval()
