"""Datasets: official CIFAR-10, image folders and archives, cached, split, batched."""

from __future__ import annotations

import contextlib
import logging
import os
from pathlib import Path

from ..errors import DataError
from ..paths import cache_dir, default_cifar10_path
from . import cache, tables
from .dataset import TEST, TRAIN, VAL, Dataset
from .download import download
from .layout import check_classes
from .readers import read_source
from .splits import SPLITS, Split, make_split

log = logging.getLogger("imageclf.data")

__all__ = [
    "SPLITS",
    "TEST",
    "TRAIN",
    "VAL",
    "Dataset",
    "Split",
    "download",
    "load_dataset",
    "make_split",
    "table_options_for",
]


def load_dataset(
    path: str | os.PathLike | None = None,
    *,
    image_size: int = 32,
    use_cache: bool = True,
    progress: bool = True,
    table: tables.TableOptions | dict | None = None,
) -> Dataset:
    """Load a dataset, decoding it only the first time: into memory where it fits, else
    memory-mapped from the disk cache (``cache``; the choice is logged).

    ``path=None`` means the official CIFAR-10 archive, downloaded on first use. A .csv
    (or a folder with ``labels.csv``) is a labels table, read with ``table``'s options.
    """
    if path is None:
        path = default_cifar10_path()
        if not path.exists():
            download(path, progress=progress)
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"dataset not found: {path}")
    found = tables.table_for(path, table)
    key = found.fingerprint(image_size) if found else cache.fingerprint(path, image_size)
    if use_cache:
        cached = cache.load_cached(cache_dir(), key, str(path))
        if cached is not None:
            check_classes(cached.classes, str(path))  # decoded before names were checked
            if cached.skipped:  # said in full when decoded; repeated briefly from the cache
                log.warning("%s: %d unreadable file(s) skipped", path, len(cached.skipped))
            return cached
    # Pictures that do not fit in memory are decoded straight into the disk cache.
    sink = cache.pixel_sink(cache_dir(), key if use_cache else None, str(path))
    if found is not None:
        dataset = tables.decode_table(found, image_size, key, progress, sink)
    else:
        dataset = read_source(path, image_size, key, progress=progress, open_sink=sink)
    if use_cache:
        # A read-only or full cache folder only costs speed next time.
        with contextlib.suppress(OSError):
            cache.store(cache_dir(), dataset)
    return dataset


def table_options_for(
    path: str | os.PathLike, config: dict, given: dict | None = None
) -> dict | None:
    """How ``evaluate`` reads ``path``: the options ``given``, else, for a table, those its
    run recorded (``config["table"]``: read as training read it); None for other sources."""
    if given is not None:
        return given
    is_table = tables.table_file(Path(path).expanduser()) is not None
    return config.get("table") if is_table else None
