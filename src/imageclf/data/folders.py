"""Image-folder datasets: a folder walked (symlinks followed, each real folder once,
never back into a folder that holds the dataset; depth bounded), and the decoding of a
listed folder or archive into arrays.

A user's folder is messy: files that are not images (by extension) and images that
cannot be decoded are skipped and reported (count and first names), never a crash;
what cannot be trained on (a class with fewer than 2 training images) is one clear
error. Every image keeps its file name for the reports.
"""

from __future__ import annotations

import io
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import DataError, ImageError
from ..fileio import printable
from ..imaging import open_image, resize_for_model
from .dataset import TRAIN, MemoryPixels
from .layout import read_payload, scan_layout, summarize_names
from .memory import check_memory

log = logging.getLogger("imageclf.data")


# A dataset needs 3 folder levels below its root (ROOT/<split>/<class>/<image>) plus any
# wrapping folders; 1,100 nested folders were a RecursionError in os.walk (Python 3.11).
MAX_FOLDER_DEPTH = 32


def walk_folder(
    root: Path, skipped_links: list[str] | None = None
) -> Iterator[tuple[str, Path | None]]:
    """Yield (relative path, file) for files and (relative path, None) for folders,
    sorted, following symlinked files and folders; a folder reached twice (a symlink
    loop, or two links to one place) is walked only the first time, and a link to a
    folder that holds the dataset itself (``/``, the root's parent) is not followed: it
    would walk the whole disk. Such links are added to ``skipped_links``. Iterative, and
    folders nested deeper than ``MAX_FOLDER_DEPTH`` are one ``DataError``."""
    home = os.path.realpath(root)
    seen: set[tuple[int, int]] = set()
    stack: list[tuple[str, str]] = [(str(root), "")]  # (folder on disk, path below root)
    while stack:
        folder, rel = stack.pop()
        entries = _list_folder(folder, seen)
        dirs = [e for e in entries if _is_dir(e)]
        if dirs and (rel.count("/") + 1 if rel else 0) >= MAX_FOLDER_DEPTH:
            shown = printable(rel if len(rel) <= 80 else "…" + rel[-80:])
            raise DataError(
                f"{root}: folders are nested more than {MAX_FOLDER_DEPTH} deep (at {shown}); "
                "an image dataset needs 3 levels: ROOT/<split>/<class>/<image>"
            )
        for d in dirs:
            yield _join(rel, d.name), None
        for f in entries:
            if not _is_dir(f):
                yield _join(rel, f.name), Path(f.path)
        for d in reversed(dirs):
            target = os.path.realpath(d.path)
            if d.is_symlink() and _holds(target, home):
                if skipped_links is not None:
                    skipped_links.append(f"{_join(rel, d.name)} -> {target}")
                continue
            stack.append((d.path, _join(rel, d.name)))


def _list_folder(folder: str, seen: set[tuple[int, int]]) -> list[os.DirEntry]:
    """The entries of a folder not walked before, sorted; none if unreadable."""
    try:
        st = os.stat(folder)
        if (st.st_dev, st.st_ino) in seen:
            return []
        seen.add((st.st_dev, st.st_ino))
        with os.scandir(folder) as listing:
            return sorted(listing, key=lambda e: e.name)
    except OSError:
        return []


def _is_dir(entry: os.DirEntry) -> bool:
    try:
        return entry.is_dir()  # follows symlinks; a broken link is a file (reported so)
    except OSError:
        return False


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _holds(folder: str, inner: str) -> bool:
    """Whether ``inner`` is ``folder`` or lies inside it (real paths)."""
    return inner == folder or inner.startswith(folder.rstrip(os.sep) + os.sep)


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


def decode_file(payload: Path | bytes, size: int) -> np.ndarray:
    """A listed file (read capped) decoded at ``size``, as training decodes every
    picture: the folder reader and the table reader (``tables``) share it."""
    return _decode(read_payload(payload), size)


def assemble_folder(
    entries: list[tuple[str, object]],
    source: str,
    size: int,
    progress: bool,
    open_sink: Callable[[int, int], MemoryPixels] | None = None,
) -> tuple:
    """(images, labels, partition, classes, names, skipped) of a listed folder or
    archive (``readers.list_entries``), every readable image decoded at ``size`` and
    appended to ``open_sink(n, size)`` as it is decoded (default: in memory, refused if it
    cannot fit; ``cache.pixel_sink`` chooses memory or a file on disk)."""
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
    if open_sink is None:
        check_memory(n, size, source)
        open_sink = MemoryPixels
    sink = open_sink(n, size)
    labels = np.empty(n, np.int64)
    partition = np.empty(n, np.uint8)
    names = []
    skipped: list[str] = []
    kept = 0
    try:
        for parts, payload, name in tqdm(
            images, desc=f"decoding {Path(source).name}", unit="img", disable=not progress
        ):
            try:
                picture = _decode(read_payload(payload), size)
            except (ImageError, DataError, OSError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                skipped.append(f"{name} ({reason})")
                continue
            sink.append(picture)
            labels[kept] = index[parts[-2]]
            partition[kept] = layout.partition_of(parts)
            names.append(name)
            kept += 1
        pixels = sink.finish()
    except BaseException:
        sink.abort()  # a half-written file on disk is removed, never cached
        raise
    if skipped:
        log.warning(
            "%s: skipped %d unreadable image(s): %s",
            source,
            len(skipped),
            summarize_names(skipped),
        )
    labels, partition = labels[:kept], partition[:kept]
    _check_enough(layout.classes, labels, partition, source, skipped)
    return pixels, labels, partition, layout.classes, np.array(names), skipped
