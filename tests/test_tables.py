"""Labels from a table (``data.tables``): single- and multi-label tables, the delimiter
and 0/1-column forms, the split column, a folder holding labels.csv, the cache key, and
every bad table as one error naming its spreadsheet row (header = row 1)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes, run_cli
from PIL import Image

from imageclf.data import TEST, TRAIN, VAL, load_dataset, make_split, table_options_for
from imageclf.data.tables import read_table
from imageclf.errors import DataError, UserInputError

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "bird": (30, 30, 200)}


def _pictures(root: Path, n: int, folder: str = "img") -> list[str]:
    """``n`` small noisy pictures (every channel varies: a constant one cannot be
    normalised), one colour per class of three."""
    (root / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    names = []
    for i in range(n):
        name = f"{folder}/{i:03d}.png"
        pixels = rng.normal(60, 20, (12, 12, 3))
        pixels[..., i % 3] += 140
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(root / name)
        names.append(name)
    return names


def _table(root: Path, header: str, rows: list[str], name: str = "labels.csv") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    path = root / name
    path.write_text("\n".join([header, *rows]) + "\n", encoding="utf-8")
    return path


def _single(root: Path, n: int = 12) -> Path:
    names = _pictures(root, n)
    classes = ["cat", "dog", "bird"]
    return _table(root, "file,label", [f"{f},{classes[i % 3]}" for i, f in enumerate(names)])


def _multi(root: Path, n: int = 24, delimiter: str = " ") -> Path:
    names = _pictures(root, n)
    rows = []
    for i, f in enumerate(names):
        labels = [c for j, c in enumerate(["cat", "dog", "bird"]) if (i + 1) >> j & 1]
        rows.append(f"{f},{delimiter.join(labels)}")
    return _table(root, "file,label", rows)


@pytest.fixture(autouse=True)
def _logs_reach_caplog(monkeypatch):
    """A CLI test run earlier stops the package's logger propagating; caplog needs it."""
    monkeypatch.setattr(logging.getLogger("imageclf"), "propagate", True)


def _error(path: Path, **options) -> str:
    with pytest.raises(DataError) as exc:
        load_dataset(path, progress=False, use_cache=False, table=options or None)
    return str(exc.value)


# ---------------------------------------------------------------- reading tables
def test_single_label_table(tmp_path, caplog):
    csv = _single(tmp_path)
    with caplog.at_level(logging.INFO, "imageclf.data"):
        ds = load_dataset(csv, progress=False)
    assert not ds.multi_label and ds.labels.dtype == np.int64 and ds.labels.shape == (12,)
    assert ds.classes == ["bird", "cat", "dog"]  # sorted, as folder classes are
    assert ds.counts() == {"bird": 4, "cat": 4, "dog": 4}
    assert ds.names[0] == "img/000.png" and ds.classes[ds.labels[0]] == "cat"
    assert (ds.partition == TRAIN).all() and ds.image_size == 32
    assert "single-label: one label per row" in caplog.text


def test_multi_label_table_is_multi_hot(tmp_path, caplog):
    csv = _multi(tmp_path)
    with caplog.at_level(logging.INFO, "imageclf.data"):
        ds = load_dataset(csv, progress=False)
    assert ds.multi_label and ds.labels.dtype == np.uint8 and ds.labels.shape == (24, 3)
    assert ds.classes == ["bird", "cat", "dog"]
    # row 2 (the first picture) is cat; row 4 (i=2) is cat + dog
    assert ds.labels[0].tolist() == [0, 1, 0] and ds.labels[2].tolist() == [0, 1, 1]
    assert ds.counts() == dict(zip(ds.classes, ds.labels.sum(0).tolist(), strict=True))
    assert "multi-label: row 4 names 2 labels (cat dog); labels are split at spaces" in caplog.text


def test_delimiter_and_column_options(tmp_path):
    names = _pictures(tmp_path, 8)
    rows = [f"x,{f},{'cat|dog' if i % 2 else 'bird'}" for i, f in enumerate(names)]
    csv = _table(tmp_path, "id,path_of_picture,tags_here", rows, "mine.csv")
    options = {"file_column": "path_of_picture", "label_column": "tags_here",
               "label_delimiter": "|"}  # fmt: skip
    ds = load_dataset(csv, progress=False, table=options)
    assert ds.multi_label and ds.classes == ["bird", "cat", "dog"]
    assert ds.labels[1].tolist() == [0, 1, 1]
    # "" keeps the whole cell one label: "cat|dog" is then a class of its own
    whole = load_dataset(csv, progress=False, table={**options, "label_delimiter": ""})
    assert not whole.multi_label and whole.classes == ["bird", "cat|dog"]


def test_one_hot_columns(tmp_path):
    names = _pictures(tmp_path, 9)
    rows = [f"{f},{i % 2},{int(i % 3 == 0)},1" for i, f in enumerate(names)]
    csv = _table(tmp_path, "file,dog,cat,sky", rows)
    ds = load_dataset(csv, progress=False, table={"label_columns": ["dog", "cat", "sky"]})
    assert ds.multi_label and ds.classes == ["dog", "cat", "sky"]  # the order given
    assert ds.labels[3].tolist() == [1, 1, 1] and ds.labels[2].tolist() == [0, 0, 1]
    # exactly one 1 per row is single-label data written as columns
    single = [f"{f},{i % 2},{1 - i % 2}" for i, f in enumerate(names)]
    csv = _table(tmp_path, "file,dog,cat", single, "single.csv")
    ds = load_dataset(csv, progress=False, table={"label_columns": ["dog", "cat"]})
    assert not ds.multi_label and ds.labels.tolist() == [1 - i % 2 for i in range(9)]


def test_multi_label_forced_and_rows_without_labels(tmp_path, caplog):
    csv = _single(tmp_path)
    with caplog.at_level(logging.INFO, "imageclf.data"):
        ds = load_dataset(csv, progress=False, table={"multi_label": True})
    assert ds.multi_label and ds.labels.sum(1).tolist() == [1] * 12
    assert "multi-label, as asked" in caplog.text
    names = _pictures(tmp_path / "b", 10)
    rows = [f"{f},{['cat dog', 'cat', 'dog', ''][i % 4]}" for i, f in enumerate(names)]
    ds = load_dataset(_table(tmp_path / "b", "file,label", rows), progress=False)
    assert ds.multi_label and ds.labels[3].tolist() == [0, 0]  # a picture of neither


def test_split_column_and_official_split(tmp_path):
    names = _pictures(tmp_path, 18)
    parts = ["train"] * 12 + ["Val", "valid", "validation"] + [" test "] * 3
    rows = [
        f"{f},{['cat', 'dog'][i % 2]},{p}"
        for i, (f, p) in enumerate(zip(names, parts, strict=True))
    ]
    ds = load_dataset(_table(tmp_path, "file,label,split", rows), progress=False)
    assert (ds.partition[:12] == TRAIN).all() and (ds.partition[12:15] == VAL).all()
    assert (ds.partition[15:] == TEST).all()
    split = make_split(ds, "auto", 0)
    assert split.name == "official" and split.sizes() == {"train": 12, "val": 3, "test": 3}


def test_folder_with_labels_csv_and_bom(tmp_path):
    names = _pictures(tmp_path, 6)
    text = "file,label\n" + "".join(f"{f},{'ab'[i % 2]}\n" for i, f in enumerate(names))
    (tmp_path / "labels.csv").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    ds = load_dataset(tmp_path, progress=False)  # the folder: its labels.csv wins
    assert ds.classes == ["a", "b"] and len(ds) == 6 and ds.source == str(tmp_path)
    names_with_dirs = [n.replace("img/", "./img//") for n in names]
    text = "file,label\n" + "".join(f"{f},{'ab'[i % 2]}\n" for i, f in enumerate(names_with_dirs))
    (tmp_path / "labels.csv").write_text(text)
    assert load_dataset(tmp_path, progress=False).names.tolist() == names  # paths normalised


def test_windows_separators_are_read(tmp_path):
    names = _pictures(tmp_path, 4)
    rows = [f"{f.replace('/', chr(92))},{'ab'[i % 2]}" for i, f in enumerate(names)]
    ds = load_dataset(_table(tmp_path, "file,label", rows), progress=False)
    assert ds.names.tolist() == names


def test_undecodable_pictures_are_skipped_and_named(tmp_path, caplog):
    csv = _single(tmp_path, 15)
    (tmp_path / "img" / "004.png").write_bytes(b"not a picture")
    with caplog.at_level(logging.WARNING, "imageclf.data"):
        ds = load_dataset(csv, progress=False, use_cache=False)
    assert len(ds) == 14 and "img/004.png" not in ds.names.tolist()
    assert len(ds.skipped) == 1 and ds.skipped[0].startswith("img/004.png (")
    assert "skipped 1 unreadable image(s): img/004.png" in caplog.text


def test_cache_round_trip_and_key(tmp_path):
    csv = _multi(tmp_path)
    first = load_dataset(csv, progress=False)
    again = load_dataset(csv, progress=False)  # from the cache
    assert again.fingerprint == first.fingerprint and again.labels.dtype == np.uint8
    assert np.array_equal(again.labels, first.labels) and again.multi_label
    assert again.names.tolist() == first.names.tolist()
    key = first.fingerprint
    other = load_dataset(csv, progress=False, table={"multi_label": True})
    assert other.fingerprint != key  # the options are in the key
    csv.write_text(csv.read_text().replace("img/000.png,cat", "img/000.png,dog"))
    changed = load_dataset(csv, progress=False)
    assert changed.fingerprint != key and changed.labels[0].tolist() == [0, 0, 1]
    assert read_table(csv).fingerprint(32) != read_table(csv).fingerprint(48)


def test_recorded_options_only_for_tables(tmp_path):
    csv = _single(tmp_path)
    recorded = {"table": {"file_column": "file"}}
    assert table_options_for(csv, recorded) == {"file_column": "file"}
    assert table_options_for(csv, {}) is None  # a run from before tables: the defaults
    assert table_options_for(csv, recorded, {"label_column": "x"}) == {"label_column": "x"}
    (tmp_path / "folder").mkdir()
    assert table_options_for(tmp_path / "folder", recorded) is None


# ---------------------------------------------------------------- bad tables: one error each
def test_missing_file_names_the_row(tmp_path):
    csv = _single(tmp_path)
    (tmp_path / "img" / "003.png").unlink()
    (tmp_path / "img" / "007.png").unlink()
    message = _error(csv)
    assert "row 5: img/003.png not found (and 1 more rows)" in message


def test_duplicate_paths_name_both_rows(tmp_path):
    names = _pictures(tmp_path, 4)
    rows = [f"{f},{'ab'[i % 2]}" for i, f in enumerate(names)] + ["img/./001.png,a"]
    assert "row 6: img/001.png is named again (first in row 3)" in _error(
        _table(tmp_path, "file,label", rows)
    )


def test_empty_label_in_single_label_data(tmp_path):
    names = _pictures(tmp_path, 4)
    rows = [f"{f},{'' if i == 2 else 'ab'[i % 2]}" for i, f in enumerate(names)]
    assert "row 4: no label" in _error(_table(tmp_path, "file,label", rows))


@pytest.mark.parametrize(
    ("value", "needle"),
    [("training", "unknown split 'training'"), ("", "unknown split ''")],
)
def test_unknown_split_name(tmp_path, value, needle):
    names = _pictures(tmp_path, 4)
    rows = [f"{f},{'ab'[i % 2]},{value if i == 1 else 'train'}" for i, f in enumerate(names)]
    message = _error(_table(tmp_path, "file,label,split", rows))
    assert f"row 3: {needle}; use train, val or test" in message


@pytest.mark.parametrize(
    ("cell", "needle"),
    [
        ("../outside.png", "leaves the table's folder (..)"),
        ("img/../../outside.png", "leaves the table's folder (..)"),
        ("/etc/passwd", "is an absolute path"),
        ("C:\\Users\\x.png", "is an absolute path"),
        ("", "no file name"),
    ],
)
def test_paths_that_leave_the_folder(tmp_path, cell, needle):
    (tmp_path / "outside.png").write_bytes(png_bytes())
    root = tmp_path / "data"
    names = _pictures(root, 3)
    rows = [f"{f},{'ab'[i % 2]}" for i, f in enumerate(names)] + [f'"{cell}",a']
    assert "row 5: " in (message := _error(_table(root, "file,label", rows)))
    assert needle in message


def test_symlink_out_of_the_folder_is_refused(tmp_path):
    (tmp_path / "secret.png").write_bytes(png_bytes())
    root = tmp_path / "data"
    names = _pictures(root, 3)
    (root / "img" / "link.png").symlink_to(tmp_path / "secret.png")
    rows = [f"{f},{'ab'[i % 2]}" for i, f in enumerate(names)] + ["img/link.png,a"]
    assert "row 5: img/link.png leads out of the table's folder" in _error(
        _table(root, "file,label", rows)
    )
    # a link that stays inside is fine, but names its picture a second time here
    (root / "img" / "link.png").unlink()
    (root / "img" / "link.png").symlink_to(root / "img" / "000.png")
    rows[-1] = "img/link.png,b"
    assert "row 5: img/link.png is named again (first in row 2)" in _error(
        _table(root, "file,label", rows)
    )
    inside = ["img/001.png,b", "img/002.png,b", "img/link.png,a", "img/extra.png,a"]
    (root / "img" / "extra.png").write_bytes(png_bytes())
    ds = load_dataset(_table(root, "file,label", inside), progress=False, use_cache=False)
    assert ds.names.tolist() == ["img/001.png", "img/002.png", "img/link.png", "img/extra.png"]


def test_a_folder_is_not_a_picture(tmp_path):
    names = _pictures(tmp_path, 3)
    rows = [f"{f},{'ab'[i % 2]}" for i, f in enumerate(names)] + ["img,a"]
    assert "row 5: img is a folder, not a picture" in _error(_table(tmp_path, "file,label", rows))


def test_bad_encoding_names_the_row(tmp_path):
    names = _pictures(tmp_path, 4)
    text = "file,label\n" + "".join(f"{f},{'ab'[i % 2]}\n" for i, f in enumerate(names))
    lines = text.encode().split(b"\n")
    lines[3] = lines[3].replace(b",a", b",caf\xe9")  # Latin-1, not UTF-8
    (tmp_path / "labels.csv").write_bytes(b"\n".join(lines))
    assert "row 4: not UTF-8 text" in _error(tmp_path / "labels.csv")


def test_missing_column_names_the_nearest(tmp_path):
    names = _pictures(tmp_path, 4)
    rows = [f"{f},{'ab'[i % 2]}" for i, f in enumerate(names)]
    csv = _table(tmp_path, "file,lable", rows)
    message = _error(csv)
    assert "no column 'label'; did you mean 'lable'?" in message and "--label-column" in message
    assert "no column 'fiel'; did you mean 'file'?" in _error(csv, file_column="fiel")
    csv = _table(tmp_path, "file,label", rows, "b.csv")
    message = _error(csv, label_columns=["cat", "dgo"])
    assert "no column 'cat'" in message and "--label-columns" in message
    semi = _table(tmp_path, "file;label", [r.replace(",", ";") for r in rows], "semi.csv")
    assert "separated by ';'" in _error(semi)


def test_one_hot_values_must_be_0_or_1(tmp_path):
    names = _pictures(tmp_path, 4)
    rows = [f"{f},{'yes' if i == 3 else i % 2},1" for i, f in enumerate(names)]
    message = _error(_table(tmp_path, "file,a,b", rows), label_columns=["a", "b"])
    assert "row 5: column 'a' holds 'yes'; label columns hold 0 or 1" in message


def test_ragged_rows_and_empty_tables(tmp_path):
    names = _pictures(tmp_path, 4)
    rows = [f"{f},{'ab'[i % 2]}" for i, f in enumerate(names)]
    rows[1] += ",extra"
    assert "row 3: 3 cells, but the header has 2" in _error(_table(tmp_path, "file,label", rows))
    rows[1] = rows[1].replace(",extra", ",,")  # empty cells a spreadsheet adds are fine
    assert len(load_dataset(_table(tmp_path, "file,label", rows), progress=False)) == 4
    assert "has a header but no rows" in _error(_table(tmp_path, "file,label", [], "e.csv"))
    (tmp_path / "blank.csv").write_text("\n\n")
    assert "the first row must name the columns" in _error(tmp_path / "blank.csv")
    assert "appears twice" in _error(_table(tmp_path, "file,label,file", [], "d.csv"))


def test_too_few_training_pictures_of_a_label(tmp_path):
    names = _pictures(tmp_path, 5)
    rows = [f"{f},{'a' if i else 'b'}" for i, f in enumerate(names)]
    message = _error(_table(tmp_path, "file,label", rows))
    assert "every label needs at least 2 training pictures; too few in: b (1)" in message


def test_table_options_are_checked(tmp_path):
    folder = tmp_path / "folder"
    for c in "ab":
        (folder / c).mkdir(parents=True)
        for i in range(3):
            (folder / c / f"{i}.png").write_bytes(png_bytes())
    assert "are for a .csv labels table" in _error(folder, label_column="x")
    with pytest.raises(UserInputError, match="did you mean 'label_column'"):
        load_dataset(_single(tmp_path / "t"), progress=False, table={"label_colum": "x"})
    with pytest.raises(UserInputError, match="not both"):
        load_dataset(_single(tmp_path / "u"), table={"label_column": "label",
                                                     "label_columns": ["a", "b"]})  # fmt: skip


# ---------------------------------------------------------------- the command line
def test_cli_inspect_and_info_read_tables(tmp_path, capsys):
    csv = _multi(tmp_path)
    code, out, err = run_cli(["-q", "data", "inspect", str(csv), "--no-duplicates"], capsys)
    assert code == 0, err
    assert "table labels.csv: files and a label column (multi-label" in out
    assert "labels per picture: mean 1.50 (label cardinality), min 0, max 3; 3 with no" in out
    assert "label combinations: 8 distinct" in out
    lines = {line.split()[0]: line.split()[1:] for line in out.splitlines() if line.strip()}
    assert lines["cat"] == ["12"] and lines["pictures"] == ["24"]
    code, out, err = run_cli(["-q", "data", "info", str(csv)], capsys)
    assert code == 0 and "images: 24" in out, err


def test_cli_flags_reach_the_reader_and_errors_are_one_line(tmp_path, capsys):
    names = _pictures(tmp_path, 6)
    rows = [f"{f};{'a' if i % 2 else 'b'}" for i, f in enumerate(names)]
    csv = _table(tmp_path, "pic,what", [r.replace(";", ",") for r in rows])
    argv = ["-q", "data", "inspect", str(csv), "--no-duplicates"]
    code, out, err = run_cli([*argv, "--file-column", "pic", "--label-column", "what"], capsys)
    assert code == 0 and "single-label" in out, err
    code, out, err = run_cli([*argv, "--file-column", "pics"], capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "no column 'pics'; did you mean 'pic'?" in err and "Traceback" not in err
    code, _, err = run_cli([*argv, "--label-columns", ","], capsys)
    assert code == 2 and "name the label columns" in err


FLAGS = ["--file-column", "pic", "--label-column", "what", "--split-column", "part"]


def _other_columns(root: Path) -> Path:
    """36 pictures of 3 classes, the last 6 for testing, under other column names."""
    names = _pictures(root, 36)
    rows = [f"{f},{['red', 'green', 'blue'][i % 3]},{'test' if i >= 30 else 'train'}"
            for i, f in enumerate(names)]  # fmt: skip
    return _table(root, "pic,what,part", rows, "t.csv")


def test_train_records_the_table_options_and_evaluate_reuses_them(tmp_path, capsys):
    """Flags with other column names reach training; the run records them, so evaluate
    (with no --data) reads the table the same way and re-creates the recorded split."""
    csv = _other_columns(tmp_path / "data")
    run = tmp_path / "run"
    argv = ["-q", "train", "--data", str(csv), *FLAGS, "--recipe", "seed-a", "--split",
            "official", "--epochs", "1", "--batch-size", "16", "--out", str(run)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    config = json.loads((run / "config.json").read_text())
    assert config["config"]["table"] == {"file_column": "pic", "label_column": "what",
                                         "split_column": "part"}  # fmt: skip
    assert config["split"]["sizes"]["test"] == 6  # the table's own test rows
    report = tmp_path / "report"
    argv = ["-q", "evaluate", str(run / "model.safetensors"), "--out", str(report)]
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    split = json.loads((report / "metrics.json").read_text())["split"]
    assert split["origin"] == "recorded in the model bundle"
    assert split["digest"] == config["split"]["digest"]
    # another table of the same pictures under the default names: its own flags
    other = tmp_path / "data" / "other.csv"
    other.write_text(csv.read_text().replace("pic,what,part", "file,label,split"))
    argv = ["-q", "evaluate", str(run / "model.safetensors"), "--data", str(other), "--out",
            str(tmp_path / "r2"), "--file-column", "file"]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    code, _, err = run_cli(["-q", "train", "--data", str(tmp_path / "data" / "img"), *FLAGS[:2]],
                           capsys)  # fmt: skip
    assert code == 2 and "are for a .csv labels table" in err


def test_tune_reads_the_table_with_its_flags(tmp_path, capsys):
    pytest.importorskip("optuna")
    csv = _other_columns(tmp_path / "data")
    out = tmp_path / "tune"
    argv = ["-q", "tune", "--data", str(csv), *FLAGS, "--recipe", "seed-a", "--trials", "1",
            "--epochs", "1", "--out", str(out)]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 0, err
    assert json.loads((out / "tune.json").read_text())["table"]["file_column"] == "pic"
    assert "table" not in json.loads((out / "best.json").read_text())["config"]
    code, _, err = run_cli(["-q", "tune", "--resume", str(out), "--file-column", "x"], capsys)
    assert code == 2 and "the table flags" in err
