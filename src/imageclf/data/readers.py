"""Readers that turn a dataset on disk into one in-memory ``Dataset``.

Supported: the official CIFAR-10 python archive (or its extracted folder), and
image-folder trees ``ROOT/<class>/*`` or ``ROOT/train/<class>/*`` with optional
``ROOT/{val,valid,validation}/<class>/*`` and ``ROOT/test/<class>/*``, as a folder
(symlinks followed) or as a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive.

A user's folder is messy: files that are not images (by extension) and images that
cannot be decoded are skipped and reported (count and first names), never a crash;
what cannot be trained on (a class with fewer than 2 images) is one clear error.
"""

from __future__ import annotations

import io
import logging
import os
import pickle
import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError, ImageError
from ..imaging import IMAGE_EXTENSIONS, open_image, resize_for_model
from .dataset import TEST, TRAIN, VAL, Dataset

log = logging.getLogger("imageclf.data")

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
# Folder names recognised as a source's own splits (ROOT/<split>/<class>/<image>).
PARTITIONS = {"train": TRAIN, "test": TEST, "val": VAL, "valid": VAL, "validation": VAL}
ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
# Hidden files and OS litter that appear inside class folders and archives.
_IGNORED_PARTS = ("__MACOSX", "Thumbs.db", "desktop.ini")
# How many names a "skipped N files" message lists.
SHOW_NAMES = 5
# Refuse to decode into more than this share of the memory available right now.
MEMORY_SHARE = 0.8


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
    # A report names each image by its batch file and position in it.
    names = np.array(
        [f"{b}[{i}]" for b, p in zip(CIFAR_BATCHES, parts, strict=True) for i in range(len(p[1]))]
    )
    if size != 32:
        check_memory(len(images), size, source)
        images = np.stack([resize_for_model(Image.fromarray(im), size) for im in images])
    return images, labels, partition, classes, names, []


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


def walk_folder(root: Path) -> Iterator[tuple[str, Path | None]]:
    """Yield (relative path, file) for files and (relative path, None) for folders,
    sorted, following symlinked files and folders; a folder reached twice (a symlink
    loop, or two links to one place) is walked only the first time."""
    seen: set[tuple[int, int]] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        try:
            st = os.stat(dirpath)
        except OSError:
            dirnames[:] = []
            continue
        if (st.st_dev, st.st_ino) in seen:
            dirnames[:] = []
            continue
        seen.add((st.st_dev, st.st_ino))
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root)
        for d in dirnames:
            yield (rel_dir / d).as_posix(), None
        for f in sorted(filenames):
            yield (rel_dir / f).as_posix(), Path(dirpath) / f


def _ignored(parts: tuple[str, ...]) -> bool:
    return any(p.startswith(".") or p in _IGNORED_PARTS for p in parts)


# ---------------------------------------------------------------- image-folder layout
def _summary(names: list[str]) -> str:
    shown = ", ".join(names[:SHOW_NAMES])
    return shown + (f" and {len(names) - SHOW_NAMES} more" if len(names) > SHOW_NAMES else "")


@dataclass
class FolderLayout:
    """What a folder or archive holds, worked out from paths alone (nothing decoded)."""

    images: list[tuple[tuple[str, ...], object, str]]  # (parts below root, payload, name)
    classes: list[str]
    partitioned: bool  # ROOT/<split>/<class>/* rather than ROOT/<class>/*
    partition_folders: dict[str, str]  # "val" -> the folder that holds it ("validation")
    not_images: list[str]  # files skipped because their extension is not an image's

    def partition_of(self, parts: tuple[str, ...]) -> int:
        return PARTITIONS[parts[0]] if self.partitioned else TRAIN


def scan_layout(entries: list[tuple[str, object]], source: str) -> FolderLayout:
    """Classes and partitions from the paths of ``entries``; a DataError for a layout
    that cannot be trained on (one error per problem, naming the folder)."""
    files, dirs = [], []
    for name, payload in entries:
        parts = PurePosixPath(name).parts
        if not parts or _ignored(parts):
            continue
        (dirs if payload is None else files).append((parts, payload, name))
    images, not_images = [], []
    for f in files:
        if PurePosixPath(f[0][-1]).suffix.lower() in IMAGE_EXTENSIONS:
            images.append(f)
        else:
            not_images.append(f[2])
    if not images:
        raise DataError(f"{source} contains no image files")
    # Strip top-level folders shared by every file (an archive's wrapping folder).
    prefix = 0
    while (
        all(len(p) > prefix + 2 for p, _, _ in images)
        and len({p[prefix] for p, _, _ in images}) == 1
    ):
        prefix += 1
    images = [(p[prefix:], x, n) for p, x, n in images]
    dirs = [d[prefix:] for d, _, _ in dirs if len(d) > prefix]
    depths = {len(p) for p, _, _ in images}
    tops = {p[0] for p, _, _ in images}
    if depths == {3} and tops <= set(PARTITIONS):
        partitioned = True
    elif depths == {2}:
        partitioned = False
    else:
        raise DataError(
            f"{source}: expected ROOT/<class>/<image> or ROOT/{{train,val,test}}/<class>/<image>, "
            f"found files at depths {sorted(depths)} (e.g. {'/'.join(images[0][0])})"
        )
    folders: dict[str, str] = {}
    if partitioned:
        for top in sorted(tops):
            kind = {TRAIN: "train", VAL: "val", TEST: "test"}[PARTITIONS[top]]
            if kind in folders:
                raise DataError(
                    f"{source}: both {folders[kind]}/ and {top}/ hold validation images; keep one"
                )
            folders[kind] = top
    classes = _classes(images, dirs, partitioned, source)
    return FolderLayout(images, classes, partitioned, folders, not_images)


def _classes(images, dirs, partitioned: bool, source: str) -> list[str]:
    if not partitioned:
        found = {p[0] for p, _, _ in images}
        empty = sorted({d[0] for d in dirs if len(d) == 1} - found)
        if empty:
            raise DataError(f"{source}: class folder(s) with no images: {', '.join(empty)}")
        classes = sorted(found)
    else:
        per_part: dict[str, set[str]] = {}
        for p, _, _ in images:
            per_part.setdefault(p[0], set()).add(p[1])
        if "train" not in per_part:
            others = "/, ".join(sorted(per_part))
            raise DataError(f"{source}: has {others}/ but no train/ folder of images")
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


def _check_enough(classes, labels, partition, source: str, skipped: list[str]) -> None:
    """Every class needs 2 training images: one to learn from, one to hold out."""
    counts = np.bincount(labels[partition == TRAIN], minlength=len(classes))
    few = [f"{c} ({int(n)})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if few:
        why = f"; {len(skipped)} unreadable file(s) were skipped" if skipped else ""
        raise DataError(
            f"{source}: every class needs at least 2 training images; too few in: "
            f"{', '.join(few)}{why}"
        )


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(n: int, size: int, source: str) -> None:
    """Every image is held decoded at the training size: N x S x S x 3 bytes (150 KB per
    image at 224, so 50,000 images need 7.5 GB). Refuse clearly rather than swap or die."""
    need = n * size * size * 3
    have = _memory_available()
    if have is not None and need > MEMORY_SHARE * have:
        raise DataError(
            f"{source}: {n:,} images at {size}x{size} need {need / 1e9:.1f} GB of memory "
            f"decoded, and {have / 1e9:.1f} GB is available; use a smaller --image-size "
            "or fewer images"
        )


def _decode(data: bytes, size: int) -> np.ndarray:
    """Raises ImageError (or DataError) when the bytes are not a usable picture."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            if im.size == (size, size) and im.mode == "RGB" and not im.getexif():
                im.load()  # fast path: already model-sized RGB (the CIFAR JPEG case)
                return np.asarray(im, dtype=np.uint8)
    except Exception:
        pass  # the careful path below explains what is wrong
    return resize_for_model(open_image(data), size)


def read_payload(payload: Path | bytes) -> bytes:
    """The bytes of a ``list_entries`` payload."""
    return payload.read_bytes() if isinstance(payload, Path) else payload


def _assemble_folder(entries, source: str, size: int, progress: bool) -> tuple:
    layout = scan_layout(entries, source)
    if layout.not_images:
        log.warning(
            "%s: skipped %d file(s) that are not images: %s",
            source,
            len(layout.not_images),
            _summary(layout.not_images),
        )
    index = {c: i for i, c in enumerate(layout.classes)}
    images = sorted(layout.images, key=lambda e: e[0])  # independent of archive order
    n = len(images)
    check_memory(n, size, source)
    pixels = np.empty((n, size, size, 3), np.uint8)
    labels = np.empty(n, np.int64)
    partition = np.empty(n, np.uint8)
    names = []
    skipped: list[str] = []
    kept = 0
    for parts, payload, name in tqdm(
        images, desc=f"decoding {Path(source).name}", unit="img", disable=not progress
    ):
        try:
            pixels[kept] = _decode(read_payload(payload), size)
        except (ImageError, DataError, OSError) as exc:
            reason = getattr(exc, "strerror", None) or str(exc)
            skipped.append(f"{name} ({reason})")
            continue
        labels[kept] = index[parts[-2]]
        partition[kept] = layout.partition_of(parts)
        names.append(name)
        kept += 1
    if skipped:
        log.warning(
            "%s: skipped %d unreadable image(s): %s", source, len(skipped), _summary(skipped)
        )
    pixels, labels, partition = pixels[:kept], labels[:kept], partition[:kept]
    _check_enough(layout.classes, labels, partition, source, skipped)
    return pixels, labels, partition, layout.classes, np.array(names), skipped


# ---------------------------------------------------------------- entry point
def _is_cifar_dir(path: Path) -> Path | None:
    for candidate in (path, path / "cifar-10-batches-py"):
        if (candidate / "data_batch_1").is_file():
            return candidate
    return None


def list_entries(path: Path, progress: bool = False) -> list[tuple[str, object]]:
    """(name, payload) of every file and folder in a folder or a .zip/.tar archive, as the
    layout rules (``scan_layout``) read them: a ``Path`` in a folder, the bytes in an
    archive, ``None`` for a folder itself (read a file's with ``read_payload``)."""
    source = str(path)
    if path.is_dir():
        return list(walk_folder(path))
    if not path.is_file():
        raise DataError(f"dataset not found: {source}")
    if _archive_kind(path) is None:
        raise DataError(
            f"{source}: not a dataset (expected a folder or a {', '.join(ARCHIVE_SUFFIXES)} "
            "archive)"
        )
    return list(
        tqdm(_iter_archive(path), desc=f"reading {path.name}", unit=" files", disable=not progress)
    )


def read_source(path: Path, size: int, fingerprint: str, progress: bool = True) -> Dataset:
    """Decode everything at ``path`` (no caching here; see ``load_dataset``)."""
    source = str(path)
    cifar_dir = _is_cifar_dir(path) if path.is_dir() else None
    if cifar_dir is not None:
        files = {f.name: f.read_bytes() for f in cifar_dir.iterdir() if f.is_file()}
        arrays = _assemble_cifar(files, source, size)
    else:
        entries = list_entries(path, progress)
        # A folder's CIFAR case was handled above; an archive may be the official one.
        members = {PurePosixPath(n).name: d for n, d in entries if d is not None}
        if path.is_file() and "data_batch_1" in members:
            arrays = _assemble_cifar(members, source, size)
        else:
            arrays = _assemble_folder(entries, source, size, progress)
    images, labels, partition, classes, names, skipped = arrays
    return Dataset(images, labels, partition, classes, source, fingerprint, names, skipped)
