"""``imageclf data inspect DIR``: what a folder holds, before any training.

The same listing, layout rules and decoder as training (``readers.list_entries``,
``layout.scan_layout``, ``imaging.open_image``), so what this reports is what training
will see: classes, images per class and split, image sizes, every file that would be
skipped, and the disk the decoded cache will take at the training size (and whether
training will hold the pictures in memory or memory-map them: ``memory``). A labels
table (``tables``) is read by the table reader's rules, and for multi-label data the
counts are pictures carrying each label, with the labels per picture and combinations.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from ..errors import ImageError
from ..fileio import printable
from ..imaging import open_image
from ..paths import cache_dir
from .dataset import PARTITION_NAMES
from .layout import read_payload, scan_layout, summarize_names
from .memory import decoded_bytes, fits_in_memory, memory_available
from .readers import list_entries
from .tables import Table, table_for


@dataclass
class Inspection:
    source: str
    layout: str
    classes: list[str]
    counts: dict[str, dict[str, int]]  # split -> class -> readable images
    sizes: list[tuple[int, int]]  # (width, height) of every readable image
    unreadable: list[str] = field(default_factory=list)  # "name (reason)"
    not_images: list[str] = field(default_factory=list)
    image_size: int = 32  # the training size the cache is decoded at
    multi_label: bool = False
    label_sets: list[tuple[str, ...]] = field(default_factory=list)  # readable multi-label rows
    pictures: dict[str, int] = field(default_factory=dict)  # split -> readable pictures (tables)

    @property
    def cache_bytes(self) -> int:
        """Disk the decoded cache takes: every readable image at the training size."""
        return decoded_bytes(len(self.sizes), self.image_size)

    @property
    def problems(self) -> list[str]:
        train = self.counts.get("train", {})
        few = [f"{printable(c)} ({n})" for c, n in train.items() if n < 2]
        return [f"classes with fewer than 2 training images: {', '.join(few)}"] if few else []


def inspect(
    path: str | Path, *, progress: bool = True, image_size: int = 32, table: dict | None = None
) -> Inspection:
    """What training on ``path`` at ``image_size`` would see, without decoding it all
    (a labels table read with ``table``'s options)."""
    path = Path(path).expanduser()
    found = table_for(path, table)
    if found is not None:
        return _inspect_table(found, progress, image_size)
    layout = scan_layout(list_entries(path, progress), str(path))
    counts = {
        name: dict.fromkeys(layout.classes, 0)
        for name in (
            ["train", *(k for k in ("val", "test") if k in layout.partition_folders)]
            if layout.partitioned
            else ["train"]
        )
    }
    sizes, unreadable = [], []
    for parts, payload, name in tqdm(
        layout.images, desc=f"checking {path.name}", unit="img", disable=not progress
    ):
        if not _opened(payload, name, sizes, unreadable):
            continue
        split = PARTITION_NAMES[layout.partition_of(parts)] if layout.partitioned else "train"
        counts[split][parts[-2]] += 1
    if layout.partitioned:
        shape = ",".join(layout.partition_folders[k] for k in ("train", "val", "test")
                         if k in layout.partition_folders)  # fmt: skip
        description = f"ROOT/{{{shape}}}/<class>/<image>"
    else:
        description = "ROOT/<class>/<image> (validation and test are carved from it)"
    return Inspection(
        str(path), description, layout.classes, counts, sizes, unreadable, layout.not_images,
        image_size,
    )  # fmt: skip


def _opened(payload, name: str, sizes: list, unreadable: list[str]) -> bool:
    """Open (not decode) one picture as training would: its size into ``sizes``, or why
    not into ``unreadable``."""
    try:
        with open_image(read_payload(payload)) as image:
            sizes.append(image.size)
    except (ImageError, OSError) as exc:
        unreadable.append(f"{name} ({getattr(exc, 'strerror', None) or exc})")
        return False
    return True


def _inspect_table(found: Table, progress: bool, image_size: int) -> Inspection:
    """The table's rows, each named picture opened (not decoded) as training would."""
    rows = found.rows
    present = sorted(set(rows.partition), key=[0, 2, 1].index)  # train, val, test
    counts = {PARTITION_NAMES[p]: dict.fromkeys(rows.classes, 0) for p in present}
    sizes, unreadable, label_sets = [], [], []
    pictures = dict.fromkeys(counts, 0)
    for i, path in enumerate(
        tqdm(found.paths, desc=f"checking {found.csv.name}", unit="img", disable=not progress)
    ):
        if not _opened(path, found.names[i], sizes, unreadable):
            continue
        split = PARTITION_NAMES[rows.partition[i]]
        pictures[split] += 1
        for label in rows.labels[i]:
            counts[split][label] += 1
        label_sets.append(tuple(sorted(rows.labels[i])))
    form = "0/1 columns" if found.options.label_columns else "a label column"
    description = f"table {found.csv.name}: files and {form} ({rows.why})"
    return Inspection(
        found.source, description, rows.classes, counts, sizes, unreadable, [], image_size,
        rows.multi_label, label_sets if rows.multi_label else [], pictures,
    )  # fmt: skip


def label_lines(ins: Inspection) -> list[str]:
    """Multi-label data: labels per picture (cardinality) and distinct combinations."""
    if not ins.multi_label or not ins.label_sets:
        return []
    per = np.array([len(s) for s in ins.label_sets])
    return [
        f"labels per picture: mean {per.mean():.2f} (label cardinality), min {per.min()}, "
        f"max {per.max()}; {int((per == 0).sum())} with no label",
        f"label combinations: {len(set(ins.label_sets))} distinct",
    ]


def cache_line(ins: Inspection) -> str:
    """How much disk the decoded cache will take, where, and memory or memory-mapped."""
    need, side = ins.cache_bytes, ins.image_size
    folder = cache_dir().absolute()
    existing = next(p for p in (folder, *folder.parents) if p.exists())
    free = shutil.disk_usage(existing).free
    have = memory_available()
    room = f"{have / 1e9:.1f} GB of memory available" if have is not None else "memory unknown"
    where = (
        "held in memory when training" if fits_in_memory(need)
        else "too big for memory: training memory-maps it from disk"
    )  # fmt: skip
    return (f"decoded cache at {side}x{side}: {need / 1e6:,.1f} MB on disk in {folder} "
            f"({free / 1e9:,.1f} GB free); {where} ({room})")  # fmt: skip


def format_inspection(ins: Inspection) -> str:
    """The report, every name from the data made safe to print (``printable``)."""
    splits = list(ins.counts)
    shown = {c: printable(c) for c in ins.classes}
    word = "pictures" if ins.multi_label else "total"  # labels per picture may be several
    width = max(len(c) for c in [*shown.values(), "class", word])
    lines = [
        f"source:  {printable(ins.source)}",
        f"layout:  {ins.layout}",
        f"classes: {len(ins.classes)}",
        "",
        f"{'class':<{width}}" + "".join(f"{s:>8}" for s in splits),
    ]
    for c in ins.classes:
        lines.append(f"{shown[c]:<{width}}" + "".join(f"{ins.counts[s][c]:>8}" for s in splits))
    totals = ins.pictures or {s: sum(ins.counts[s].values()) for s in splits}
    lines.append(f"{word:<{width}}" + "".join(f"{totals[s]:>8}" for s in splits))
    if ins.sizes:
        w = np.array([s[0] for s in ins.sizes])
        h = np.array([s[1] for s in ins.sizes])
        lines += [
            "",
            f"image sizes (width x height): min {w.min()}x{h.min()}, median "
            f"{int(np.median(w))}x{int(np.median(h))}, max {w.max()}x{h.max()}; "
            f"{len(set(ins.sizes))} distinct",
        ]
    lines += label_lines(ins)
    lines.append(cache_line(ins))
    if ins.unreadable:
        lines.append(f"unreadable images (skipped in training): {len(ins.unreadable)}: "
                     f"{summarize_names(ins.unreadable)}")  # fmt: skip
    if ins.not_images:
        lines.append(f"files that are not images (skipped): {len(ins.not_images)}: "
                     f"{summarize_names(ins.not_images)}")  # fmt: skip
    for problem in ins.problems:
        lines.append(f"problem: {problem}; training will refuse this folder")
    return "\n".join(lines) + "\n"
