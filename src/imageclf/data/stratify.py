"""Stratified splits of multi-label data: iterative stratification (Sechidis, Tsoumakas
and Vlahavas, "On the Stratification of Multi-Label Data", ECML PKDD 2011).

Single-label data is stratified class by class (``splits``); a picture with several
labels belongs to several classes at once, so that cannot work. Iterative
stratification deals with the rarest label first (the one a careless split would
starve), giving each of its pictures to the part that most lacks that label, so every
part gets its share of every label as far as the label combinations allow. One change
to the paper's tie-break: where both parts still lack the label, the picture goes where
its labels are relatively most lacking (shortfall over wanted, summed over its labels),
not to the larger shortfall of this one label. With several labels per picture, the
paper's rule overfills the labels dealt last (their pictures were placed for other
labels first); this keeps them in step. Pictures with no label are stratified as one
more label, and the part sizes are made exact at the end (``_even_out``). Seeded: the
order pictures are considered in and every tie are drawn from ``rng``.
"""

from __future__ import annotations

import numpy as np


def combination_ids(rows: np.ndarray) -> np.ndarray:
    """One integer per multi-hot row: equal rows (the same set of labels) share it."""
    if len(rows) == 0:
        return np.zeros(0, np.int64)
    _, ids = np.unique(rows, axis=0, return_inverse=True)
    return ids.reshape(-1).astype(np.int64)


def _pick(scores: np.ndarray, rng: np.random.Generator) -> int:
    """The index of the largest score, a tie drawn at random."""
    best = np.flatnonzero(scores == scores.max())
    return int(best[0]) if len(best) == 1 else int(best[rng.integers(len(best))])


def iterative_take(
    indices: np.ndarray,
    labels: np.ndarray,
    fraction_or_count: float | int,
    rng: np.random.Generator,
) -> tuple[np.ndarray, np.ndarray]:
    """Split ``indices`` into (taken, rest) with ``fraction_or_count`` of them taken (a
    share, or a number of pictures) and each label's pictures shared the same way as far
    as the combinations allow; ``labels`` is the whole (N, C) multi-hot array."""
    n = len(indices)
    if n == 0:
        return indices[:0], indices[:0]
    share = fraction_or_count if isinstance(fraction_or_count, float) else fraction_or_count / n
    order = rng.permutation(n)
    members = indices[order]
    rows = labels[members].astype(bool)
    # Pictures with no label are stratified as one more label, so each part gets its share.
    rows = np.concatenate([rows, ~rows.any(axis=1, keepdims=True)], axis=1)
    ratios = np.array([share, 1.0 - share])
    wanted_label = np.outer(ratios, rows.sum(axis=0))  # (2, C): each label's share still wanted
    scale = 1.0 / np.maximum(wanted_label, 1e-9)  # shortfall -> share of what was wanted
    part = np.full(n, -1, np.int64)
    left = rows.sum(axis=0).astype(np.int64)  # pictures per label not yet placed
    while (left > 0).any():
        rarest = np.where(left > 0, left, np.iinfo(np.int64).max)
        label = _pick(-rarest, rng)  # the label with the fewest pictures left
        chosen = np.flatnonzero(rows[:, label] & (part < 0))
        for i in chosen:
            need = wanted_label[:, label]
            if (need > 0).all() or (need <= 0).all():  # both lack it, or neither
                j = _pick((wanted_label * scale) @ rows[i], rng)
            else:
                j = int(np.argmax(need))
            part[i] = j
            wanted_label[j] -= rows[i]
        left -= rows[chosen].sum(axis=0)
    _even_out(part, rows, wanted_label, round(share * n))
    return np.sort(members[part == 0]), np.sort(members[part == 1])


def _even_out(part: np.ndarray, rows: np.ndarray, wanted_label: np.ndarray, k: int) -> None:
    """Move pictures between the parts, one at a time, until the first holds exactly
    ``k`` (dealing by labels leaves it a few off): each time the picture whose move
    brings the labels' counts closest to their shares (squared excess over each
    label's size, chi-square-like)."""
    surplus = int((part == 0).sum()) - k
    src, dst = (0, 1) if surplus > 0 else (1, 0)
    weight = 1.0 / np.maximum(rows.sum(axis=0), 1)
    for _ in range(abs(surplus)):
        members = np.flatnonzero(part == src)
        excess_src, excess_dst = -wanted_label[src], -wanted_label[dst]
        gain = rows[members] @ ((2 * (excess_src - excess_dst) - 2) * weight)
        i = members[int(np.argmax(gain))]  # ties: the first, in the seeded order
        part[i] = dst
        wanted_label[src] += rows[i]
        wanted_label[dst] -= rows[i]
