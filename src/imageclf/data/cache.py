"""Decoded-array cache: decode a source once, load it again in well under a second."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import numpy as np

from ..fileio import atomic_write
from .dataset import Dataset
from .folders import walk_folder

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


def load_cached(cache_dir: Path, key: str, source: str) -> Dataset | None:
    path = _cache_file(cache_dir, key)
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            return Dataset(
                images=data["images"],
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


def store(cache_dir: Path, dataset: Dataset) -> None:
    with atomic_write(_cache_file(cache_dir, dataset.fingerprint)) as handle:
        np.savez(
            handle,
            images=dataset.images,
            labels=dataset.labels,
            partition=dataset.partition,
            classes=np.array(dataset.classes),
            names=np.asarray(dataset.names, dtype=str),
            skipped=np.array(dataset.skipped, dtype=str),
        )
