"""CSV formula injection: class names and file names that a spreadsheet would run as a
formula (``=HYPERLINK(...)``, ``+``, ``-``, ``@``, a leading tab or CR) are written as
text in ``evaluate``'s CSVs and ``predict --format csv`` (OWASP: a leading single quote),
while numbers, negative ones included, stay numbers."""

from __future__ import annotations

import csv
import io

import pytest
from helpers import make_tiny_bundle, png_bytes, run_cli, write_image_folder

from imageclf.fileio import csv_cell, csv_text

FORMULAS = ['=HYPERLINK("evil.example","x")', "+SUM(1+1)", "-2+3", "@cmd"]


@pytest.mark.parametrize(
    ("cell", "written"),
    [
        ("=1+1", "'=1+1"),
        ("+cmd", "'+cmd"),
        ("-cmd", "'-cmd"),
        ("@SUM(A1)", "'@SUM(A1)"),
        ("\tx", "'\tx"),
        ("\rx", "'\rx"),
        ("-", "'-"),
        ("-0.5", "-0.5"),  # plain numbers stay numbers
        ("+3", "+3"),
        ("-1.5e-3", "-1.5e-3"),
        ("cat", "cat"),
        ("", ""),
        (-0.5, -0.5),
        (3, 3),
    ],
)
def test_cells_that_would_be_formulas_are_text(cell, written):
    assert csv_cell(cell) == written


def test_csv_text_escapes_every_cell_and_round_trips():
    rows = [["name", "value"], ["=1+1", -0.25], ["ok", "-0.5"]]
    text = csv_text(rows)
    assert list(csv.reader(io.StringIO(text))) == [
        ["name", "value"],
        ["'=1+1", "-0.25"],
        ["ok", "-0.5"],
    ]


def _rows(text: str) -> list[list[str]]:
    return list(csv.reader(io.StringIO(text)))


def _no_formula(cell: str) -> bool:
    return not cell.startswith(("=", "+", "@", "\t", "\r")) and not (
        cell.startswith("-") and not _is_number(cell)
    )


def _is_number(cell: str) -> bool:
    try:
        float(cell)
    except ValueError:
        return False
    return True


def test_predict_csv_writes_hostile_paths_and_labels_as_text(tmp_path, capsys, monkeypatch):
    bundle = make_tiny_bundle(tmp_path / "m.safetensors", classes=[*FORMULAS, "-0.5"])
    folder = tmp_path / "pictures"
    folder.mkdir()
    names = [f"{start}name.png" for start in ("=", "+", "-", "@", "\t", "\r")]
    for name in names:
        (folder / name).write_bytes(png_bytes())
    monkeypatch.chdir(folder)  # relative paths: the path cell starts with the name
    argv = ["-q", "predict", "--format", "csv", "--top-k", "5", "--", str(bundle), *names]
    code, out, err = run_cli(argv, capsys)
    assert code == 0, err
    rows = _rows(out)
    assert rows[0] == ["path", "rank", "label", "probability", "unsure", "outside", "error"]
    assert {r[0] for r in rows[1:]} == {"'" + n for n in names}
    labels = {r[2] for r in rows[1:]}
    assert labels == {"'" + f for f in FORMULAS} | {"-0.5"}  # the number stays a number
    assert all(_no_formula(cell) for row in rows for cell in row)
    assert all(_is_number(r[3]) for r in rows[1:])


def test_evaluate_csvs_write_hostile_class_names_as_text(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "m.safetensors", classes=FORMULAS)
    data = write_image_folder(tmp_path / "ds", classes=FORMULAS, per_class=2)
    out = tmp_path / "report"
    argv = ["-q", "evaluate", str(bundle), "--data", str(data), "--splits", "test",
            "--no-tta", "--no-gradcam", "--out", str(out)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    for name in ("classification_report.csv", "confusion_matrix.csv", "most_confused.csv",
                 "confusion_matrix_normalized.csv", "summary.csv"):  # fmt: skip
        rows = _rows((out / name).read_text())
        assert all(_no_formula(cell) for row in rows for cell in row), (name, rows)
    report = _rows((out / "classification_report.csv").read_text())
    assert {r[0] for r in report[1:]} >= {"'" + f for f in FORMULAS}
    assert all(_is_number(cell) for r in report[1:] for cell in r[1:])
    matrix = _rows((out / "confusion_matrix.csv").read_text())
    assert matrix[0][1:] == ["'" + f for f in FORMULAS]
