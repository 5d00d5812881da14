"""Twins the perceptual hash misses: the same photo cropped or recoloured, found by
the cosine similarity of a pretrained backbone's embeddings (``data inspect
--embedding-check``).

pHash (``duplicates``) compares the grey layout of the whole frame, so a strong crop or a
colour shift of the same photo moves it past the threshold. An ImageNet backbone's pooled
features describe what is in the picture and change less under both (mild crops are
found, the strongest are not), at the price of seeing different photos of one kind of
thing as similar too: this is a second opinion to look at, not
something ``--dedupe`` acts on. EfficientNet-Lite0 (frozen, the optional
``imageclf[pretrained]`` weights) embeds every picture at ``SIDE`` pixels in batches, and
the pooled features' cosine is compared across train/val/test like the hashes.
``THRESHOLD`` was chosen on planted crops and recolourings of real photos and on distinct
real photos (benchmarks/embedding_twins.py, docs/benchmarks.md).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from ..fileio import printable
from ..models import efficientnet as effnet
from .dataset import Dataset
from .duplicates import DuplicateReport

SIDE = 96  # pixels the pictures are embedded at: cheap, and enough for "the same photo"
THRESHOLD = 0.85  # cosine similarity at or above which two pictures are twins
BATCH = 64
BACKBONE = effnet.NAME


@dataclass
class EmbeddingPair:
    """A held-out picture and its look-alike on the other side (dataset indices)."""

    split: str
    index: int
    other_split: str
    other: int
    similarity: float


def named_pairs(report: DuplicateReport, dataset: Dataset) -> set[tuple[str, str]]:
    """The hash report's pairs as (held-out file name, other file name)."""
    return {(str(dataset.names[p.index]), str(dataset.names[p.other])) for p in report.pairs}


def embed(images: np.ndarray, batch: int = BATCH) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 1280) pooled ImageNet features of the frozen backbone."""
    model = effnet.pretrained(name=BACKBONE).eval()
    norm = model.variant.normalization
    mean = torch.tensor(norm["mean"]).view(1, 3, 1, 1) * 255
    std = torch.tensor(norm["std"]).view(1, 3, 1, 1) * 255
    out = []
    with torch.inference_mode():
        for start in range(0, len(images), batch):
            chunk = torch.from_numpy(np.ascontiguousarray(images[start : start + batch]))
            x = (chunk.permute(0, 3, 1, 2).float() - mean) / std
            out.append(model.forward_features(x))
    return torch.cat(out) if out else torch.zeros(0, effnet.FEATURES)


def similar_pairs(
    queries: torch.Tensor, refs: torch.Tensor, threshold: float = THRESHOLD
) -> list[tuple[int, int, float]]:
    """(query, reference, cosine) for every pair at or above ``threshold`` (unit rows)."""
    found = []
    for start in range(0, len(queries), 1024):
        sims = queries[start : start + 1024] @ refs.T
        qi, ri = torch.nonzero(sims >= threshold, as_tuple=True)
        found += [(int(q) + start, int(r), float(sims[q, r])) for q, r in zip(qi, ri, strict=True)]
    return found


def find_embedding_twins(
    dataset: Dataset,
    parts: dict[str, np.ndarray],
    known: set[tuple[str, str]] = frozenset(),
    threshold: float = THRESHOLD,
) -> list[EmbeddingPair]:
    """Look-alikes of every val/test picture in train (and of test in val) that the hash
    has not paired already (``known``: ``named_pairs`` of its report, by file name, as it
    may come from another decode of the same source), most similar first. ``dataset``
    should be decoded at ``SIDE``."""
    idx = {k: np.asarray(v, dtype=np.int64) for k, v in parts.items() if len(v)}
    if not idx:
        return []
    order = np.concatenate(list(idx.values()))
    features = torch.nn.functional.normalize(embed(dataset.images[order]), dim=1)
    rows, start = {}, 0
    for k, v in idx.items():
        rows[k], start = features[start : start + len(v)], start + len(v)
    pairs = []
    for held, other in (("val", "train"), ("test", "train"), ("test", "val")):
        if held not in idx or other not in idx:
            continue
        for q, r, sim in similar_pairs(rows[held], rows[other], threshold):
            a, b = int(idx[held][q]), int(idx[other][r])
            if (str(dataset.names[a]), str(dataset.names[b])) not in known:
                pairs.append(EmbeddingPair(held, a, other, b, round(sim, 4)))
    return sorted(pairs, key=lambda p: -p.similarity)


def format_embedding_pairs(
    pairs: list[EmbeddingPair], dataset: Dataset, threshold: float = THRESHOLD, limit: int = 10
) -> str:
    """One summary line and the first ``limit`` pairs by file name (made printable)."""
    head = (f"embedding check ({BACKBONE} at {SIDE} px, cosine >= {threshold}): "
            f"{len(pairs)} pairs the hash missed")  # fmt: skip
    lines = [head + (" (look at them: a second opinion, not dropped by --dedupe)" if pairs else "")]
    for p in pairs[:limit]:
        held, other = (printable(str(dataset.names[i])) for i in (p.index, p.other))
        lines.append(f"  {p.split} {held} ~ {p.other_split} {other} (cosine {p.similarity:.3f})")
    if len(pairs) > limit:
        lines.append(f"  ... and {len(pairs) - limit} more pairs")
    return "\n".join(lines)


def check_source(
    path: str,
    known: set[tuple[str, str]] = frozenset(),
    progress: bool = True,
    table: dict | None = None,
) -> tuple[list[EmbeddingPair], Dataset]:
    """Decode ``path`` (a labels table read with ``table``'s options) at ``SIDE``, not
    cached: inspecting leaves nothing behind; then look for look-alikes across the split
    training makes by default, as the hash check does."""
    from . import load_dataset
    from .duplicates import split_parts
    from .splits import make_split

    effnet.weights_path(BACKBONE)  # without the extra: one error line before any decoding
    dataset = load_dataset(path, image_size=SIDE, use_cache=False, progress=progress, table=table)
    parts = split_parts(make_split(dataset, "auto", 0))
    return find_embedding_twins(dataset, parts, known), dataset
