"""``imageclf predict`` over files and folders: which files to try, classifying them in
batches through ``Predictor`` (one result per file, failures included), optional Grad-CAM
overlays beside them, and the table / JSON / CSV the command prints.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm.auto import tqdm

from ..errors import ImageError, UserInputError
from ..fileio import csv_text, unreadable_reason
from ..imaging import IMAGE_EXTENSIONS
from .gradcam import overlay
from .predictor import Predictor

BATCH_SIZE = 64
EXPLAIN_SIZE = 256


@dataclass
class FileResult:
    """One input file: its top-k predictions, or why it could not be classified."""

    path: str
    top: list[tuple[str, float]] | None = None
    error: str | None = None
    explanation: str | None = None  # where its Grad-CAM overlay was written
    unsure: bool = False  # which class? top-1 under the model's threshold, as on the page
    outside: bool = False  # one of its classes? familiarity under the model's threshold
    # Where --sort-into copied or linked it (a multi-label model: one copy per label).
    sorted_to: str | list[str] | None = None
    # A multi-label model's answer: every label at or above its threshold (perhaps none),
    # most likely first, with the threshold it met; None for a single-label model.
    labels: list[tuple[str, float, float]] | None = None

    @property
    def ok(self) -> bool:
        return self.error is None


def collect_images(
    inputs: Sequence[str | os.PathLike], skip: str | os.PathLike | None = None
) -> tuple[list[Path], list[FileResult]]:
    """Expand folders (recursively, sorted, hidden files skipped) into image files.

    Inside folders only files with an image extension are tried (a README or .DS_Store
    is not a failed image); a file named explicitly is always tried. Files under the
    folder ``skip`` (``--sort-into``'s, perhaps inside an input folder) are left out of
    folders: what was sorted before is not read again.

    Returns the files and a failure entry for every input that is neither (missing, a
    symlink loop, a FIFO...), saying which.
    """
    files: list[Path] = []
    missing: list[FileResult] = []
    skipped = Path(os.path.realpath(skip)) if skip is not None else None

    @functools.cache
    def inside(folder: Path) -> bool:  # symlinks resolved: the same folder by any name
        return skipped is not None and Path(os.path.realpath(folder)).is_relative_to(skipped)

    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(
                p
                for p in path.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(path).parts)
                and not inside(p.parent)
            )
            files += found
        elif path.is_file():
            files.append(path)
        else:
            missing.append(FileResult(str(path), error=unreadable_reason(path)))
    return files, missing


def _explain_name(path: Path, used: set[str]) -> str:
    """``NAME.gradcam.png``, numbered when two inputs share a name."""
    stem = f"{path.stem}.gradcam"
    name, k = f"{stem}.png", 2
    while name in used:
        name, k = f"{stem}-{k}.png", k + 1
    used.add(name)
    return name


def predict_files(
    predictor: Predictor,
    inputs: Sequence[str | os.PathLike],
    *,
    top_k: int = 3,
    tta: bool = False,
    threshold: float | None = None,
    explain_dir: str | os.PathLike | None = None,
    batch_size: int = BATCH_SIZE,
    progress: bool = True,
    skip: str | os.PathLike | None = None,
) -> Iterator[FileResult]:
    """Classify every image under ``inputs``; yields one ``FileResult`` per file, in order.

    ``explain_dir``: also write a Grad-CAM overlay (for the top class) per image there.
    ``skip``: a folder whose files are not read from input folders (``collect_images``).
    ``threshold``: a multi-label model's one threshold for every label (``labels.py``).
    """
    if top_k < 1:
        raise UserInputError("--top-k must be at least 1")
    predictor.label_thresholds(threshold)  # refused at once by a single-label model
    files, missing = collect_images(inputs, skip)
    yield from missing
    if not files and not missing:
        raise UserInputError("no image files found in the given paths")
    out = Path(explain_dir) if explain_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    used: set[str] = set()
    with tqdm(
        total=len(files),
        desc="predicting",
        unit="img",
        dynamic_ncols=True,
        leave=False,
        disable=not progress or len(files) <= batch_size,
    ) as bar:
        for start in range(0, len(files), batch_size):
            chunk = files[start : start + batch_size]
            decoded: list[tuple[Path, np.ndarray, Image.Image | None]] = []
            pictures: list[Image.Image] = []  # as decoded (working size), for a gate
            for path in chunk:
                try:
                    picture = predictor.decode(path)
                except ImageError as exc:
                    yield FileResult(str(path), error=str(exc))
                    continue
                # The picture is kept (small) only to draw the explanation on.
                small = picture.resize((EXPLAIN_SIZE, EXPLAIN_SIZE)) if out else None
                decoded.append((path, predictor.prepare(picture), small))
                pictures.append(picture)
            bar.update(len(chunk))
            if not decoded:
                continue
            batch = np.stack([d[1] for d in decoded])
            verdict = predictor.judged(batch, pictures, tta=tta)
            probs = verdict.probs
            explained = [None] * len(decoded)
            if out is not None:
                explained = _write_explanations(predictor, batch, probs, decoded, out, used)
            doubts = zip(verdict.unsure, verdict.outside, strict=True)
            for (path, _, _), row, where, (unsure, outside) in zip(
                decoded, probs, explained, doubts, strict=True
            ):
                top = predictor.top(row, top_k)
                result = FileResult(str(path), top, None, where, bool(unsure), bool(outside))
                if predictor.multi_label:
                    result.labels = predictor.label_answers(row[None], threshold)[0]
                yield result


def _write_explanations(
    predictor: Predictor,
    batch: np.ndarray,
    probs: np.ndarray,
    decoded: list[tuple[Path, np.ndarray, Image.Image | None]],
    out: Path,
    used: set[str],
) -> list[str]:
    """One Grad-CAM pass for the batch's top classes, each overlay saved under ``out``."""
    maps = predictor.gradcam(batch, probs.argmax(1)).heatmaps
    written = []
    for (path, _, picture), heat in zip(decoded, maps, strict=True):
        target = out / _explain_name(path, used)
        overlay(picture, heat, EXPLAIN_SIZE).save(target)
        written.append(str(target))
    return written


def format_results(
    results: Sequence[FileResult], out_format: str = "table", model: str | None = None
) -> str:
    """``table`` for people, ``json`` and ``csv`` for machines (failures included).
    ``model``: the model's name (``Predictor.name``), in every JSON entry. A multi-label
    model's results (``FileResult.labels``) list its labels instead of unsure/outside."""
    if out_format == "json":
        entries = [_json_entry(r, model) for r in results]
        return json.dumps(entries, indent=2, allow_nan=False) + "\n"
    multi = any(r.labels is not None for r in results)
    if out_format == "csv":  # paths and labels that look like formulas stay text
        if multi:
            return csv_text([MULTI_CSV_HEADER, *(row for r in results for row in _label_rows(r))])
        rows: list[list] = [["path", "rank", "label", "probability", "unsure", "outside", "error"]]
        for r in results:
            if not r.ok:
                rows.append([r.path, "", "", "", "", "", r.error])
                continue
            flags = [str(r.unsure).lower(), str(r.outside).lower()]
            rows += [
                [r.path, rank, label, f"{p:.4f}", *flags, ""]
                for rank, (label, p) in enumerate(r.top or [], start=1)
            ]
        return csv_text(rows)
    if out_format != "table":
        raise UserInputError(f"unknown format {out_format!r}; choose table, json or csv")
    ok = [r for r in results if r.ok]
    if not ok:
        return ""
    if multi:
        return _columns(["image", "labels"], [[r.path, _label_cell(r)] for r in ok])
    k = max(len(r.top or []) for r in ok)
    cells = [[r.path, *(f"{lab} {p:.4f}" for lab, p in r.top or [])] for r in ok]
    for row, r in zip(cells, ok, strict=True):
        if r.outside:  # the page's headline says so: so does the table
            row[1] += " (none of its classes?)"
        elif r.unsure:
            row[1] += " (not sure)"
    return _columns(["image", "prediction", *(f"#{i}" for i in range(2, k + 1))], cells)


def _columns(header: list[str], cells: list[list[str]]) -> str:
    """Left-aligned columns, as wide as their widest cell; short rows allowed."""
    k = max(len(row) for row in [header, *cells])
    widths = [max(len(row[i]) if i < len(row) else 0 for row in [header, *cells]) for i in range(k)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=False)).rstrip()]
    lines += [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=False)).rstrip() for row in cells
    ]
    return "\n".join(lines) + "\n"


NO_LABEL = "no label above its threshold"
MULTI_CSV_HEADER = ["path", "label", "probability", "threshold", "error"]


def _json_entry(r: FileResult, model: str | None) -> dict:
    entry: dict = {"path": r.path}
    if model is not None:
        entry["model"] = model
    if r.ok:
        entry["predictions"] = [{"label": lab, "probability": p} for lab, p in r.top or []]
        if r.labels is not None:  # several labels or none: unsure/outside do not apply
            entry["task"] = "multi_label"
            entry["labels"] = [
                {"label": lab, "probability": p, "threshold": t} for lab, p, t in r.labels
            ]
        else:
            entry["unsure"] = r.unsure
            entry["outside"] = r.outside
        if r.explanation:
            entry["explanation"] = r.explanation
    else:
        entry["error"] = r.error
    if r.sorted_to:
        entry["sorted_to"] = r.sorted_to
    return entry


def _label_rows(r: FileResult) -> list[list]:
    """A multi-label result's CSV rows: one per label that is on; one empty row if none."""
    if not r.ok:
        return [[r.path, "", "", "", r.error]]
    if not r.labels:
        return [[r.path, "", "", "", ""]]
    return [[r.path, lab, f"{p:.4f}", f"{t:.4f}", ""] for lab, p, t in r.labels]


def _label_cell(r: FileResult) -> str:
    if not r.labels:
        return f"({NO_LABEL})"
    return ", ".join(f"{lab} {p:.4f}" for lab, p, _ in r.labels)
