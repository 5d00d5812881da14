"""Turn a dataset on disk into one in-memory ``Dataset``: which reader a source needs.

Supported: the official CIFAR-10 python archive or its extracted folder (``cifar``),
and image-folder trees (``layout`` has the rules, ``folders`` decodes them) as a folder
or as a ``.tar``, ``.tar.gz``/``.tgz`` or ``.zip`` archive (``archives``). Every source
is listed the same way (``list_entries``), so training and ``imageclf data inspect``
see the same files. A labels table (a .csv, or a folder holding ``labels.csv``) is
``tables``' to read: ``load_dataset`` asks it first, since its options travel with it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path, PurePosixPath

from tqdm.auto import tqdm

from ..errors import DataError
from .archives import ARCHIVE_SUFFIXES, archive_kind, iter_archive
from .cifar import assemble_cifar, find_cifar_dir, read_cifar_dir
from .dataset import Dataset
from .folders import assemble_folder, walk_folder
from .layout import summarize_names

log = logging.getLogger("imageclf.data")


def list_entries(path: Path, progress: bool = False) -> list[tuple[str, object]]:
    """(name, payload) of every file and folder in a folder or a .zip/.tar archive, as the
    layout rules (``scan_layout``) read them: a ``Path`` in a folder, the bytes in an
    archive, ``None`` for a folder itself (read a file's with ``read_payload``)."""
    source = str(path)
    if path.is_dir():
        links: list[str] = []
        entries = list(walk_folder(path, links))
        if links:
            log.warning(
                "%s: did not follow %d folder link(s) back into the dataset: %s",
                source,
                len(links),
                summarize_names(links),
            )
        return entries
    if not path.is_file():
        raise DataError(f"dataset not found: {source}")
    if archive_kind(path) is None:
        raise DataError(
            f"{source}: not a dataset (expected a folder or a {', '.join(ARCHIVE_SUFFIXES)} "
            "archive)"
        )
    return list(
        tqdm(iter_archive(path), desc=f"reading {path.name}", unit=" files", disable=not progress)
    )


def read_source(
    path: Path,
    size: int,
    fingerprint: str,
    progress: bool = True,
    open_sink: Callable | None = None,
) -> Dataset:
    """Decode everything at ``path`` (no caching here; see ``load_dataset``); a folder's
    pictures go to ``open_sink`` (``folders.assemble_folder``) as they are decoded."""
    source = str(path)
    cifar_dir = find_cifar_dir(path) if path.is_dir() else None
    if cifar_dir is not None:
        arrays = assemble_cifar(read_cifar_dir(cifar_dir), source, size)
    else:
        entries = list_entries(path, progress)
        # A folder's CIFAR case was handled above; an archive may be the official one.
        members = {PurePosixPath(n).name: d for n, d in entries if d is not None}
        if path.is_file() and "data_batch_1" in members:
            arrays = assemble_cifar(members, source, size)
        else:
            arrays = assemble_folder(entries, source, size, progress, open_sink)
    images, labels, partition, classes, names, skipped = arrays
    return Dataset(images, labels, partition, classes, source, fingerprint, names, skipped)
