"""``imageclf predict`` with a multi-label model: every label above its threshold in the
table, JSON and CSV, ``--threshold``, and ``--sort-into`` copying a picture into each of
its labels' folders (``no-label/`` for none)."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import pytest
from helpers import make_tiny_bundle, make_tiny_multilabel_bundle, run_cli, write_image_folder

from imageclf import Predictor

CLASSES = ["cat", "dog", "tree", "car"]


@pytest.fixture
def bundle(tmp_path):
    return make_tiny_multilabel_bundle(tmp_path / "m.safetensors", CLASSES, [0.3, 0.5, 0.6, 0.7])


@pytest.fixture
def photos(tmp_path):
    return write_image_folder(tmp_path / "photos", classes=["a", "b", "c"], per_class=2)


def _predict(bundle, photos, capsys, *extra):
    argv = ["-q", "predict", str(bundle), str(photos), *extra]
    return run_cli(argv, capsys)


def test_json_lists_every_label_at_or_above_its_threshold(bundle, photos, capsys):
    code, out, err = _predict(bundle, photos, capsys, "--format", "json", "--top-k", "4")
    assert code == 0, err
    entries = json.loads(out)
    predictor = Predictor.load(bundle)
    expected = predictor.predict([e["path"] for e in entries])
    seen = set()
    for entry, want in zip(entries, expected, strict=True):
        assert entry["task"] == "multi_label" and "unsure" not in entry and "outside" not in entry
        assert [(x["label"], x["probability"]) for x in entry["labels"]] == want
        for x in entry["labels"]:
            assert (
                x["probability"]
                >= x["threshold"]
                == dict(zip(CLASSES, [0.3, 0.5, 0.6, 0.7], strict=True))[x["label"]]
            )
        assert len(entry["predictions"]) == 4
        seen.add(len(entry["labels"]))
    assert max(seen) > 1  # the random model gives several labels to some pictures


def test_threshold_override_table_and_csv(bundle, photos, capsys):
    code, out, _ = _predict(bundle, photos, capsys, "--threshold", "0.999")
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["image", "labels"]
    assert all(line.endswith("(no label above its threshold)") for line in lines[1:])
    code, out, _ = _predict(bundle, photos, capsys, "--threshold", "0.001", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert rows[0] == ["path", "label", "probability", "threshold", "error"]
    assert len(rows) == 1 + 4 * 12 and {r[3] for r in rows[1:]} == {"0.0010"}
    code, out, _ = _predict(bundle, photos, capsys, "--threshold", "0.999", "--format", "csv")
    rows = list(csv.reader(io.StringIO(out)))
    assert len(rows) == 13 and all(r[1:] == ["", "", "", ""] for r in rows[1:])


@pytest.mark.parametrize("value", ["0", "1", "1.5", "-0.2", "x"])
def test_bad_threshold_is_one_line(bundle, photos, capsys, value):
    code, out, err = _predict(bundle, photos, capsys, "--threshold", value)
    assert code == 2 and out == "" and "--threshold" in err and "Traceback" not in err


def test_single_label_model_refuses_threshold(tmp_path, photos, capsys):
    single = make_tiny_bundle(tmp_path / "s.safetensors")
    code, out, err = _predict(single, photos, capsys, "--threshold", "0.5")
    assert code == 2 and out == ""
    assert err.strip().splitlines() == [
        "imageclf: error: a threshold applies to multi-label models; this model gives one label "
        "per picture"
    ]


def test_sort_into_copies_a_picture_into_each_labels_folder(bundle, photos, tmp_path, capsys):
    target = tmp_path / "sorted"
    code, out, err = _predict(
        bundle, photos, capsys, "--sort-into", str(target), "--format", "json"
    )
    assert code == 0, err
    entries = json.loads(out)
    for entry in entries:
        folders = sorted(Path(p).parent.name for p in entry["sorted_to"])
        assert folders == sorted(x["label"] for x in entry["labels"]) or (
            folders == ["no-label"] and entry["labels"] == []
        )
        for copy in entry["sorted_to"]:
            assert Path(copy).read_bytes() == Path(entry["path"]).read_bytes()
    assert f"sorted {len(entries)} of {len(entries)} pictures" in err
    # --threshold 0.999: no label for anything, so everything in no-label/
    again = tmp_path / "none"
    code, out, err = _predict(
        bundle, photos, capsys, "--sort-into", str(again), "--threshold", "0.999"
    )
    assert code == 0 and [p.name for p in again.iterdir()] == ["no-label"]
    assert len(list((again / "no-label").iterdir())) == 12 and "no-label" in out


def test_explain_draws_the_most_likely_label(bundle, photos, tmp_path, capsys):
    out_dir = tmp_path / "cams"
    code, _, _ = _predict(bundle, photos, capsys, "--explain", str(out_dir))
    assert code == 0 and len(list(out_dir.glob("*.png"))) == 12
