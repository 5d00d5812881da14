"""Write an evaluation's files: metrics.json, CSV/text tables, PNG plots and one
self-contained report.html (rendered from ``templates/report.html``, pictures
embedded as base64, no network needed); and the console summary.

Every number is printed with ``metrics.fmt`` from the already-rounded values in
``result.metrics``, so the HTML, CSV, text and JSON always agree.
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .. import plots
from ..fileio import csv_text, printable, write_text_atomic
from ..prediction.gradcam import ensemble_gradcam, overlay
from .evaluator import EvalResult
from .report_metrics import fmt

log = logging.getLogger("imageclf.report")

GRADCAM_CELL = 128  # pixels per Grad-CAM grid picture: big enough to see the map's shape


@dataclass
class Report:
    """What ``write_report`` wrote: the page, every file name beside it, and the notes
    (the evaluation's plus any about views that could not be drawn)."""

    html: Path
    files: list[str]
    notes: list[str]


def _num(value) -> str:
    """A table cell: ints as ints, rounded floats through ``fmt``."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return fmt(value)


# ---------------------------------------------------------------- text
def model_title(metrics: dict) -> str:
    """Which model this is, by its name (``train --name``), as the page's title says it."""
    models = metrics["models"]
    names = ", ".join(f"{printable(x['name'])} ({printable(x['path'])})" for x in models)
    return f"{'ensemble' if len(models) > 1 else 'model'}: {names}"


def kept_lines(metrics: dict) -> list[str]:
    """Each model's kept epoch and its own run's figures, in the words ``train`` printed."""
    lines = []
    for model in metrics["models"]:
        t = model.get("training") or {}
        if t.get("kept_epoch") is None:
            continue
        scores = [
            f"{split} {t[split]['accuracy']:.4f}"
            for split in ("val", "test")
            if (t.get(split) or {}).get("accuracy") is not None
        ]
        lines.append(
            f"  kept epoch {t['kept_epoch']} of {t['epochs_run']} ({t['kept_rule']}); "
            f"its run scored {', '.join(scores) or 'nothing'} (no TTA, {t['precision']})"
        )
    return lines


def summary_table(metrics: dict) -> str:
    """The console summary: one line per split and TTA setting."""
    lines = [f"{'split':<7}{'TTA':<5}{'images':>8}{'accuracy':>10}{'loss':>9}{'ECE':>9}"]
    for row in metrics["summary"]:
        lines.append(
            f"{row['split']:<7}{'yes' if row['tta'] else 'no':<5}{row['images']:>8}"
            f"{fmt(row['accuracy']):>10}{fmt(row['loss']):>9}{fmt(row['ece']):>9}"
        )
    return "\n".join(lines)


def report_text(metrics: dict) -> str:
    """sklearn's classification-report layout, printed from the rounded numbers."""
    rows = metrics["classification_report"]["rows"]
    width = max(12, *(len(r["class"]) for r in rows))

    def line(r: dict) -> str:
        return (
            f"{r['class']:>{width}} {fmt(r['precision']):>9} {fmt(r['recall']):>9} "
            f"{fmt(r['f1']):>9} {r['support']:>9}"
        )

    per_class, averages = rows[:-2], rows[-2:]
    total = sum(r["support"] for r in per_class)
    accuracy = metrics["classification_report"]["accuracy"]
    lines = [f"{'':>{width}} {'precision':>9} {'recall':>9} {'f1-score':>9} {'support':>9}", ""]
    lines += [line(r) for r in per_class]
    lines += ["", f"{'accuracy':>{width}} {'':>9} {'':>9} {fmt(accuracy):>9} {total:>9}"]
    lines += [line(r) for r in averages]
    return "\n".join(lines)


def console_report(result: EvalResult, report: Report) -> str:
    """What ``imageclf evaluate`` prints: the summary, the per-class table, where files went."""
    m = result.metrics
    lines = [
        model_title(m),
        *kept_lines(m),
        summary_table(m),
        "",
        f"per-class metrics ({m['detail_split']} split, no TTA):",
        report_text(m),
    ]
    if m["most_confused"]:
        lines += ["", "most confused (true -> predicted: images):"]
        lines += [
            f"  {r['true']} -> {r['predicted']}: {r['count']}" for r in m["most_confused"][:5]
        ]
    cal = m["calibration"]
    lines += ["", f"ECE ({m['detail_split']}): {fmt(cal['ece'])}, NLL {fmt(cal['nll'])}"]
    if cal.get("before"):
        lines[-1] += (
            f" (temperature {fmt(cal['temperature'])}; before scaling: "
            f"ECE {fmt(cal['before']['ece'])}, NLL {fmt(cal['before']['nll'])})"
        )
    lines += outside_lines(m.get("out_of_class"))
    lines += [f"note: {n}" for n in report.notes]
    lines += ["", f"report: {report.html}"]
    return "\n".join(lines)


def outside_lines(found: dict | None) -> list[str]:
    """``--others``: how the "one of its classes?" rule did on pictures of other things."""
    if not found:
        return []
    head = (
        f"out of class ({found['folder']}: {found['outside_images']} pictures against "
        f"{found['inside_images']} {found['split']} pictures): AUROC {fmt(found['auroc'])}"
    )
    if found.get("outside_flagged") is None:
        return ["", head, f"  {found['note']}"]
    share = found["right_flagged"]
    right = "" if share is None else f" ({share:.1%} of its right answers)"
    lines = [
        "",
        head,
        f"  at the model's threshold: {found['outside_flagged']:.1%} of them said to be none "
        f"of its classes; {found['inside_flagged']:.1%} of the {found['split']} pictures "
        "too" + right,
    ]
    return lines + ([f"  {found['note']}"] if found.get("note") else [])


# ---------------------------------------------------------------- tables
def _csv(rows: list[list]) -> str:
    """Class names come from folders and bundles: cells a spreadsheet would run as a
    formula are quoted as text (``fileio.csv_text``)."""
    return csv_text(rows)


def _tables(m: dict) -> dict[str, str]:
    """File name -> contents of every CSV, text and JSON table."""
    classes = m["classes"]
    summary = [["split", "tta", "images", "accuracy", "loss", "ece"]]
    summary += [
        [
            r["split"],
            _num(r["tta"]),
            r["images"],
            *(_num(r[k]) for k in ("accuracy", "loss", "ece")),
        ]
        for r in m["summary"]
    ]
    report = m["classification_report"]
    per_class = [["class", "precision", "recall", "f1", "support"]]
    per_class += [
        [r["class"], _num(r["precision"]), _num(r["recall"]), _num(r["f1"]), r["support"]]
        for r in report["rows"]
    ]
    confused = [["true", "predicted", "count", "share_of_true"]]
    confused += [
        [r["true"], r["predicted"], r["count"], _num(r["share_of_true"])]
        for r in m["most_confused"]
    ]
    files = {
        "summary.csv": _csv(summary),
        "classification_report.csv": _csv(per_class),
        "classification_report.json": json.dumps(report, indent=2),
        "classification_report.txt": report_text(m) + "\n",
        "most_confused.csv": _csv(confused),
    }
    cm = m["confusion_matrix"]
    for name, key in (
        ("confusion_matrix.csv", "counts"),
        ("confusion_matrix_normalized.csv", "row_normalized"),
    ):
        table = [["true \\ predicted", *classes]]
        table += [[c, *(_num(v) for v in row)] for c, row in zip(classes, cm[key], strict=True)]
        files[name] = _csv(table)
    return files


# ---------------------------------------------------------------- figures
def _short(name: str, limit: int = 24) -> str:
    """A grid caption's file name: the end of the path, which tells files apart."""
    return name if len(name) <= limit else "…" + name[-(limit - 1) :]


def _grid_figures(result: EvalResult, key: str, heading: str, gradcam: bool, notes: list[str]):
    """The picture grid for ``metrics[key]`` and, if asked, its Grad-CAM twin."""
    entries = result.metrics[key]
    if not entries:
        return {}
    indices = np.array([e["index"] for e in entries])
    images = result.dataset.images[indices]
    titles = [
        (f"{_short(e['file'])}\n" if e.get("file") else "")
        + f"true: {e['true']}\npred: {e['predicted']} ({e['confidence']:.2f})"
        + (f"\nloss {e['loss']:.2f}" if key == "top_losses" else "")
        for e in entries
    ]
    correct = [e["correct"] for e in entries]
    figures = {key: plots.image_grid(images, titles, correct, ncols=5, title=heading)}
    if gradcam:
        predicted = np.array([result.classes.index(e["predicted"]) for e in entries])
        try:
            maps = ensemble_gradcam(result.predictors, images, predicted)
            overlays = [
                np.asarray(overlay(img, heat, GRADCAM_CELL))
                for img, heat in zip(images, maps, strict=True)
            ]
            figures[f"{key}_gradcam"] = plots.image_grid(
                overlays, titles, correct, ncols=5,
                title=f"{heading} — Grad-CAM of the predicted class",
            )  # fmt: skip
        except Exception as exc:  # an explanation failing must not lose the report
            log.warning("Grad-CAM for %s failed: %s", key, exc)
            notes.append(f"Grad-CAM for {key} failed: {exc}")
    return figures


def _figures(result: EvalResult, gradcam: bool, notes: list[str]) -> dict:
    m = result.metrics
    detail, cm = m["detail_split"], m["confusion_matrix"]
    figures = {
        "confusion_matrix": plots.confusion_heatmap(
            np.array(cm["counts"]), result.classes, normalized=False,
            title=f"Confusion matrix ({detail} split, counts)",
        ),
        "confusion_matrix_normalized": plots.confusion_heatmap(
            np.array(cm["row_normalized"]), result.classes, normalized=True,
            title=f"Confusion matrix ({detail} split, share of each true class)",
        ),
        "reliability": plots.reliability_diagram(
            m["calibration"]["bins"], m["calibration"]["ece"],
            title=f"Reliability diagram ({detail} split)",
            before=m["calibration"].get("before"),
        ),
    }  # fmt: skip
    figures |= _grid_figures(result, "samples", f"Random {detail} images", gradcam, notes)
    heading = f"Top losses: wrong {detail} images, highest loss first"
    figures |= _grid_figures(result, "top_losses", heading, gradcam, notes)
    multiple = len(result.histories) > 1
    smoothing = {
        path: float(p.metadata.config.get("label_smoothing") or 0.0)
        for path, p in zip(result.model_paths, result.predictors, strict=True)
    }
    trained = {model["path"]: model.get("training") or {} for model in m["models"]}
    for k, (path, history) in enumerate(result.histories.items(), start=1):
        title = f"Training curves: {Path(path).parent.name or path}"
        t = trained.get(str(path), {})
        kept = None if t.get("kept_epoch") is None else {"epoch": t["kept_epoch"],
                                                         "rule": t["kept_rule"]}  # fmt: skip
        figures[f"curves-{k}" if multiple else "curves"] = plots.training_curves(
            history, title, smoothing.get(path, 0.0), kept
        )
    return figures


# ---------------------------------------------------------------- write everything
def write_report(result: EvalResult, out_dir: str | os.PathLike, *, gradcam: bool = True) -> Report:
    """Write every file into ``out_dir``; ``result`` is left as it was."""
    out = Path(out_dir)
    notes = list(result.notes)
    figures = _figures(result, gradcam, notes)  # adds a note for what it could not draw
    metrics, pngs = write_files(out, result.metrics, _tables(result.metrics), figures, notes,
                                result.seconds)  # fmt: skip
    write_text_atomic(out / "report.html", render_html(metrics, pngs, result.seconds))
    return Report(out / "report.html", metrics["files"], notes)


def write_files(
    out: Path, metrics: dict, tables: dict[str, str], figures: dict, notes: list[str],
    seconds: float,
) -> tuple[dict, dict[str, bytes]]:  # fmt: skip
    """A report's tables, PNGs and metrics.json (the single- and multi-label reports
    alike); returns metrics.json's content and the PNGs, which the page inlines."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name, text in tables.items():
        write_text_atomic(out / name, text)
        written.append(name)
    pngs: dict[str, bytes] = {}
    for name, fig in figures.items():
        pngs[name] = plots.to_png_bytes(fig)
        (out / f"{name}.png").write_bytes(pngs[name])
        written.append(f"{name}.png")
    files = sorted({*written, "metrics.json", "report.html"})
    metrics = {**metrics, "notes": notes, "files": files, "seconds": round(seconds, 2)}
    write_text_atomic(out / "metrics.json", json.dumps(metrics, indent=2))
    return metrics, pngs


# ---------------------------------------------------------------- HTML
def _environment():
    from jinja2 import Environment, PackageLoader, select_autoescape

    env = Environment(
        loader=PackageLoader("imageclf.evaluation", "templates"),
        autoescape=select_autoescape(["html"]),
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["num"] = _num
    env.filters["values"] = lambda row: list(row.values())
    env.filters["summary_row"] = lambda r: [
        r["split"], "yes" if r["tta"] else "no", r["images"], r["accuracy"], r["loss"], r["ece"]
    ]  # fmt: skip
    env.filters["image_row"] = lambda e: [
        e.get("file") or str(e["index"]), e["true"], e["predicted"], e["confidence"], e["loss"]
    ]  # fmt: skip
    return env


def render_html(metrics: dict, pngs: dict[str, bytes], seconds: float) -> str:
    """One self-contained page with every table and figure (``templates/report.html``)."""
    counts = metrics["confusion_matrix"]["counts"]
    return (
        _environment()
        .get_template("report.html")
        .render(
            m=metrics,
            images={name: base64.b64encode(data).decode("ascii") for name, data in pngs.items()},
            curves=[name for name in pngs if name.startswith("curves")],
            count_rows=[[c, *row] for c, row in zip(metrics["classes"], counts, strict=True)],
            created=_dt.datetime.now().strftime("%Y-%m-%d %H:%M"),
            seconds=seconds,
        )
    )
