"""benchmarks/bundled_variants.py: its rows are what the variants' definitions say.

The table decides whether an idea (another input side, an ensemble) is worth a training
run, so its bookkeeping is checked where the answer is known: a side equal to the model's
own is the model, an ensemble that gives one member all the weight is that member.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from helpers import CLASSES, make_tiny_bundle, write_image_folder

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import bundled_variants


def test_rows_agree_with_what_each_variant_is(tmp_path, monkeypatch):
    write_image_folder(tmp_path / "data", CLASSES, 4)
    write_image_folder(tmp_path / "photos", [*CLASSES, "yak"], 3, partitioned=False, size=90)
    write_image_folder(tmp_path / "others", ["person", "giraffe"], 3, partitioned=False, size=90)
    calibration = {"temperature": 1.0, "threshold": 0.5}
    # the fast net pools globally, so it takes any side, as an EfficientNet does
    tiny = dict(architecture="fast", classes=CLASSES, calibration=calibration)
    model = make_tiny_bundle(tmp_path / "a.safetensors", **tiny)
    partner = make_tiny_bundle(tmp_path / "b.safetensors", **tiny, seed=1)
    out = tmp_path / "variants.json"
    argv = ["bundled_variants.py", "--data", str(tmp_path / "data"), "--model", str(model)]
    argv += ["--photos", str(tmp_path / "photos"), "--others", str(tmp_path / "others")]
    argv += ["--sides", "32,48", "--partner", str(partner), "--weights", "1,0,0.5"]
    argv += ["--out", str(out)]
    monkeypatch.setattr(sys, "argv", argv)
    bundled_variants.main()

    result = json.loads(out.read_text())
    rows = {r["variant"]: r for r in result["rows"]}
    assert set(rows) == {
        "as shipped (32 px)",
        "fed at 32 px",
        "fed at 48 px",
        "partner alone",
        "ensemble, weight 1.0",
        "ensemble, weight 0.0",
        "ensemble, weight 0.5",
    }
    figures = ["test_accuracy", "test_ece", "photos_accuracy", "unsure_right", "unsure_others"]

    def same(a: str, b: str) -> None:
        assert {k: rows[a][k] for k in figures} == {k: rows[b][k] for k in figures}, (a, b)

    same("as shipped (32 px)", "fed at 32 px")
    same("as shipped (32 px)", "ensemble, weight 1.0")
    same("partner alone", "ensemble, weight 0.0")
    # "yak" is no class of the model: its photos are skipped, not counted as mistakes
    assert sorted(rows["partner alone"]["per_class"]) == ["0", "1", "2"]
    # the matched-doubt threshold reproduces the plain model's own rate on right answers
    plain = rows["as shipped (32 px)"]
    assert plain["others_at_matched_doubt"] <= 1 and result["matched_doubt"] >= 0
    assert result["machine"]["cores"] >= 1 and result["threshold"] == 0.5


def test_a_net_tied_to_its_side_is_a_clear_error(tmp_path, monkeypatch, capsys):
    write_image_folder(tmp_path / "data", CLASSES, 2)
    write_image_folder(tmp_path / "photos", CLASSES, 2, partitioned=False, size=40)
    model = make_tiny_bundle(tmp_path / "a.safetensors", classes=CLASSES)  # flatten + linear
    argv = ["bundled_variants.py", "--data", str(tmp_path / "data"), "--model", str(model)]
    argv += ["--photos", str(tmp_path / "photos"), "--others", str(tmp_path / "photos")]
    argv += ["--sides", "48", "--out", str(tmp_path / "v.json")]
    monkeypatch.setattr(sys, "argv", argv)
    with pytest.raises(SystemExit, match="takes only 32 px pictures"):
        bundled_variants.main()
