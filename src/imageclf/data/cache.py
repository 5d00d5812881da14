"""Decoded-array cache: decode a source once, load it again in well under a second.

``<key>.npz`` holds labels, names and the rest; the pictures are inside it when they
fit in memory, or beside it in ``<key>.pixels`` (raw uint8 N x S x S x 3) when they do
not: written picture by picture as they are decoded, renamed into place when complete
(atomic), then memory-mapped, so training reads batches through the page cache and a
folder bigger than RAM trains at its full size. The ``.npz`` is written last, so a
``.pixels`` file without one is never trusted. Each load chooses again
(``memory.choose_storage``): a disk entry that fits is read into memory (faster).
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from ..errors import DataError
from ..fileio import atomic_write
from .dataset import Dataset, MemoryPixels
from .folders import walk_folder
from .memory import check_disk, choose_storage, decoded_bytes

log = logging.getLogger("imageclf.data")

# Bump when the decoded result for the same source bytes would change.
DECODER_VERSION = 2  # 2: val/ partitions, file names, skipped files


def fingerprint(path: Path, size: int) -> str:
    """A key that changes whenever the source's content or the decode settings do.

    Files are hashed in full (sha256, ~0.1 s for the 20 MB CIFAR mirror);
    folders by the names, sizes and modification times of their files.
    """
    digest = hashlib.sha256(f"imageclf-decode-v{DECODER_VERSION}|size={size}|".encode())
    if path.is_file():
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    else:
        for rel, full in walk_folder(path):
            if full is None:
                continue
            try:
                stat = full.stat()
            except OSError:  # a broken symlink: the reader reports it as unreadable
                digest.update(f"{rel}|missing\n".encode())
                continue
            digest.update(f"{rel}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    return digest.hexdigest()[:32]


def _cache_file(cache_dir: Path, key: str) -> Path:
    return cache_dir / f"{key}.npz"


def pixels_file(cache_dir: Path, key: str) -> Path:
    """The memory-mapped pictures of a dataset too big for memory."""
    return cache_dir / f"{key}.pixels"


class DiskPixels:
    """Pictures appended to a file as they are decoded (never all held in memory): a
    temporary file in the cache folder renamed to ``<key>.pixels`` when complete, or,
    for ``key=None`` (no caching), an unnamed file that disappears with the process."""

    def __init__(self, folder: Path, key: str | None, size: int) -> None:
        self.size, self.count, self.path = size, 0, None
        self._stack = contextlib.ExitStack()
        if key is None:
            folder.mkdir(parents=True, exist_ok=True)
            unnamed = tempfile.TemporaryFile(dir=folder)  # noqa: SIM115 (closed by the stack)
            self.handle = self._stack.enter_context(unnamed)
        else:
            self.path = pixels_file(folder, key)
            self.handle = self._stack.enter_context(atomic_write(self.path))

    def append(self, image: np.ndarray) -> None:
        try:
            self.handle.write(np.ascontiguousarray(image, dtype=np.uint8).data)
        except OSError as exc:  # the disk filled up meanwhile, or went away
            where = self.path.parent if self.path else "the cache folder"
            raise DataError(f"writing the decoded pictures in {where}: {exc.strerror}") from None
        self.count += 1

    def finish(self) -> np.ndarray:
        """The pictures written, memory-mapped (copy-on-write: never written back)."""
        shape = (self.count, self.size, self.size, 3)
        if self.path is None:
            self.handle.flush()
            pixels = _map(self.handle, shape)
            self._stack.close()  # the mapping keeps the unnamed file's pages alive
            return pixels
        self._stack.close()  # fsync and rename into place
        return _map(self.path, shape)

    def abort(self) -> None:
        """Decoding failed: the temporary file goes (atomic_write removes it)."""
        failure = RuntimeError("decoding failed")
        with contextlib.suppress(RuntimeError):
            self._stack.__exit__(RuntimeError, failure, None)


def _map(file, shape: tuple[int, ...]) -> np.ndarray:
    if shape[0] == 0:
        return np.empty(shape, np.uint8)
    return np.memmap(file, dtype=np.uint8, mode="c", shape=shape)


def pixel_sink(folder: Path, key: str | None, source: str) -> Callable:
    """``open_sink(n, size)`` for the folder reader: in memory when ``n`` pictures at
    ``size`` fit, else on disk in ``folder`` (chosen and said by ``choose_storage``)."""

    def open_sink(n: int, size: int) -> MemoryPixels | DiskPixels:
        if choose_storage(n, size, source) == "memory":
            return MemoryPixels(n, size)
        try:
            check_disk(folder, decoded_bytes(n, size), source)
            return DiskPixels(folder, key, size)
        except OSError as exc:  # a read-only or missing cache folder
            raise DataError(
                f"{source}: the decoded pictures do not fit in memory and cannot be written "
                f"to {folder} ({exc.strerror}); set IMAGECLF_HOME to a writable disk"
            ) from None

    return open_sink


def load_cached(cache_dir: Path, key: str, source: str) -> Dataset | None:
    path = _cache_file(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            images = _images(data, cache_dir, key, source)
            if images is None:
                return None
            return Dataset(
                images=images,
                labels=data["labels"],
                partition=data["partition"],
                classes=[str(c) for c in data["classes"]],
                source=source,
                fingerprint=key,
                names=data["names"],
                skipped=[str(s) for s in data["skipped"]],
            )
    except (OSError, EOFError, ValueError, KeyError, zipfile.BadZipFile):
        # A damaged entry (an empty file raises EOFError) is simply rebuilt.
        return None


def _images(data, cache_dir: Path, key: str, source: str) -> np.ndarray | None:
    """The pictures of a cache entry, where they fit now; None: decode again."""
    if "images" in data.files:
        n, size = data["images_shape"][:2] if "images_shape" in data.files else (0, 0)
        if n and choose_storage(int(n), int(size), source) == "disk":
            return None  # held in the .npz but too big for memory now: decode to disk
        return data["images"]
    shape = tuple(int(v) for v in data["pixels_shape"])
    pixels = pixels_file(cache_dir, key)
    if len(shape) != 4 or pixels.stat().st_size != int(np.prod(shape)):
        return None  # missing or damaged: decoded again
    if choose_storage(shape[0], shape[1], source) == "disk":
        return _map(pixels, shape)
    images = np.fromfile(pixels, dtype=np.uint8)
    return images.reshape(shape) if images.size == int(np.prod(shape)) else None


def store(cache_dir: Path, dataset: Dataset) -> None:
    """The .npz, with the pictures inside unless they are in ``<key>.pixels`` already."""
    on_disk = _is_pixels_file(dataset.images, pixels_file(cache_dir, dataset.fingerprint))
    pictures = (
        {"pixels_shape": np.array(dataset.images.shape, np.int64)}
        if on_disk
        else {"images": dataset.images, "images_shape": np.array(dataset.images.shape)}
    )
    with atomic_write(_cache_file(cache_dir, dataset.fingerprint)) as handle:
        np.savez(
            handle,
            **pictures,
            labels=dataset.labels,
            partition=dataset.partition,
            classes=np.array(dataset.classes),
            names=np.asarray(dataset.names, dtype=str),
            skipped=np.array(dataset.skipped, dtype=str),
        )


def _is_pixels_file(images: np.ndarray, path: Path) -> bool:
    filename = getattr(images, "filename", None)
    return filename is not None and path.is_file() and Path(filename).resolve() == path.resolve()
