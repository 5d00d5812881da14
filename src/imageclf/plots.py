"""Matplotlib figures for runs and reports: curves, confusion heatmaps, image grids,
reliability diagrams.

Figures are built with ``matplotlib.figure.Figure`` and the Agg canvas directly,
never through ``pyplot``: no global backend or figure state, so the web app and
several threads can draw at once and nothing needs a display.

Every string from outside (class names, file names, titles) is drawn as text, never as
mathtext: a class folder named ``cost $5 and $`` would otherwise be parsed as a formula
and fail the whole report. ``literal`` escapes it at the point it enters a figure.
"""

from __future__ import annotations

import io
import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

DPI = 110
RIGHT, WRONG = "#1a7f37", "#cf222e"  # green / red that stay readable on white
TRAIN_COLOR, VAL_COLOR = "#1f77b4", "#ff7f0e"


def literal(text: str | None) -> str | None:
    """``text`` drawn as written: escaped dollar signs are shown as plain dollars."""
    return None if text is None else str(text).replace("$", r"\$")


def figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def save(fig: Figure, path: str | os.PathLike) -> Path:
    """Write a PNG (white background, so it reads in dark-mode viewers too)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png", facecolor="white")
    return path


def to_png_bytes(fig: Figure) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


# ---------------------------------------------------------------- training curves
def training_curves(
    history: Sequence[dict],
    title: str | None = None,
    label_smoothing: float = 0.0,
    kept: dict | None = None,
) -> Figure:
    """Loss and accuracy per epoch, train vs validation, the kept epoch marked.

    ``kept`` (``{"epoch", "rule"}``, as metrics.json records it) is the epoch whose
    weights the model holds; without it (an older run) the lowest validation loss is
    marked and labelled as only that. With label smoothing the training loss is measured
    against smoothed targets, so it sits above the validation loss for reasons that are
    not overfitting: say so.
    """
    epochs = [h["epoch"] for h in history]
    fig = figure(10, 4)
    axes = fig.subplots(1, 2)
    marker = _kept_marker(history, kept)
    for ax, key, label in ((axes[0], "loss", "loss"), (axes[1], "acc", "accuracy")):
        train = [h.get(f"train_{key}") for h in history]
        val = [h.get(f"val_{key}") for h in history]
        ax.plot(epochs, train, "o-", color=TRAIN_COLOR, label="train", markersize=4)
        if any(v is not None for v in val):
            ax.plot(
                epochs,
                [np.nan if v is None else v for v in val],
                "o-",
                color=VAL_COLOR,
                label="validation",
                markersize=4,
            )
        if marker is not None:
            ax.axvline(marker[0], color="0.5", linestyle="--", linewidth=1, label=marker[1])
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        smoothing = f" (train with label smoothing {label_smoothing:g})" if label_smoothing else ""
        ax.set_title(f"{label} per epoch" + (smoothing if key == "loss" else ""))
        ax.grid(True, alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=9)
    if title or kept:
        kept_line = f"kept: epoch {kept['epoch']}, {kept['rule']}" if kept else None
        fig.suptitle(literal("\n".join(t for t in (title, kept_line) if t)))
    return fig


def _kept_marker(history: Sequence[dict], kept: dict | None) -> tuple[int, str] | None:
    """(epoch, legend label) of the dashed line: the kept epoch, else the lowest val loss."""
    if kept is not None:
        return kept["epoch"], f"kept (epoch {kept['epoch']})"
    val_losses = [(h.get("val_loss"), h["epoch"]) for h in history if h.get("val_loss") is not None]
    if not val_losses:
        return None
    best = min(val_losses)[1]
    return best, f"lowest val loss (epoch {best})"


def save_training_curves(
    history: Sequence[dict],
    path: str | os.PathLike,
    title: str | None = None,
    label_smoothing: float = 0.0,
    kept: dict | None = None,
) -> Path | None:
    """``curves.png`` for a run folder; None when there is nothing to plot."""
    if not history:
        return None
    return save(training_curves(history, title, label_smoothing, kept), path)


# ---------------------------------------------------------------- learning-rate sweep
def lr_curve(
    lrs: Sequence[float],
    losses: Sequence[float],
    smoothed: Sequence[float],
    marks: dict[str, float | None],
    title: str | None = None,
) -> Figure:
    """The LR range test: loss per step against the rate (log scale), the smoothed
    curve, and each named rate in ``marks`` (suggestion, recipe's lr) as a line."""
    fig = figure(7, 4.2)
    ax = fig.subplots()
    ax.plot(lrs, losses, color=TRAIN_COLOR, alpha=0.3, linewidth=1, label="loss per step")
    ax.plot(lrs, smoothed, color=TRAIN_COLOR, linewidth=2, label="smoothed")
    styles = iter(((VAL_COLOR, "--"), (RIGHT, ":"), ("0.4", "-.")))
    for name, value in marks.items():
        if value is not None:
            color, style = next(styles, ("0.4", "-."))
            ax.axvline(value, color=color, linestyle=style, label=literal(f"{name} {value:.3g}"))
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    if len(smoothed):  # divergence would squash the useful part of the curve
        top = min(max(losses), 1.5 * max(smoothed[: max(1, len(smoothed) // 2)]))
        ax.set_ylim(min(losses) * 0.95, top * 1.05)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=9)
    if title:
        ax.set_title(literal(title))
    return fig


# ---------------------------------------------------------------- confusion matrix
def confusion_heatmap(
    matrix: np.ndarray, classes: Sequence[str], *, normalized: bool, title: str
) -> Figure:
    """Counts or row-normalised shares, true classes down, predictions across."""
    matrix = np.asarray(matrix, dtype=np.float64)
    n = len(classes)
    side = min(max(5.0, 0.6 * n + 2.5), 24.0)
    fig = figure(side + 1.2, side)
    ax = fig.subplots()
    vmax = 1.0 if normalized else max(float(matrix.max()), 1.0)
    image = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=vmax)
    cbar = fig.colorbar(image, ax=ax, shrink=0.8)
    cbar.set_label("share of the true class" if normalized else "images")
    labels = [literal(c) for c in classes]
    ax.set_xticks(range(n), labels, rotation=45, ha="right", rotation_mode="anchor")
    ax.set_yticks(range(n), labels)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(literal(title))
    if n <= 30:
        size = 9 if n <= 12 else 7
        for i in range(n):
            for j in range(n):
                value = matrix[i, j]
                text = f"{value:.2f}" if normalized else f"{round(value)}"
                if normalized and value < 0.005:
                    text = "0"
                color = "white" if value > 0.55 * vmax else "black"
                ax.text(j, i, text, ha="center", va="center", color=color, fontsize=size)
    return fig


# ---------------------------------------------------------------- image grids
def image_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    correct: Sequence[bool] | None = None,
    *,
    ncols: int = 5,
    title: str | None = None,
    cell: float = 2.0,
) -> Figure:
    """A grid of pictures with a caption each; wrong ones get a red frame and caption."""
    n = len(images)
    ncols = max(1, min(ncols, n))
    nrows = max(1, math.ceil(n / ncols))
    lines = max((t.count("\n") + 1 for t in titles), default=1)  # caption height per row
    fig = figure(cell * ncols, (cell + 0.15 * lines) * nrows + (0.4 if title else 0))
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for k, ax in enumerate(axes):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= n:
            ax.set_axis_off()
            continue
        ax.imshow(images[k], interpolation="bicubic" if images[k].shape[0] < 64 else "antialiased")
        ok = True if correct is None else bool(correct[k])
        color = "black" if correct is None else (RIGHT if ok else WRONG)
        ax.set_title(literal(titles[k]), fontsize=8.5, color=color, linespacing=1.2)
        for spine in ax.spines.values():
            spine.set_color(color if not ok else "0.8")
            spine.set_linewidth(3 if not ok else 0.8)
    if title:
        fig.suptitle(literal(title), fontsize=12)
    return fig


# ---------------------------------------------------------------- calibration
def reliability_diagram(
    bins: Sequence[dict], ece: float, title: str, before: dict | None = None
) -> Figure:
    """Accuracy vs confidence per bin (the gap to the diagonal is miscalibration),
    with how many images fall in each bin underneath. ``before`` (``ece`` and ``bins``
    of the raw, uncalibrated confidences) is drawn beside it as hollow markers."""
    lower = np.array([b["lower"] for b in bins])
    upper = np.array([b["upper"] for b in bins])
    counts = np.array([b["count"] for b in bins])
    acc = np.array([np.nan if b["accuracy"] is None else b["accuracy"] for b in bins])
    conf = np.array([np.nan if b["confidence"] is None else b["confidence"] for b in bins])
    width = upper - lower
    centers = (lower + upper) / 2
    fig = figure(6, 6.5)
    top, bottom = fig.subplots(2, 1, sharex=True, height_ratios=[3, 1])
    top.plot([0, 1], [0, 1], "--", color="0.5", label="perfect calibration", zorder=2.5)
    top.bar(
        centers,
        np.nan_to_num(acc),
        width=width * 0.92,
        color="#9ecae1",
        edgecolor=TRAIN_COLOR,
        label="accuracy",
        zorder=2,
    )
    filled = ~np.isnan(acc)
    # The gap between what the model claims and what it achieves, per bin.
    top.vlines(
        centers[filled],
        acc[filled],
        conf[filled],
        color=WRONG,
        linewidth=2.5,
        label="gap",
        zorder=3,
    )
    top.plot(
        centers[filled],
        conf[filled],
        "o",
        color="black",
        markersize=4,
        label="mean confidence",
        zorder=4,
    )
    heading = f"{literal(title)}\nECE = {ece:.4f}"
    if before is not None:
        raw = [b for b in before["bins"] if b["accuracy"] is not None]
        top.plot(
            [b["confidence"] for b in raw],
            [b["accuracy"] for b in raw],
            "s--",
            color="#e6550d",
            markerfacecolor="none",
            markersize=6,
            linewidth=1,
            label="before temperature scaling (accuracy vs confidence)",
            zorder=4,
        )
        heading = f"{literal(title)}\nECE = {ece:.4f} calibrated, {before['ece']:.4f} before"
    top.set_ylim(0, 1)
    top.set_xlim(0, 1)
    top.set_ylabel("accuracy in bin")
    top.set_title(heading)
    top.legend(loc="upper left", fontsize=9)
    top.grid(True, alpha=0.3)
    bottom.bar(centers, counts, width=width * 0.95, color="0.55")
    bottom.set_xlabel("confidence (probability of the predicted class)")
    bottom.set_ylabel("images")
    bottom.grid(True, alpha=0.3)
    return fig
