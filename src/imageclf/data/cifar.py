"""The official CIFAR-10 python batches (the archive or its extracted folder).

The batches are pickles, read with a restricted unpickler that allows only the numpy
arrays they hold, so a hostile file cannot run code while we read it; and within
budgets (bytes, then pickle operations, then the types and shapes of what came out), so
a small hostile file cannot cost gigabytes or minutes either. Each image is named by its
batch file and position in it (``data_batch_3[17]``) for the reports.
"""

from __future__ import annotations

import io
import os
import pickle
import pickletools
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import DataError, UserInputError
from ..fileio import MB, printable, read_file_capped, size_text
from ..imaging import resize_for_model
from ..models.class_names import MAX_TEXT
from .dataset import TEST, TRAIN
from .layout import check_classes
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
CIFAR_FILES = (*CIFAR_BATCHES, "batches.meta")
# An official batch holds 10,000 images of 3,072 bytes (30.7 MB of pixels); re-pickled
# by Python 3 (protocol 2, bytes spelled as latin-1 text) one measured 46.7 MB and 90,152
# pickle operations. Both budgets are checked before anything is unpickled: a 10 MB file
# of one-byte operations (each a new object) measured 2 s and 800 MB unpickled.
MAX_BATCH_BYTES = 64 * MB
MAX_PICKLE_OPS = 250_000


def _latin1(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it (bytes spelled as latin-1 text),
    and nothing else: other codecs (hex, base64) called on their own output would let a
    few bytes of pickle double a string again and again."""
    if not isinstance(text, str) or encoding.replace("-", "") != "latin1":
        raise DataError(f"refusing to encode with {printable(encoding)!r} in a CIFAR batch")
    return text.encode("latin1")


class _CifarUnpickler(pickle.Unpickler):
    """The official batches are pickles; allow only what they need, so a hostile
    file cannot run code while we read it."""

    _ALLOWED = frozenset(
        {
            ("numpy.core.multiarray", "_reconstruct"),
            ("numpy._core.multiarray", "_reconstruct"),
            ("numpy", "ndarray"),
            ("numpy", "dtype"),
        }
    )

    def find_class(self, module: str, name: str):
        if (module, name) == ("_codecs", "encode"):
            return _latin1
        if (module, name) not in self._ALLOWED:
            raise DataError(
                f"refusing to load {printable(module)}.{printable(name)} from a CIFAR batch file"
            )
        return super().find_class(module, name)


def _unpickle(data: bytes, name: str) -> object:
    """A batch file's object, within the byte and operation budgets (``DataError`` naming
    the file and the limit it broke); anything else wrong with it is a DataError too."""
    if len(data) > MAX_BATCH_BYTES:
        raise DataError(
            f"CIFAR file {name} is {size_text(len(data))}; a batch may be at most "
            f"{size_text(MAX_BATCH_BYTES)}"
        )
    try:
        for count, _ in enumerate(pickletools.genops(data), 1):
            if count > MAX_PICKLE_OPS:
                raise DataError(
                    f"CIFAR file {name} holds more than {MAX_PICKLE_OPS:,} pickle operations, "
                    "more than any official batch"
                )
        return _CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except DataError:
        raise
    except Exception as exc:
        raise DataError(f"CIFAR batch {name} is corrupt ({exc})") from None


def _load_cifar_batch(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
    """(images NHWC, labels) of one batch. ``data`` must be a uint8 array of N x 3072 and
    ``labels`` N integers: anything else (a list of lists, say, whose shared rows would
    expand to gigabytes when converted) is refused before it is converted."""
    batch = _unpickle(data, name)
    pixels = batch.get(b"data") if isinstance(batch, dict) else None
    labels = batch.get(b"labels") if isinstance(batch, dict) else None
    if not (
        isinstance(pixels, np.ndarray)
        and pixels.dtype == np.uint8
        and pixels.ndim == 2
        and pixels.shape[1] == 3 * 32 * 32
    ):
        raise DataError(f"CIFAR batch {name} is corrupt (data is not a uint8 array of N x 3072)")
    if isinstance(labels, list) and all(type(v) is int for v in labels):
        labels = np.array(labels, dtype=np.int64) if labels else np.zeros(0, np.int64)
    elif isinstance(labels, np.ndarray) and labels.ndim == 1 and labels.dtype.kind in "iu":
        labels = labels.astype(np.int64)
    else:
        raise DataError(f"CIFAR batch {name} is corrupt (labels are not a list of integers)")
    if len(pixels) != len(labels):
        raise DataError(f"CIFAR batch {name} has {len(pixels)} images but {len(labels)} labels")
    images = pixels.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def _cifar_meta(data: bytes | None, source: str) -> list[str]:
    """The class names of ``batches.meta``, checked like a folder's class names; the
    official names when there is no meta file or it holds none."""
    default = list(CIFAR10_CLASSES)
    if data is None:
        return default
    try:
        meta = _unpickle(data, "batches.meta")
        names = meta[b"label_names"]
    except (DataError, KeyError, TypeError):
        return default
    if not isinstance(names, list) or not all(isinstance(n, bytes | str) for n in names):
        return default
    # Length first: decoding a long name many times over would cost memory for nothing.
    long = next((n for n in names if len(n) > MAX_TEXT), None)
    if long is not None:
        raise DataError(
            f"{source}: batches.meta holds a class name of {len(long):,} characters; "
            f"at most {MAX_TEXT}"
        )
    classes = [n.decode("utf-8", "replace") if isinstance(n, bytes) else n for n in names]
    check_classes(classes, source)
    return classes


def read_cifar_dir(folder: Path) -> dict[str, bytes]:
    """The batch files of an extracted folder by name, each read capped at
    ``MAX_BATCH_BYTES`` (a FIFO or a 30 GB sparse file named ``data_batch_1`` is one
    DataError, never a hang); other files in the folder are not read."""
    files = {}
    for name in CIFAR_FILES:
        path = folder / name
        if not os.path.lexists(path):
            continue  # batches.meta is optional; a missing batch is named by assemble_cifar
        try:
            files[name] = read_file_capped(path, MAX_BATCH_BYTES)
        except UserInputError as exc:
            raise DataError(f"CIFAR file {name}: {exc}") from None
    return files


def find_cifar_dir(path: Path) -> Path | None:
    """The folder holding the batches: ``path`` itself or its ``cifar-10-batches-py``
    (a ``data_batch_1`` that is no regular file counts: reading it says what it is)."""
    for candidate in (path, path / "cifar-10-batches-py"):
        first = candidate / "data_batch_1"
        if os.path.lexists(first) and not first.is_dir():
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
    classes = _cifar_meta(files.get("batches.meta"), source)
    if len(labels) and not (labels.min() >= 0 and labels.max() < len(classes)):
        raise DataError(
            f"{source}: labels run from {labels.min()} to {labels.max()}, but there are "
            f"{len(classes)} classes"
        )
    # A report names each image by its batch file and position in it.
    names = np.array(
        [f"{b}[{i}]" for b, p in zip(CIFAR_BATCHES, parts, strict=True) for i in range(len(p[1]))]
    )
    if size != 32:
        check_memory(len(images), size, source)
        images = np.stack([resize_for_model(Image.fromarray(im), size) for im in images])
    return images, labels, partition, classes, names, []
