"""``imageclf data show``: a contact sheet (PNG) of a dataset's pictures with their
labels, fastai's ``show_batch``: N per class or a seeded random sample, optionally after
the recipe's augmentation, so a wrong label, a broken class folder or an augmentation
too strong for the pictures shows before any training.

The pictures are the decoded ``Dataset`` training uses (``load_dataset``: the same
readers and the same size), and augmentation is ``augment.augment_batch`` on the whole
batch, normalised and back exactly as training sees it (cutout's square is the mean
colour, the normalised zero).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .. import plots
from ..errors import UserInputError
from ..fileio import atomic_write
from .augment import AugmentConfig, augment_batch
from .dataset import Dataset, class_counts
from .loader import channel_stats

MAX_PICTURES = 200  # beyond this a sheet is slow to draw and too small to read
DEFAULT_PER_CLASS = 8


@dataclass
class ContactSheet:
    """What ``write_contact_sheet`` wrote."""

    path: Path
    pictures: int
    classes: int  # how many classes appear on it


def default_per_class(num_classes: int) -> int:
    """Up to 8 of each class, fewer when many classes share the sheet."""
    return max(1, min(DEFAULT_PER_CLASS, MAX_PICTURES // max(1, num_classes)))


def pick(
    labels: np.ndarray,
    num_classes: int,
    *,
    per_class: int | None = None,
    sample: int | None = None,
    seed: int = 0,
) -> np.ndarray:
    """Indices of the pictures to show, grouped by class: ``per_class`` of each class
    (all of a smaller one; default: up to 8, fewer when many classes share the sheet), or
    a random ``sample`` of the whole dataset. Seeded: the same seed, the same sheet.
    Multi-hot labels: a picture with several labels may be drawn for each of them."""
    rng = np.random.default_rng(seed)
    if sample is not None:
        if not 1 <= sample <= MAX_PICTURES:
            raise UserInputError(f"--sample must be from 1 to {MAX_PICTURES}")
        chosen = rng.choice(len(labels), size=min(sample, len(labels)), replace=False)
        first = labels[chosen] if labels.ndim == 1 else labels[chosen].argmax(axis=1)
        return chosen[np.argsort(first, kind="stable")]
    if per_class is None:
        per_class = default_per_class(num_classes)
    if per_class < 1:
        raise UserInputError("--per-class must be at least 1")
    counts = class_counts(labels, num_classes)
    if np.minimum(counts, per_class).sum() > MAX_PICTURES:
        raise UserInputError(
            f"{int((counts > 0).sum())} classes x {per_class} pictures is more than "
            f"{MAX_PICTURES} on one sheet: lower --per-class or use --sample N"
        )
    groups = []
    for c in range(num_classes):
        members = np.flatnonzero(labels == c if labels.ndim == 1 else labels[:, c])
        groups.append(
            np.sort(rng.choice(members, size=min(per_class, len(members)), replace=False))
        )
    return np.concatenate(groups) if groups else np.zeros(0, np.int64)


def augmented(
    images: np.ndarray,
    indices: np.ndarray,
    cfg: AugmentConfig,
    mean: list[float],
    std: list[float],
    seed: int = 0,
) -> np.ndarray:
    """``images`` (N, H, W, 3) uint8 through ``augment_batch`` as one batch, as the first
    epoch of training would see them, back as uint8 for drawing."""
    m = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
    x = (torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float() / 255 - m) / s
    gen = torch.Generator().manual_seed(seed)
    x = augment_batch(x, torch.from_numpy(np.asarray(indices)), 0, cfg, gen, seed)
    pixels = ((x * s + m) * 255).round().clamp(0, 255).to(torch.uint8)
    return pixels.permute(0, 2, 3, 1).contiguous().numpy()


def describe(cfg: AugmentConfig) -> str:
    """The augmentation in words: the settings that are on."""
    defaults = AugmentConfig()
    on = [f"{k}={v}" for k, v in cfg.to_dict().items() if v != getattr(defaults, k)]
    return ", ".join(on) or "none"


def class_rows(rows: list[tuple[str, np.ndarray, list[str]]], title: str, cell: float = 1.6):
    """A figure with one row per class: (label, pictures, file names) each; the label
    at the row's left, each picture captioned with the end of its file name."""
    ncols = max(len(pictures) for _, pictures, _ in rows)
    fig = plots.figure(cell * ncols + 1.5, (cell + 0.2) * len(rows) + 0.4)
    axes = fig.subplots(len(rows), ncols, squeeze=False)
    for (label, pictures, names), row in zip(rows, axes, strict=True):
        row[0].set_ylabel(plots.literal(label), fontsize=10, rotation=0, ha="right", va="center")
        for k, ax in enumerate(row):
            ax.set_xticks([])
            ax.set_yticks([])
            if k >= len(pictures):
                ax.set_frame_on(False)
                continue
            small = pictures[k].shape[0] < 64
            ax.imshow(pictures[k], interpolation="bicubic" if small else "antialiased")
            ax.set_title(plots.literal(_caption("", names[k]).lstrip()), fontsize=7.5)
            for spine in ax.spines.values():
                spine.set_color("0.8")
    fig.suptitle(plots.literal(title), fontsize=12)
    return fig


def _caption(label: str, name: str, limit: int = 18) -> str:
    """The label, and the end of the file name (which tells files apart)."""
    short = name if len(name) <= limit else "…" + name[-(limit - 1) :]
    return f"{label}\n{short}"


def write_contact_sheet(
    dataset: Dataset,
    out: str | os.PathLike,
    *,
    per_class: int | None = None,
    sample: int | None = None,
    augment: AugmentConfig | None = None,
    seed: int = 0,
) -> ContactSheet:
    """Draw the chosen pictures with their labels (and file names) and write the PNG
    atomically; ``augment`` applies that augmentation to the whole batch first."""
    out = Path(out)
    if out.is_dir():
        raise UserInputError(f"--out {out} is a folder; give a .png file name")
    if len(dataset) == 0:
        raise UserInputError(f"{dataset.source}: no pictures to show")
    if sample is None and per_class is None:
        per_class = default_per_class(len(dataset.classes))
    chosen = pick(
        dataset.labels, len(dataset.classes), per_class=per_class, sample=sample, seed=seed
    )
    images = dataset.images[chosen]
    how = f"{len(chosen)} pictures, " + (
        f"a random sample (seed {seed})" if sample is not None else "per class"
    )
    if augment is not None:
        mean, std = channel_stats(dataset.images)
        std = [max(v, 1e-3) for v in std]  # a one-colour dataset still draws
        images = augmented(images, chosen, augment, mean, std, seed)
        how += f", augmented: {describe(augment)}"
    labels = dataset.labels[chosen]
    names = dataset.names if dataset.names is not None else np.array([""] * len(dataset))
    title = f"{Path(dataset.source).name} ({dataset.image_size} px): {how}"
    if sample is None:  # one row per class, its name on the left
        rows = [
            (dataset.classes[c], images[at], [str(n) for n in names[chosen[at]]])
            for c, at in _class_rows(dataset, labels, per_class)
        ]
        fig = class_rows(rows, title)
    else:
        titles = [_caption(_label_text(dataset, y), str(names[i]))
                  for i, y in zip(chosen, labels, strict=True)]  # fmt: skip
        ncols = min(10, max(4, math.ceil(math.sqrt(len(chosen)))))
        fig = plots.image_grid(list(images), titles, ncols=ncols, title=title)
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_write(out) as handle:
        handle.write(plots.to_png_bytes(fig))
    shown = int(labels.any(axis=0).sum()) if dataset.multi_label else len(set(labels.tolist()))
    return ContactSheet(out, len(chosen), shown)


def _class_rows(dataset: Dataset, labels: np.ndarray, per_class: int):
    """(class, positions in the chosen pictures) per row: ``pick``'s groups, in order."""
    if not dataset.multi_label:
        return [(c, labels == c) for c in np.unique(labels)]
    sizes = np.minimum(class_counts(dataset.labels, len(dataset.classes)), per_class)
    ends = np.cumsum(sizes)
    rows = []
    for c, (start, end) in enumerate(zip(ends - sizes, ends, strict=True)):
        if end > start:
            rows.append((c, np.arange(start, end)))
    return rows


def _label_text(dataset: Dataset, label: np.ndarray) -> str:
    """A picture's label: its class, or its labels joined by '+' (multi-label)."""
    if not dataset.multi_label:
        return dataset.classes[int(label)]
    return "+".join(dataset.classes[c] for c in np.flatnonzero(label)) or "(no label)"
