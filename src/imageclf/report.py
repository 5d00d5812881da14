"""Write an evaluation's files: metrics.json, CSV/text tables, PNG plots and one
self-contained report.html (images embedded as base64, no network needed).

Every number is printed with ``evaluate.fmt`` from the already-rounded values in
``result.metrics``, so the HTML, CSV, text and JSON always agree.
"""

from __future__ import annotations

import base64
import csv
import datetime as _dt
import html
import io
import json
import logging
import os
from pathlib import Path

import numpy as np

from . import plots
from .evaluation import EvalResult, ensemble_gradcam, fmt, report_text, summary_table
from .fileio import write_text_atomic

log = logging.getLogger("imageclf.report")

GRADCAM_CELL = 128  # pixels per Grad-CAM grid picture: big enough to see the map's shape


def _csv(rows: list[list]) -> str:
    buffer = io.StringIO()
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    return buffer.getvalue()


def _num(value) -> str:
    """A table cell: ints as ints, rounded floats through ``fmt``."""
    if isinstance(value, bool) or value is None:
        return "" if value is None else str(value).lower()
    if isinstance(value, (int, np.integer)):
        return str(int(value))
    return fmt(value)


# ---------------------------------------------------------------- grids
def _grid_captions(entries: list[dict], with_loss: bool) -> tuple[list[str], list[bool]]:
    titles = [
        f"true: {e['true']}\npred: {e['predicted']} ({e['confidence']:.2f})"
        + (f"\nloss {e['loss']:.2f}" if with_loss else "")
        for e in entries
    ]
    return titles, [e["correct"] for e in entries]


def _grid_figures(result: EvalResult, key: str, heading: str, gradcam: bool) -> dict:
    """The picture grid for ``metrics[key]`` and, if asked, its Grad-CAM twin."""
    entries = result.metrics[key]
    if not entries:
        return {}
    indices = np.array([e["index"] for e in entries])
    images = result.dataset.images[indices]
    titles, correct = _grid_captions(entries, with_loss=key == "top_losses")
    ncols = 5
    figures = {key: plots.image_grid(images, titles, correct, ncols=ncols, title=heading)}
    if gradcam:
        predicted = np.array([result.classes.index(e["predicted"]) for e in entries])
        try:
            from .gradcam import overlay

            maps = ensemble_gradcam(result.predictors, images, predicted)
            overlays = [
                np.asarray(overlay(img, heat, GRADCAM_CELL))
                for img, heat in zip(images, maps, strict=True)
            ]
            figures[f"{key}_gradcam"] = plots.image_grid(
                overlays,
                titles,
                correct,
                ncols=ncols,
                title=f"{heading} — Grad-CAM of the predicted class",
            )
        except Exception as exc:  # an explanation failing must not lose the report
            log.warning("Grad-CAM for %s failed: %s", key, exc)
            result.notes.append(f"Grad-CAM for {key} failed: {exc}")
    return figures


# ---------------------------------------------------------------- write everything
def write_report(result: EvalResult, out_dir: str | os.PathLike, *, gradcam: bool = True) -> Path:
    """Write every file into ``out_dir``; returns the path of report.html."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    m = result.metrics
    classes = result.classes
    detail = m["detail_split"]

    # ---- tables
    rows = [["split", "tta", "images", "accuracy", "loss", "ece"]]
    rows += [
        [
            r["split"],
            _num(r["tta"]),
            r["images"],
            _num(r["accuracy"]),
            _num(r["loss"]),
            _num(r["ece"]),
        ]
        for r in m["summary"]
    ]
    write_text_atomic(out / "summary.csv", _csv(rows))
    report = m["classification_report"]
    rows = [["class", "precision", "recall", "f1", "support"]]
    rows += [
        [r["class"], _num(r["precision"]), _num(r["recall"]), _num(r["f1"]), r["support"]]
        for r in report["rows"]
    ]
    write_text_atomic(out / "classification_report.csv", _csv(rows))
    write_text_atomic(out / "classification_report.json", json.dumps(report, indent=2))
    write_text_atomic(out / "classification_report.txt", report_text(m) + "\n")
    cm = m["confusion_matrix"]
    for name, key in (
        ("confusion_matrix.csv", "counts"),
        ("confusion_matrix_normalized.csv", "row_normalized"),
    ):
        table = [["true \\ predicted", *classes]]
        table += [[c, *(_num(v) for v in row)] for c, row in zip(classes, cm[key], strict=True)]
        write_text_atomic(out / name, _csv(table))
    rows = [["true", "predicted", "count", "share_of_true"]]
    rows += [
        [r["true"], r["predicted"], r["count"], _num(r["share_of_true"])]
        for r in m["most_confused"]
    ]
    write_text_atomic(out / "most_confused.csv", _csv(rows))

    # ---- figures
    figures = {
        "confusion_matrix": plots.confusion_heatmap(
            np.array(cm["counts"]),
            classes,
            normalized=False,
            title=f"Confusion matrix ({detail} split, counts)",
        ),
        "confusion_matrix_normalized": plots.confusion_heatmap(
            np.array(cm["row_normalized"]),
            classes,
            normalized=True,
            title=f"Confusion matrix ({detail} split, share of each true class)",
        ),
        "reliability": plots.reliability_diagram(
            m["calibration"]["bins"],
            m["calibration"]["ece"],
            title=f"Reliability diagram ({detail} split)",
        ),
    }
    figures |= _grid_figures(result, "samples", f"Random {detail} images", gradcam)
    figures |= _grid_figures(
        result, "top_losses", f"Top losses: wrong {detail} images, highest loss first", gradcam
    )
    multiple = len(result.histories) > 1
    smoothing = {
        path: float((p.metadata.get("config") or {}).get("label_smoothing") or 0.0)
        for path, p in zip(result.model_paths, result.predictors, strict=True)
    }
    for k, (path, history) in enumerate(result.histories.items(), start=1):
        title = f"Training curves: {Path(path).parent.name or path}"
        figures[f"curves-{k}" if multiple else "curves"] = plots.training_curves(
            history, title, smoothing.get(path, 0.0)
        )
    pngs: dict[str, bytes] = {}
    for name, fig in figures.items():
        pngs[name] = plots.to_png_bytes(fig)
        (out / f"{name}.png").write_bytes(pngs[name])

    m["files"] = sorted(
        [p.name for p in out.iterdir() if p.is_file() and p.suffix in (".csv", ".png", ".txt")]
        + ["classification_report.json", "metrics.json", "report.html"]
    )
    m["files"] = sorted(set(m["files"]))
    m["seconds"] = round(result.seconds, 2)
    write_text_atomic(out / "metrics.json", json.dumps(m, indent=2))
    write_text_atomic(out / "report.html", render_html(result, pngs))
    return out / "report.html"


# ---------------------------------------------------------------- HTML
CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;margin:0;color:#1f2328;
background:#f6f8fa;line-height:1.45}
main{max-width:1100px;margin:0 auto;padding:24px 32px 64px;background:#fff;min-height:100vh}
h1{font-size:1.7em;margin:.2em 0 .1em}h2{border-bottom:1px solid #d0d7de;padding-bottom:.25em;
margin-top:2em}
.meta{color:#57606a;font-size:.92em}.meta td{padding:1px 12px 1px 0;vertical-align:top}
table.num{border-collapse:collapse;margin:.6em 0;font-size:.93em}
table.num th,table.num td{border:1px solid #d0d7de;padding:4px 10px}
table.num th{background:#f6f8fa;text-align:left}
table.num td.n{text-align:right;font-variant-numeric:tabular-nums}
table.num tr.avg td{background:#fbfbfc;font-style:italic}
.note{background:#fff8c5;border:1px solid #d4a72c66;padding:8px 12px;border-radius:6px;margin:6px 0}
img{max-width:100%;height:auto;border:1px solid #d0d7de;border-radius:4px}
.pair figure{margin:0 0 18px}
figcaption{color:#57606a;font-size:.9em;margin-top:4px}
nav a{margin-right:14px}details{margin:.6em 0}summary{cursor:pointer;color:#0969da}
.hint{color:#57606a;font-size:.92em}figure.narrow{max-width:560px;margin:0}
"""


def _table(header: list[str], rows: list[list], avg_rows: int = 0) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = []
    for k, row in enumerate(rows):
        cls = ' class="avg"' if k >= len(rows) - avg_rows else ""
        cells = []
        for cell in row:
            if isinstance(cell, str):
                cells.append(f"<td>{html.escape(cell)}</td>")
            else:
                cells.append(f'<td class="n">{_num(cell)}</td>')
        body.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return (
        f'<table class="num"><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'
    )


def _img(pngs: dict[str, bytes], name: str, alt: str) -> str:
    if name not in pngs:
        return ""
    data = base64.b64encode(pngs[name]).decode("ascii")
    return f'<img src="data:image/png;base64,{data}" alt="{html.escape(alt)}">'


def render_html(result: EvalResult, pngs: dict[str, bytes]) -> str:
    """One self-contained page with every table and figure."""
    m = result.metrics
    detail = m["detail_split"]
    esc = html.escape
    split = m["split"]
    models = "<br>".join(
        f"{esc(x['path'])} — {esc(x['name'])} ({esc(x['architecture'])})" for x in m["models"]
    )
    sizes = ", ".join(f"{k} {v}" for k, v in split["sizes"].items())
    meta_rows = [
        ("model" + ("s (ensemble: probabilities averaged)" if m["ensemble"] else ""), models),
        (
            "data",
            f"{esc(m['data']['source'])} ({m['data']['images']} images, "
            f"fingerprint {esc(m['data']['fingerprint'])})",
        ),
        (
            "split",
            f"{esc(split['name'])}, seed {split['seed']}: {esc(sizes)} "
            f"(digest {esc(split['digest'])}; {esc(split['origin'])})",
        ),
        ("classes", esc(", ".join(m["classes"]))),
        ("created", _dt.datetime.now().strftime("%Y-%m-%d %H:%M") + f" in {result.seconds:.1f}s"),
    ]
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        "<meta name='viewport' content='width=device-width,initial-scale=1'>",
        f"<title>imageclf evaluation — {esc(m['models'][0]['name'])}</title><style>{CSS}</style>",
        "</head><body><main>",
        "<h1>Evaluation report</h1>",
        "<table class='meta'>"
        + "".join(f"<tr><td>{k}</td><td>{v}</td></tr>" for k, v in meta_rows)
        + "</table>",
        "<nav><a href='#summary'>Summary</a><a href='#classes'>Per class</a>"
        "<a href='#confusion'>Confusion</a><a href='#calibration'>Calibration</a>"
        "<a href='#curves'>Curves</a><a href='#samples'>Samples</a>"
        "<a href='#toplosses'>Top losses</a></nav>",
    ]
    parts += [f"<div class='note'>{esc(n)}</div>" for n in result.notes]

    # summary
    rows = [
        [r["split"], "yes" if r["tta"] else "no", r["images"], r["accuracy"], r["loss"], r["ece"]]
        for r in m["summary"]
    ]
    parts += [
        "<h2 id='summary'>Summary</h2>",
        _table(["split", "TTA", "images", "accuracy", "mean loss", "ECE"], rows),
        "<p class='hint'>Loss is the mean cross-entropy; TTA averages predictions over "
        "flipped and 1-pixel-shifted copies. ECE: expected calibration error "
        f"({len(m['calibration']['bins'])} bins). The sections below describe the "
        f"<b>{esc(detail)}</b> split without TTA.</p>",
    ]
    # per-class
    report = m["classification_report"]
    rows = [
        [r["class"], r["precision"], r["recall"], r["f1"], r["support"]] for r in report["rows"]
    ]
    parts += [
        f"<h2 id='classes'>Per-class metrics ({esc(detail)} split)</h2>",
        f"<p>Accuracy {fmt(report['accuracy'])}.</p>",
        _table(["class", "precision", "recall", "F1", "support"], rows, avg_rows=2),
    ]
    # confusion
    cm = m["confusion_matrix"]
    count_rows = [[c, *row] for c, row in zip(m["classes"], cm["counts"], strict=True)]
    confused = [
        [r["true"], r["predicted"], r["count"], r["share_of_true"]] for r in m["most_confused"]
    ]
    parts += [
        f"<h2 id='confusion'>Confusion matrix ({esc(detail)} split)</h2>",
        "<div class='pair'><figure>",
        _img(pngs, "confusion_matrix", "confusion matrix, counts"),
        "</figure><figure>",
        _img(pngs, "confusion_matrix_normalized", "confusion matrix, row-normalised"),
        "</figure></div>",
        "<details><summary>Counts as a table</summary>",
        _table(["true \\ predicted", *m["classes"]], count_rows),
        "</details>",
        "<h3>Most confused pairs</h3>",
        _table(["true", "predicted as", "images", "share of true class"], confused)
        if confused
        else "<p>No mistakes.</p>",
    ]
    # calibration
    parts += [
        "<h2 id='calibration'>Calibration</h2>",
        f"<p>Expected calibration error (ECE): <b>{fmt(m['calibration']['ece'])}</b>. "
        "A bar that ends below its black dot (the bin's mean confidence) means the model "
        "claims more than it achieves there (over-confident); above it, under-confident.</p>",
        "<figure class='narrow'>",
        _img(pngs, "reliability", "reliability diagram"),
        "</figure>",
    ]
    # curves
    curve_names = [n for n in pngs if n.startswith("curves")]
    parts.append("<h2 id='curves'>Training curves</h2>")
    if curve_names:
        parts += [_img(pngs, n, "training curves") for n in curve_names]
    else:
        parts.append("<p>No history.json beside the model file, so no training curves.</p>")
    # grids
    for anchor, key, heading, text in (
        (
            "samples",
            "samples",
            "Sample predictions",
            f"{len(m['samples'])} random {esc(detail)} images (the same draw every time). "
            "Green: correct; red frame: wrong.",
        ),
        (
            "toplosses",
            "top_losses",
            "Top losses",
            f"The {len(m['top_losses'])} {esc(detail)} images the model got wrong with the "
            "highest loss (the lowest probability on the true class) first.",
        ),
    ):
        parts += [f"<h2 id='{anchor}'>{heading}</h2>", f"<p>{text}</p>"]
        if not m[key]:
            parts.append("<p>None.</p>")
            continue
        parts.append("<div class='pair'>")
        parts.append(f"<figure>{_img(pngs, key, heading)}</figure>")
        if f"{key}_gradcam" in pngs:
            parts.append(
                f"<figure>{_img(pngs, f'{key}_gradcam', heading + ' Grad-CAM')}<figcaption>"
                "Grad-CAM: warm colours mark the regions that raised the predicted class's "
                "score.</figcaption></figure>"
            )
        parts.append("</div>")
        rows = [
            [str(e["index"]), e["true"], e["predicted"], e["confidence"], e["loss"]] for e in m[key]
        ]
        parts += [
            "<details><summary>As a table</summary>",
            _table(["dataset index", "true", "predicted", "confidence", "loss"], rows),
            "</details>",
        ]
    files = ", ".join(esc(f) for f in m.get("files", []))
    parts += [
        "<h2>Files</h2>",
        f"<p class='hint'>Beside this page: {files}. Every number here is in metrics.json.</p>",
        "</main></body></html>",
    ]
    return "\n".join(parts)


def console_report(result: EvalResult, report_path: Path) -> str:
    """What ``imageclf evaluate`` prints: the summary, the per-class table, where files went."""
    m = result.metrics
    lines = [
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
    lines += ["", f"ECE ({m['detail_split']}): {fmt(m['calibration']['ece'])}"]
    lines += [f"note: {n}" for n in result.notes]
    lines += ["", f"report: {report_path}"]
    return "\n".join(lines)
