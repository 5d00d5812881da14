"""The official CIFAR-10 python batches (the archive or its extracted folder).

The batches are pickles, read with a restricted unpickler that allows only the numpy
arrays they hold, so a hostile file cannot run code while we read it. Each image is
named by its batch file and position in it (``data_batch_3[17]``) for the reports.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError
from ..imaging import resize_for_model
from .dataset import TEST, TRAIN
from .memory import check_memory

CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)
CIFAR_BATCHES = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]


class _CifarUnpickler(pickle.Unpickler):
    """The official batches are pickles; allow only what they need, so a hostile
    file cannot run code while we read it."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
            ("_codecs", "encode"),  # how protocol-2 pickles spell bytes; harmless
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) not in self._ALLOWED:
            raise DataError(f"refusing to load {module}.{name} from a CIFAR batch file")
        return super().find_class(module, name)


def _load_cifar_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    try:
        batch = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
        pixels = np.asarray(batch[b"data"], dtype=np.uint8)
        labels = np.asarray(batch[b"labels"], dtype=np.int64)
        images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"CIFAR batch {name} is corrupt ({exc})") from None
    if len(images) != len(labels):
        raise DataError(f"CIFAR batch {name} has {len(images)} images but {len(labels)} labels")
    return np.ascontiguousarray(images), labels


def _cifar_meta(data: bytes | None) -> list[str]:
    default = list(CIFAR10_CLASSES)
    if data is None:
        return default
    try:
        meta = _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
        return [n.decode() if isinstance(n, bytes) else str(n) for n in meta[b"label_names"]]
    except Exception:
        return default


def find_cifar_dir(path: Path) -> Path | None:
    """The folder holding the batches: ``path`` itself or its ``cifar-10-batches-py``."""
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file():
            return candidate
    return None


def assemble_cifar(files: dict[str, bytes], source: str, size: int) -> tuple:
    """(images, labels, partition, classes, names, skipped) from the batch files'
    bytes by file name; images resized from 32 to ``size`` when they differ."""
    missing = [b for b in CIFAR_BATCHES if b not in files]
    if missing:
        raise DataError(f"{source} is missing CIFAR batches: {', '.join(missing)}")
    parts = [_load_cifar_batch(files[b], b) for b in CIFAR_BATCHES]
    images = np.concatenate([p[0] for p in parts])
    labels = np.concatenate([p[1] for p in parts])
    partition = np.concatenate(
        [
            np.full(len(p[1]), TEST if b == "test_batch" else TRAIN, np.uint8)
            for b, p in zip(CIFAR_BATCHES, parts, strict=True)
        ]
    )
    classes = _cifar_meta(files.get("batches.meta"))
    # A report names each image by its batch file and position in it.
    names = np.array(
        [f"{b}[{i}]" for b, p in zip(CIFAR_BATCHES, parts, strict=True) for i in range(len(p[1]))]
    )
    if size != 32:
        check_memory(len(images), size, source)
        images = np.stack([resize_for_model(Image.fromarray(im), size) for im in images])
    return images, labels, partition, classes, names, []
