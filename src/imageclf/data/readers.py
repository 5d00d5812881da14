"""Readers that turn a dataset on disk into one in-memory ``Dataset``.

Supported: the official CIFAR-10 python archive (or its extracted folder), and
image-folder trees ``ROOT/{train,test}/<class>/*`` or ``ROOT/<class>/*``, as a
folder or as a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive.
"""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError, ImageError
from ..imaging import IMAGE_EXTENSIONS, open_image, resize_for_model
from .dataset import TEST, TRAIN, Dataset

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
PARTITIONS = {"train": TRAIN, "test": TEST}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
# Hidden files and OS litter that appear inside class folders and archives.
_IGNORED_PARTS = ("__MACOSX",)


# ---------------------------------------------------------------- CIFAR python batches
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


def _assemble_cifar(files: dict[str, bytes], source: str, size: int) -> tuple:
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
    if size != 32:
        images = np.stack([resize_for_model(Image.fromarray(im), size) for im in images])
    return images, labels, partition, classes


# ---------------------------------------------------------------- archive/folder listing
def _archive_kind(path: Path) -> str | None:
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def _iter_archive(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """Yield (member path, bytes) for files and (dir path, None) for folders."""
    kind = _archive_kind(path)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    yield info.filename, None if info.is_dir() else archive.read(info)
        else:
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isdir():
                        yield member.name, None
                    elif member.isfile():
                        handle = archive.extractfile(member)
                        yield member.name, handle.read() if handle else b""
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{path} is not a readable archive or is corrupt ({exc})") from None


def _iter_folder(root: Path) -> Iterator[tuple[str, Path | None]]:
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for d in dirnames:
            yield (rel_dir / d).as_posix(), None
        for f in sorted(filenames):
            yield (rel_dir / f).as_posix(), Path(dirpath) / f


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in _IGNORED_PARTS for p in parts)


# ---------------------------------------------------------------- image-folder layout
def _layout(entries: list[tuple[str, object]], source: str):
    """Work out classes and partitions from paths; return the image entries and layout."""
    files, dirs = [], []
    for name, payload in entries:
        parts = PurePosixPath(name).parts
        if not parts or _ignored(parts):
            continue
        (dirs if payload is None else files).append((parts, payload))
    images = [(p, x) for p, x in files if PurePosixPath(p[-1]).suffix.lower() in IMAGE_EXTENSIONS]
    if not images:
        raise DataError(f"{source} contains no image files")
    # Strip top-level folders shared by every file (an archive's wrapping folder).
    prefix = 0
    while all(len(p) > prefix + 2 for p, _ in images) and len({p[prefix] for p, _ in images}) == 1:
        prefix += 1
    images = [(p[prefix:], x) for p, x in images]
    dirs = [d[prefix:] for d, _ in dirs if len(d) > prefix]
    depths = {len(p) for p, _ in images}
    if depths == {3} and {p[0] for p, _ in images} <= set(PARTITIONS):
        partitioned = True
    elif depths == {2}:
        partitioned = False
    else:
        raise DataError(
            f"{source}: expected ROOT/<class>/<image> or ROOT/{{train,test}}/<class>/<image>, "
            f"found files at depths {sorted(depths)} (e.g. {'/'.join(images[0][0])})"
        )
    return images, dirs, partitioned


def _classes(images, dirs, partitioned: bool, source: str) -> list[str]:
    if not partitioned:
        found = {p[0] for p, _ in images}
        empty = sorted({d[0] for d in dirs if len(d) == 1} - found)
        if empty:
            raise DataError(f"{source}: class folder(s) with no images: {', '.join(empty)}")
        classes = sorted(found)
    else:
        per_part: dict[str, set[str]] = {}
        for p, _ in images:
            per_part.setdefault(p[0], set()).add(p[1])
        if "train" not in per_part:
            raise DataError(f"{source}: has a test/ folder but no train/ images")
        empty = sorted(
            f"{d[0]}/{d[1]}" for d in dirs if len(d) == 2 and d[1] not in per_part.get(d[0], set())
        )
        if empty:
            raise DataError(f"{source}: class folder(s) with no images: {', '.join(empty)}")
        classes = sorted(per_part["train"])
        for part, found in per_part.items():
            if found != set(classes):
                missing = sorted(set(classes) - found) or sorted(found - set(classes))
                raise DataError(
                    f"{source}: {part}/ and train/ have different classes "
                    f"(mismatch: {', '.join(missing)})"
                )
    if len(classes) < 2:
        raise DataError(f"{source}: need at least 2 class folders, found {len(classes)}")
    return classes


def _decode(data: bytes, size: int, label: str) -> np.ndarray:
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size == (size, size) and im.mode == "RGB" and not im.getexif():
                im.load()  # fast path: already model-sized RGB (the CIFAR JPEG case)
                return np.asarray(im, dtype=np.uint8)
    except Exception:
        pass  # the careful path below explains what is wrong
    try:
        return resize_for_model(open_image(data), size)
    except ImageError as exc:
        raise DataError(f"cannot read image {label}: {exc}") from None


def _assemble_folder(entries, source: str, size: int, progress: bool) -> tuple:
    images, dirs, partitioned = _layout(entries, source)
    classes = _classes(images, dirs, partitioned, source)
    index = {c: i for i, c in enumerate(classes)}
    images.sort(key=lambda e: e[0])  # stable order, independent of archive member order
    n = len(images)
    pixels = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    partition = np.empty(n, np.uint8)
    for i, (parts, payload) in enumerate(
        tqdm(images, desc=f"decoding {Path(source).name}", unit="img", disable=not progress)
    ):
        label = "/".join(parts)
        data = payload.read_bytes() if isinstance(payload, Path) else payload
        pixels[i] = _decode(data, size, label)
        labels[i] = index[parts[-2]]
        partition[i] = PARTITIONS[parts[0]] if partitioned else TRAIN
    return pixels, labels, partition, classes


# ---------------------------------------------------------------- entry point
def _is_cifar_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file():
            return candidate
    return None


def read_source(path: Path, size: int, fingerprint: str, progress: bool = True) -> Dataset:
    """Decode everything at ``path`` (no caching here; see ``load_dataset``)."""
    source = str(path)
    if path.is_dir():
        cifar_dir = _is_cifar_dir(path)
        if cifar_dir is not None:
            files = {f.name: f.read_bytes() for f in cifar_dir.iterdir() if f.is_file()}
            arrays = _assemble_cifar(files, source, size)
        else:
            arrays = _assemble_folder(list(_iter_folder(path)), source, size, progress)
    elif path.is_file():
        if _archive_kind(path) is None:
            raise DataError(
                f"{source}: not a dataset (expected a folder or a {', '.join(ARCHIVE_SUFFIXES)} "
                "archive)"
            )
        entries = list(
            tqdm(
                _iter_archive(path),
                desc=f"reading {path.name}",
                unit=" files",
                disable=not progress,
            )
        )
        names = {PurePosixPath(n).name: d for n, d in entries if d is not None}
        if "data_batch_1" in names:
            arrays = _assemble_cifar(names, source, size)
        else:
            arrays = _assemble_folder(entries, source, size, progress)
    else:
        raise DataError(f"dataset not found: {source}")
    images, labels, partition, classes = arrays
    return Dataset(images, labels, partition, classes, source, fingerprint)
