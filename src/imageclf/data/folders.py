"""Image-folder datasets: a folder walked (symlinks followed, each real folder once),
and the decoding of a listed folder or archive into arrays.

A user's folder is messy: files that are not images (by extension) and images that
cannot be decoded are skipped and reported (count and first names), never a crash;
what cannot be trained on (a class with fewer than 2 training images) is one clear
error. Every image keeps its file name for the reports.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError, ImageError
from ..imaging import open_image, resize_for_model
from .dataset import TRAIN
from .layout import read_payload, scan_layout, summarize_names
from .memory import check_memory

log = logging.getLogger("imageclf.data")


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


def _check_enough(
    classes: list[str], labels: np.ndarray, partition: np.ndarray, source: str, skipped: list[str]
) -> None:
    """Every class needs 2 training images: one to learn from, one to hold out."""
    counts = np.bincount(labels[partition == TRAIN], minlength=len(classes))
    few = [f"{c} ({int(n)})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if few:
        why = f"; {len(skipped)} unreadable file(s) were skipped" if skipped else ""
        raise DataError(
            f"{source}: every class needs at least 2 training images; too few in: "
            f"{', '.join(few)}{why}"
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


def assemble_folder(
    entries: list[tuple[str, object]], source: str, size: int, progress: bool
) -> tuple:
    """(images, labels, partition, classes, names, skipped) of a listed folder or
    archive (``readers.list_entries``), every readable image decoded at ``size``."""
    layout = scan_layout(entries, source)
    if layout.not_images:
        log.warning(
            "%s: skipped %d file(s) that are not images: %s",
            source,
            len(layout.not_images),
            summarize_names(layout.not_images),
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
            "%s: skipped %d unreadable image(s): %s",
            source,
            len(skipped),
            summarize_names(skipped),
        )
    pixels, labels, partition = pixels[:kept], labels[:kept], partition[:kept]
    _check_enough(layout.classes, labels, partition, source, skipped)
    return pixels, labels, partition, layout.classes, np.array(names), skipped
