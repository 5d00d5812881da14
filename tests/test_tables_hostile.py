"""Hostile labels tables (``data.tables``), in the manner of ``test_data_hostile``: a
table that is a FIFO, a device link or far too big; NUL bytes and endless fields;
names that carry terminal escapes; rows naming a FIFO or /dev/zero as a picture. Each
is one clear line (exit 2) or a skipped-and-named file, never a hang or a traceback."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest
from helpers import one_line_error, png_bytes, run_cli

from imageclf.data import load_dataset, tables

ESC = "\x1b"


def _pictures(root: Path, n: int = 6) -> list[str]:
    (root / "img").mkdir(parents=True, exist_ok=True)
    for i in range(n):
        (root / f"img/{i}.png").write_bytes(png_bytes((40 * i % 256, 10, 10), size=(10, 10)))
    return [f"img/{i}.png,{'ab'[i % 2]}" for i in range(n)]


def _inspect(path: Path, capsys) -> tuple[int, str, str]:
    return run_cli(["-q", "data", "inspect", str(path), "--no-duplicates"], capsys)


def test_a_fifo_table_is_refused_without_blocking(tmp_path, capsys):
    os.mkfifo(tmp_path / "labels.csv")
    timer = threading.Timer(20, lambda: open(tmp_path / "labels.csv", "wb").close())
    timer.start()  # a hung read would end here rather than hang the suite
    try:
        code, _, err = _inspect(tmp_path / "labels.csv", capsys)
    finally:
        timer.cancel()
    one_line_error(code, err, "labels.csv", "named pipe (FIFO)")


def test_a_table_over_the_cap_is_refused_by_its_size(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(tables, "MAX_TABLE_BYTES", 1024 * 1024)
    with open(tmp_path / "big.csv", "wb") as handle:
        handle.truncate(30 * 1024**3)  # sparse: nothing is written, nothing may be read
    code, _, err = _inspect(tmp_path / "big.csv", capsys)
    one_line_error(code, err, "big.csv", "30,720 MB", "at most 1 MB")


def test_nul_bytes_and_endless_fields_name_the_row(tmp_path, capsys):
    rows = _pictures(tmp_path)
    text = "file,label\n" + "\n".join(rows) + "\n"
    (tmp_path / "nul.csv").write_bytes(text.replace("img/2.png", "img/2\0.png").encode())
    code, _, err = _inspect(tmp_path / "nul.csv", capsys)
    one_line_error(code, err, "nul.csv row 4: the file name img/2\\x00.png holds control")
    endless = text + '"' + "x" * 200_000 + '",a\n'
    (tmp_path / "long.csv").write_text(endless)
    code, _, err = _inspect(tmp_path / "long.csv", capsys)
    one_line_error(code, err, "long.csv row 8: not a readable CSV row", "field larger")


@pytest.mark.parametrize("where", ["file", "label", "split"])
def test_terminal_escapes_are_printed_escaped(tmp_path, capsys, where):
    rows = _pictures(tmp_path)
    bad = f"{ESC}]0;pwned{ESC}\\"
    cells = {"file": f"img/{bad}.png,a,train", "label": f"img/0.png,{bad},train",
             "split": f"img/0.png,a,{bad}"}  # fmt: skip
    lines = ["file,label,split", *[r + ",train" for r in rows[1:]], cells[where]]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    code, out, err = _inspect(tmp_path / "t.csv", capsys)
    line = one_line_error(code, err, "t.csv")
    assert "\\x1b" in line and ESC not in out


def test_rows_naming_fifos_and_huge_files_are_skipped_and_named(tmp_path, capsys):
    rows = _pictures(tmp_path, 8)
    os.mkfifo(tmp_path / "img" / "pipe.png")
    with open(tmp_path / "img" / "huge.png", "wb") as handle:
        handle.truncate(30 * 1024**3)
    (tmp_path / "labels.csv").write_text(
        "file,label\n" + "\n".join([*rows, "img/pipe.png,a", "img/huge.png,b"]) + "\n"
    )
    code, out, err = _inspect(tmp_path, capsys)
    assert code == 0, err
    assert "unreadable images (skipped in training): 2" in out
    assert "img/pipe.png" in out and "img/huge.png" in out
    ds = load_dataset(tmp_path, progress=False, use_cache=False)
    assert len(ds) == 8 and len(ds.skipped) == 2


def test_a_row_naming_a_device_through_a_link_is_refused(tmp_path, capsys):
    rows = _pictures(tmp_path)
    (tmp_path / "img" / "zero.png").symlink_to("/dev/zero")
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join([*rows, "img/zero.png,a"]))
    code, _, err = _inspect(tmp_path, capsys)
    one_line_error(code, err, "row 8: img/zero.png leads out of the table's folder")


def test_a_class_name_no_model_can_store_is_refused(tmp_path, capsys):
    rows = _pictures(tmp_path)
    rows[0] = "img/0.png," + "x" * 300
    (tmp_path / "labels.csv").write_text("file,label\n" + "\n".join(rows) + "\n")
    code, _, err = _inspect(tmp_path, capsys)
    one_line_error(code, err, "cannot be a class name", "rename it")
