"""The same picture on both sides of a split: exact and near twins across train/val/test.

A test picture whose twin was trained on inflates every reported accuracy (CIFAR-10
itself has near-duplicates of ~3.3% of its test images in training: ciFAIR, Barz &
Denzler 2020). Each decoded picture gets a 64-bit perceptual hash (DCT pHash: grey,
32x32, the 8x8 lowest frequencies against their median), plus the hash of its mirror
image, read off the same coefficients (a horizontal flip negates the odd horizontal
frequencies), so mirrored twins are found too. Pictures of a val/test split are compared
with every training picture (and test with val) by Hamming distance over the packed
bits (XOR + popcount, blockwise: 10k x 50k pairs in about a second on 2 cores). Exact
twins are the same decoded pixels (a content hash). ``THRESHOLD`` was chosen on planted
duplicates (benchmarks/duplicates.py, docs/benchmarks.md).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from .. import plots
from ..errors import UserInputError
from ..fileio import atomic_write, printable
from .dataset import Dataset
from .splits import Split

SHEET_PAIRS = 60  # pairs drawn on a contact sheet at most
THRESHOLD = 6  # Hamming distance (of 64 bits) at or below which two pictures are twins
HASH_SIDE = 32  # pictures are reduced to this grey square before the DCT
LOW = 8  # the LOW x LOW lowest frequencies make the 64 bits
CHUNK = 2048  # pictures hashed at a time (bounded memory for memory-mapped data)
BLOCK = 64  # query hashes compared at a time against all reference hashes
_WEIGHTS = torch.tensor([0.299, 0.587, 0.114])  # ITU-R 601 luma


def _dct_matrix(n: int) -> torch.Tensor:
    """The orthonormal DCT-II matrix: ``D @ x @ D.T`` is the 2-D DCT of ``x``."""
    k = torch.arange(n, dtype=torch.float64)[:, None]
    i = torch.arange(n, dtype=torch.float64)[None, :]
    d = torch.cos(torch.pi * (2 * i + 1) * k / (2 * n)) * (2.0 / n) ** 0.5
    d[0] /= 2**0.5
    return d.float()


_DCT = _dct_matrix(HASH_SIDE)[:LOW]  # only the lowest frequencies are needed
_BITS = (1 << np.arange(LOW * LOW, dtype=np.uint64)).astype(np.uint64)
# A horizontal flip multiplies frequency column v by (-1)^v.
_FLIP_SIGN = torch.tensor([(-1.0) ** v for v in range(LOW)])


def _pack(bits: np.ndarray) -> np.ndarray:
    """(N, 64) bools -> (N,) uint64."""
    return (bits.astype(np.uint64) * _BITS).sum(axis=1, dtype=np.uint64)


def _low_frequencies(images: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, LOW, LOW) DCT coefficients of the grey 32x32 picture."""
    x = torch.from_numpy(np.ascontiguousarray(images)).float() @ _WEIGHTS  # (N, H, W) grey
    if x.shape[1:] != (HASH_SIDE, HASH_SIDE):
        x = F.interpolate(x[:, None], size=(HASH_SIDE, HASH_SIDE), mode="bilinear",
                          antialias=True, align_corners=False)[:, 0]  # fmt: skip
    return _DCT @ x @ _DCT.T


def _bits(coeffs: torch.Tensor) -> np.ndarray:
    flat = coeffs.reshape(len(coeffs), -1)
    median = flat[:, 1:].median(dim=1, keepdim=True).values  # the DC term is left out
    return _pack((flat > median).numpy())


def perceptual_hashes(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The pHash of every picture and of its mirror image, as (N,) uint64 each."""
    plain, mirrored = [], []
    with torch.no_grad():
        for start in range(0, len(images), CHUNK):
            coeffs = _low_frequencies(images[start : start + CHUNK])
            plain.append(_bits(coeffs))
            mirrored.append(_bits(coeffs * _FLIP_SIGN))
    empty = np.zeros(0, np.uint64)
    return (np.concatenate(plain) if plain else empty,
            np.concatenate(mirrored) if mirrored else empty)  # fmt: skip


def content_hashes(images: np.ndarray) -> list[bytes]:
    """The decoded pixels' digest, one per picture: equal digests, equal pictures."""
    return [hashlib.blake2b(np.ascontiguousarray(im).tobytes(), digest_size=16).digest()
            for im in images]  # fmt: skip


def nearest(
    queries: np.ndarray, mirrored: np.ndarray, refs: np.ndarray, threshold: int = THRESHOLD
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Every (query, reference) pair within ``threshold`` bits, plain or mirrored:
    (query index, reference index, distance, mirrored?) arrays."""
    out_q, out_r, out_d, out_m = [], [], [], []
    for start in range(0, len(queries), BLOCK):
        q = queries[start : start + BLOCK, None]
        plain = np.bitwise_count(q ^ refs[None, :])
        flipped = np.bitwise_count(mirrored[start : start + BLOCK, None] ^ refs[None, :])
        dist = np.minimum(plain, flipped)
        qi, ri = np.nonzero(dist <= threshold)
        out_q.append(qi + start)
        out_r.append(ri)
        out_d.append(dist[qi, ri])
        out_m.append(flipped[qi, ri] < plain[qi, ri])
    if not out_q:
        return (np.zeros(0, np.int64),) * 3 + (np.zeros(0, bool),)
    return tuple(np.concatenate(a) for a in (out_q, out_r, out_d, out_m))  # type: ignore


@dataclass
class Pair:
    """One picture of a held-out split and its twin on the other side (dataset indices)."""

    split: str  # "val" or "test": the held-out picture's split
    index: int
    other_split: str  # "train" or "val"
    other: int
    distance: int  # Hamming distance of the hashes (0 for exact twins)
    exact: bool  # the same decoded pixels
    mirrored: bool  # the twin is the mirror image


@dataclass
class DuplicateReport:
    """Twins across a split's parts; ``counts`` per pair of parts, ``pairs`` in full."""

    threshold: int
    pairs: list[Pair] = field(default_factory=list)

    def held_out_with_twin(self, split: str, other: str | None = None) -> set[int]:
        """Indices of ``split``'s pictures that have a twin (in ``other``, or anywhere)."""
        return {p.index for p in self.pairs
                if p.split == split and (other is None or p.other_split == other)}  # fmt: skip

    def training_copies(self) -> np.ndarray:
        """Training pictures that are a twin of a val or test picture (what --dedupe drops)."""
        return np.array(sorted({p.other for p in self.pairs if p.other_split == "train"}),
                        dtype=np.int64)  # fmt: skip

    def counts(self) -> dict[str, dict[str, int]]:
        """Per pair of parts: held-out pictures with a twin, and how many are exact."""
        out: dict[str, dict[str, int]] = {}
        for p in self.pairs:
            key = f"{p.split}-{p.other_split}"
            out.setdefault(key, {"pictures": set(), "exact": set()})  # type: ignore[dict-item]
            out[key]["pictures"].add(p.index)  # type: ignore[attr-defined]
            if p.exact:
                out[key]["exact"].add(p.index)  # type: ignore[attr-defined]
        return {k: {n: len(s) for n, s in v.items()} for k, v in out.items()}  # type: ignore

    def summary(self) -> str:
        """One line: e.g. ``test pictures with a twin in train: 12 (3 exact)``."""
        counts = self.counts()
        if not counts:
            return f"no duplicates across the split (pHash distance <= {self.threshold})"
        said = [
            f"{k.split('-')[0]} pictures with a twin in {k.split('-')[1]}: "
            f"{v['pictures']} ({v['exact']} exact)"
            for k, v in sorted(counts.items())
        ]
        return "duplicates across the split: " + "; ".join(said)

    def to_dict(self, dataset: Dataset) -> dict:
        names = dataset.names
        return {
            "threshold": self.threshold,
            "hash": "pHash 64-bit (DCT of 32x32 grey), mirror images included",
            "counts": self.counts(),
            "pairs": [{**p.__dict__, "name": str(names[p.index]),
                       "other_name": str(names[p.other])} for p in self.pairs],
        }  # fmt: skip

    def write(self, path: str | Path, dataset: Dataset) -> None:
        with atomic_write(path, "w") as handle:
            json.dump(self.to_dict(dataset), handle, indent=1)


def find_duplicates(
    dataset: Dataset, parts: dict[str, np.ndarray], threshold: int = THRESHOLD
) -> DuplicateReport:
    """Twins of every val/test picture in train (and of every test picture in val).

    ``parts`` maps "train"/"val"/"test" to dataset indices (a ``Split``'s, or the
    source's own partitions)."""
    idx = {k: np.asarray(v, dtype=np.int64) for k, v in parts.items() if len(v)}
    hashes = {k: perceptual_hashes(dataset.images[v]) for k, v in idx.items()}
    digests = {k: content_hashes(dataset.images[v]) for k, v in idx.items()}
    report = DuplicateReport(threshold)
    for held, other in (("val", "train"), ("test", "train"), ("test", "val")):
        if held not in idx or other not in idx:
            continue
        plain, mirrored = hashes[held]
        qi, ri, dist, flip = nearest(plain, mirrored, hashes[other][0], threshold)
        for q, r, d, m in zip(qi, ri, dist, flip, strict=True):
            exact = digests[held][q] == digests[other][r]
            pair = Pair(held, int(idx[held][q]), other, int(idx[other][r]),
                        0 if exact else int(d), exact, bool(m and not exact))  # fmt: skip
            report.pairs.append(pair)
        # Exact twins whose hashes differ cannot happen (same pixels, same hash), so the
        # content hash only marks which near twins are exact.
    return report


def split_parts(split: Split) -> dict[str, np.ndarray]:
    return {"train": split.train, "val": split.val, "test": split.test}


def drop_training_copies(split: Split, report: DuplicateReport) -> Split:
    """The split without the training pictures that have a twin in val or test."""
    drop = report.training_copies()
    train = split.train[~np.isin(split.train, drop)]
    return Split(split.name, split.seed, train, split.val, split.test)


def check_dataset(dataset: Dataset, split: Split | None = None) -> DuplicateReport:
    """Twins across ``split`` (default: the source's own partitions, or the split training
    makes by default when the source has no test set of its own)."""
    from .splits import make_split

    return find_duplicates(dataset, split_parts(split or make_split(dataset, "auto", 0)))


def format_pairs(report: DuplicateReport, dataset: Dataset, limit: int = 10) -> str:
    """The summary line and the first ``limit`` pairs by file name (names made printable)."""
    lines = [report.summary()]
    for p in report.pairs[:limit]:
        how = (
            "exact" if p.exact else f"distance {p.distance}" + (", mirrored" if p.mirrored else "")
        )
        lines.append(f"  {p.split} {printable(str(dataset.names[p.index]))} = {p.other_split} "
                     f"{printable(str(dataset.names[p.other]))} ({how})")  # fmt: skip
    if len(report.pairs) > limit:
        lines.append(f"  ... and {len(report.pairs) - limit} more pairs")
    return "\n".join(lines)


def write_sheet(report: DuplicateReport, dataset: Dataset, out: str | Path) -> int:
    """A contact sheet of the pairs (held-out picture, then its twin), at most
    ``SHEET_PAIRS``; returns how many pairs it shows."""
    if Path(out).is_dir():
        raise UserInputError(f"{out} is a folder; give a .png file name")
    pairs = report.pairs[:SHEET_PAIRS]
    images, titles = [], []
    for p in pairs:
        for split, i in ((p.split, p.index), (p.other_split, p.other)):
            images.append(dataset.images[i])
            name = str(dataset.names[i])
            short = name if len(name) <= 18 else "…" + name[-17:]
            titles.append(f"{split} d={p.distance}{' m' if p.mirrored else ''}\n{short}")
    if not pairs:
        images, titles = [np.full((8, 8, 3), 255, np.uint8)], ["no duplicates"]
    title = f"{Path(dataset.source).name}: {len(pairs)} of {len(report.pairs)} twin pairs"
    fig = plots.image_grid(images, titles, ncols=6, title=title, cell=1.6)
    with atomic_write(out) as handle:
        handle.write(plots.to_png_bytes(fig))
    return len(pairs)
