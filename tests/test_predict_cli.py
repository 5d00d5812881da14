"""``imageclf predict``: files and folders, broken files, formats, Grad-CAM output."""

from __future__ import annotations

import csv
import io
import json

import numpy as np
import pytest
from helpers import make_tiny_bundle, run_cli, write_image_folder
from PIL import Image

from imageclf import Predictor
from imageclf.prediction import predictor as predict_module


def _run(argv, capsys):
    """``imageclf -q ...``: (exit code, stdout, stderr)."""
    return run_cli(["-q", *argv], capsys)


@pytest.fixture()
def folder(tmp_path):
    """Three classes x 2 PNGs in nested folders, one JPEG, one broken file, one README."""
    root = write_image_folder(tmp_path / "imgs", per_class=2, partitioned=False)
    Image.fromarray(np.full((48, 64, 3), 90, np.uint8)).save(root / "cat" / "photo.jpg")
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not really a png")
    (root / "README.txt").write_text("not an image, and not in an image's clothing")
    (root / ".hidden.png").write_bytes(b"junk")
    return root


def test_broken_file_is_reported_others_predicted_exit_2(tiny_bundle, folder, capsys):
    code, out, err = _run(["predict", str(tiny_bundle), str(folder), "--format", "json"], capsys)
    assert code == 2
    entries = {e["path"]: e for e in json.loads(out)}
    assert len(entries) == 8  # 6 PNGs + photo.jpg + broken.png; README and hidden skipped
    broken = entries[str(folder / "dog" / "broken.png")]
    assert "error" in broken and "predictions" not in broken
    good = [e for e in entries.values() if "predictions" in e]
    assert len(good) == 7
    predictor = Predictor.load(tiny_bundle)
    for entry in good:
        assert len(entry["predictions"]) == 3
        probs = [p["probability"] for p in entry["predictions"]]
        assert probs == sorted(probs, reverse=True)
        expected = predictor.predict(entry["path"], top_k=3)[0]
        assert [(p["label"], p["probability"]) for p in entry["predictions"]] == [
            (label, pytest.approx(prob, abs=1e-6)) for label, prob in expected
        ]
    assert "broken.png" in err and "1 of 8 files could not be classified" in err


def test_all_good_exits_0_table_and_csv(tiny_bundle, tmp_path, capsys):
    root = write_image_folder(tmp_path / "ok", per_class=1, partitioned=False)
    code, out, err = _run(["predict", str(tiny_bundle), str(root), "--top-k", "2"], capsys)
    assert code == 0 and err == ""
    lines = out.strip().splitlines()
    assert lines[0].split() == ["image", "prediction", "#2"] and len(lines) == 4
    code, out, _ = _run(
        ["predict", str(tiny_bundle), str(root / "cat" / "0000.png"), "--format", "csv", "--tta"],
        capsys,
    )
    rows = list(csv.DictReader(io.StringIO(out)))
    assert code == 0 and [r["rank"] for r in rows] == ["1", "2", "3"]
    tta = Predictor.load(tiny_bundle).predict(root / "cat" / "0000.png", top_k=1, tta=True)[0][0]
    assert rows[0]["label"] == tta[0] and float(rows[0]["probability"]) == round(tta[1], 4)


def test_missing_path_is_reported(tiny_bundle, tmp_path, capsys):
    root = write_image_folder(tmp_path / "ok", per_class=1, partitioned=False)
    code, out, err = _run(["predict", str(tiny_bundle), str(root), "/no/such.png"], capsys)
    assert code == 2 and "/no/such.png: no such file or folder" in err
    assert len(out.strip().splitlines()) == 4


def test_model_is_optional(tiny_bundle, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(predict_module, "default_model_path", lambda: tiny_bundle)
    image = tmp_path / "one.png"
    Image.new("RGB", (20, 20), (10, 200, 30)).save(image)
    code, out, _ = _run(["predict", str(image), "--format", "json", "--top-k", "1"], capsys)
    assert code == 0 and json.loads(out)[0]["path"] == str(image)
    code, _, err = _run(["predict", str(tiny_bundle)], capsys)
    assert code == 2 and "at least one image" in err
    code, _, err = _run(["predict", str(tmp_path / "nope.safetensors"), str(image)], capsys)
    assert code == 2 and "model file not found" in err


def test_explain_writes_overlays(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "fast.safetensors", "fast")
    root = write_image_folder(tmp_path / "imgs", per_class=1, partitioned=False)
    Image.new("RGB", (300, 200), (200, 200, 0)).save(root / "cat" / "0000.jpg")  # same stem
    out_dir = tmp_path / "cams"
    code, out, _ = _run(
        ["predict", str(bundle), str(root), "--explain", str(out_dir), "--format", "json"], capsys
    )
    assert code == 0
    written = sorted(p.name for p in out_dir.iterdir())
    assert len(written) == 4 and "0000.gradcam-2.png" in written
    for entry in json.loads(out):
        with Image.open(entry["explanation"]) as overlay:
            assert overlay.size == (256, 256)


@pytest.mark.parametrize("threshold, unsure", [(0.0, False), (0.999, True)])
def test_predict_says_not_sure_like_the_page(tmp_path, capsys, threshold, unsure):
    """The model's own "not sure" threshold, the one the page and the API use, in every
    format: a JSON field, a CSV column, words in the table."""
    bundle = make_tiny_bundle(
        tmp_path / "m.safetensors", calibration={"temperature": 1.0, "threshold": threshold}
    )
    root = write_image_folder(tmp_path / "ok", per_class=1, partitioned=False)
    picture = str(root / "cat" / "0000.png")
    assert Predictor.load(bundle).unsure_below == threshold
    code, out, _ = _run(["predict", str(bundle), picture, "--format", "json"], capsys)
    assert code == 0 and json.loads(out)[0]["unsure"] is unsure
    code, out, _ = _run(["predict", str(bundle), picture, "--format", "csv"], capsys)
    assert {r["unsure"] for r in csv.DictReader(io.StringIO(out))} == {str(unsure).lower()}
    code, out, _ = _run(["predict", str(bundle), picture], capsys)
    assert ("(not sure)" in out.splitlines()[1]) is unsure


@pytest.mark.parametrize("familiar_above, outside", [(1e9, True), (-1e9, False)])
def test_predict_says_none_of_its_classes_like_the_page(tmp_path, capsys, familiar_above, outside):
    """The second question, "one of its classes?", in every format too, and such
    pictures sort into unsure/ rather than under a class they are not."""
    calibration = {"temperature": 1.0, "threshold": 0.0, "familiar_above": familiar_above}
    bundle = make_tiny_bundle(tmp_path / "m.safetensors", calibration=calibration)
    root = write_image_folder(tmp_path / "ok", per_class=1, partitioned=False)
    picture = str(root / "cat" / "0000.png")
    code, out, _ = _run(["predict", str(bundle), picture, "--format", "json"], capsys)
    entry = json.loads(out)[0]
    assert code == 0 and entry["outside"] is outside and entry["unsure"] is False
    code, out, _ = _run(["predict", str(bundle), picture, "--format", "csv"], capsys)
    assert {r["outside"] for r in csv.DictReader(io.StringIO(out))} == {str(outside).lower()}
    code, out, _ = _run(["predict", str(bundle), picture], capsys)
    assert ("(none of its classes?)" in out.splitlines()[1]) is outside
    sorted_to = tmp_path / "sorted"
    code, out, _ = _run(["predict", str(bundle), picture, "--sort-into", str(sorted_to)], capsys)
    assert code == 0 and (sorted_to / "unsure" / "0000.png").exists() is outside


def test_bundles_before_calibration_are_unsure_below_one_half(tiny_bundle):
    assert Predictor.load(tiny_bundle).unsure_below == 0.5
