"""The report folder of a multi-label evaluation: CSV tables, metrics.json, PNGs (each
label's precision-recall curve with its threshold marked, the pictures with the largest
errors, Grad-CAM of one chosen label) and one self-contained report.html
(``templates/multilabel.html``). The numbers are ``multilabel.py``'s, rounded once."""

from __future__ import annotations

import base64
import datetime as _dt
import logging
import math
import os
from pathlib import Path

import numpy as np

from .. import plots
from ..errors import UserInputError
from ..fileio import csv_text, printable, write_text_atomic
from ..prediction.gradcam import ensemble_gradcam, overlay
from .multilabel import LabelEvalResult, LabelInterpretation
from .report import GRADCAM_CELL, Report, _environment, write_files
from .report_metrics import fmt

log = logging.getLogger("imageclf.report")

SUMMARY_KEYS = (
    "map",
    "micro_f1",
    "macro_f1",
    "samples_f1",
    "subset_accuracy",
    "hamming_loss",
    "cardinality_true",
    "cardinality_predicted",
)
LABEL_KEYS = (
    "label",
    "precision",
    "recall",
    "f1",
    "support",
    "average_precision",
    "threshold",
    "tn",
    "fp",
    "fn",
    "tp",
)
GRADCAM_PICTURES = 10  # per chosen label: the pictures that have it, most probable first


# ---------------------------------------------------------------- figures
def pr_curves(interp: LabelInterpretation, title: str):
    """One precision-recall curve per label, its average precision in the title and the
    point its threshold picks marked."""
    from sklearn.metrics import precision_recall_curve

    count = len(interp.classes)
    ncols = min(4, count)
    nrows = math.ceil(count / ncols)
    fig = plots.figure(3.2 * ncols, 3.0 * nrows + 0.5)
    axes = np.atleast_1d(fig.subplots(nrows, ncols)).ravel()
    for c, ax in enumerate(axes):
        if c >= count:
            ax.set_axis_off()
            continue
        y, p = interp.targets[:, c], interp.probs[:, c]
        name = plots.literal(interp.classes[c])
        if not y.any():
            ax.set_title(f"{name}: no positive picture", fontsize=9)
            continue
        precision, recall, _ = precision_recall_curve(y, p)
        ax.plot(recall, precision, color=plots.TRAIN_COLOR)
        on = p >= interp.thresholds[c]
        tp = float((on & y).sum())
        ax.plot(
            tp / y.sum(),
            tp / max(on.sum(), 1),
            "o",
            color=plots.WRONG,
            label=f"threshold {interp.thresholds[c]:.2f}",
        )
        ax.set_title(f"{name}  AP {fmt(_ap(interp, c))}", fontsize=9)
        ax.set_xlim(0, 1.02)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("recall", fontsize=8)
        ax.set_ylabel("precision", fontsize=8)
        ax.legend(loc="lower left", fontsize=7)
        ax.grid(True, alpha=0.3)
    fig.suptitle(plots.literal(title), fontsize=12)
    return fig


def _ap(interp: LabelInterpretation, c: int) -> float:
    from sklearn.metrics import average_precision_score

    return float(average_precision_score(interp.targets[:, c], interp.probs[:, c]))


def _caption(entry: dict) -> str:
    file = entry.get("file") or str(entry["index"])
    short = file if len(file) <= 24 else "…" + file[-23:]
    return (
        f"{short}\ntrue: {', '.join(entry['true']) or '-'}\n"
        f"pred: {', '.join(entry['predicted']) or '-'}"
    )


def _errors_grid(result: LabelEvalResult):
    entries = result.metrics["largest_errors"]
    if not entries:
        return None
    images = result.dataset.images[np.array([e["index"] for e in entries])]
    heading = f"Largest errors ({result.detail.split} split): most expected wrong labels first"
    return plots.image_grid(
        images, [_caption(e) for e in entries], [False] * len(entries), ncols=5, title=heading
    )


def gradcam_grid(result: LabelEvalResult, label: str):
    """Grad-CAM of ``label`` on the detail split's pictures most probable to carry it."""
    c = result.classes.index(label)
    interp = result.detail
    rows = np.argsort(-interp.probs[:, c], kind="stable")[:GRADCAM_PICTURES]
    images = result.dataset.images[interp.indices[rows]]
    maps = ensemble_gradcam(result.predictors, images, np.full(len(rows), c))
    overlays = [
        np.asarray(overlay(img, m, GRADCAM_CELL)) for img, m in zip(images, maps, strict=True)
    ]
    titles = [
        f"p({label}) {interp.probs[r, c]:.2f}\n{'has' if interp.targets[r, c] else 'lacks'} it"
        for r in rows
    ]
    correct = [bool(interp.decisions[r, c] == interp.targets[r, c]) for r in rows]
    return plots.image_grid(
        overlays, titles, correct, ncols=5, title=f"Grad-CAM of {label}: its most probable pictures"
    )


def _figures(result: LabelEvalResult, gradcam_label: str | None, notes: list[str]) -> dict:
    split = result.detail.split
    figures = {"pr_curves": pr_curves(result.detail, f"Precision-recall per label ({split})")}
    grid = _errors_grid(result)
    if grid is not None:
        figures["largest_errors"] = grid
    if gradcam_label is not None:
        try:
            figures["gradcam_label"] = gradcam_grid(result, gradcam_label)
        except Exception as exc:  # an explanation failing must not lose the report
            log.warning("Grad-CAM of %s failed: %s", gradcam_label, exc)
            notes.append(f"Grad-CAM of {gradcam_label} failed: {exc}")
    return figures


# ---------------------------------------------------------------- files
def _tables(m: dict) -> dict[str, str]:
    summary = [["split", "tta", "images", *SUMMARY_KEYS]]
    summary += [
        [r["split"], r["tta"], r["images"], *(r[k] for k in SUMMARY_KEYS)] for r in m["summary"]
    ]
    labels = [list(LABEL_KEYS)] + [[r[k] for k in LABEL_KEYS] for r in m["per_label"]]
    errors = [["file", "index", "true", "predicted", "error"]]
    errors += [
        [e["file"], e["index"], " ".join(e["true"]), " ".join(e["predicted"]), e["error"]]
        for e in m["largest_errors"]
    ]
    return {
        "summary.csv": csv_text(summary),
        "per_label.csv": csv_text(labels),
        "largest_errors.csv": csv_text(errors),
    }


def write_label_report(
    result: LabelEvalResult,
    out_dir: str | os.PathLike,
    *,
    gradcam_label: str | None = None,
) -> Report:
    """Every file of a multi-label evaluation into ``out_dir``."""
    if gradcam_label is not None and gradcam_label not in result.classes:
        raise UserInputError(
            f"--gradcam-label {gradcam_label!r} is not one of the model's labels: "
            f"{', '.join(result.classes)}"
        )
    out = Path(out_dir)
    notes = list(result.notes)
    figures = _figures(result, gradcam_label, notes)
    metrics, pngs = write_files(out, result.metrics, _tables(result.metrics), figures, notes,
                                result.seconds)  # fmt: skip
    html = (
        _label_environment()
        .get_template("multilabel.html")
        .render(
            m=metrics,
            images={k: base64.b64encode(v).decode("ascii") for k, v in pngs.items()},
            created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            seconds=result.seconds,
            gradcam_label=gradcam_label,
        )
    )
    write_text_atomic(out / "report.html", html)
    return Report(out / "report.html", metrics["files"], notes)


def _label_environment():
    env = _environment()
    env.filters["label_summary_row"] = lambda r: [
        r["split"],
        "yes" if r["tta"] else "no",
        r["images"],
        *(r[k] for k in SUMMARY_KEYS),
    ]
    env.filters["label_row"] = lambda r: [r[k] for k in LABEL_KEYS[:7]]
    env.filters["confusion_row"] = lambda r: [r["label"], r["tn"], r["fp"], r["fn"], r["tp"]]
    env.filters["error_row"] = lambda e: [
        e.get("file") or str(e["index"]),
        ", ".join(e["true"]) or "-",
        ", ".join(e["predicted"]) or "-",
        e["error"],
    ]
    return env


def console_label_report(result: LabelEvalResult, report: Report) -> str:
    """What ``imageclf evaluate`` prints for a multi-label model."""
    m = result.metrics
    names = ", ".join(printable(x["name"]) for x in m["models"])
    lines = [
        f"multi-label model: {names}",
        f"{'split':<7}{'TTA':<5}{'images':>8}{'mAP':>8}{'microF1':>9}{'macroF1':>9}"
        f"{'subset':>8}{'Hamming':>9}",
    ]
    for r in m["summary"]:
        cells = [r["map"], r["micro_f1"], r["macro_f1"], r["subset_accuracy"], r["hamming_loss"]]
        lines.append(
            f"{r['split']:<7}{'yes' if r['tta'] else 'no':<5}{r['images']:>8}"
            + "".join(f"{'-' if v is None else fmt(v):>9}" for v in cells)
        )
    lines += ["", f"per label ({m['detail_split']} split, at each label's threshold):"]
    width = max(5, *(len(r["label"]) for r in m["per_label"]))
    lines.append(f"{'label':>{width}} {'prec':>7} {'recall':>7} {'F1':>7} {'AP':>7} {'support':>8}")
    for r in m["per_label"]:
        ap = "-" if r["average_precision"] is None else fmt(r["average_precision"])
        lines.append(
            f"{printable(r['label']):>{width}} {fmt(r['precision']):>7} "
            f"{fmt(r['recall']):>7} {fmt(r['f1']):>7} {ap:>7} {r['support']:>8}"
        )
    lines += [f"note: {n}" for n in report.notes]
    lines += ["", f"report: {report.html}"]
    return "\n".join(lines)
