"""ONNX export of a multi-label bundle: sigmoid semantics in the file's metadata, the
parity check per label, and Predictor on the .onnx giving the same labels."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_tiny_multilabel_bundle, png_bytes, run_cli

from imageclf.errors import UserInputError
from imageclf.prediction.export import ExportError, _PixelsToLogits, export_onnx
from imageclf.prediction.predictor import Predictor

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'imageclf[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")

CLASSES = ["cat", "dog", "tree", "car"]
THRESHOLDS = [0.3, 0.5, 0.6, 0.9]
CALIBRATION = {"method": "platt", "scale": [2.0, 0.5, 1.0, 3.0], "bias": [-0.5, 0.25, 0.0, 1.0]}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export-ml")
    bundle = make_tiny_multilabel_bundle(
        folder / "ml.safetensors", CLASSES, THRESHOLDS, CALIBRATION
    )
    return bundle, export_onnx(bundle, folder / "ml.onnx")


def test_the_file_says_sigmoid_thresholds_and_calibration(exported):
    bundle, result = exported
    props = {p.key: p.value for p in onnx.load(str(result.path)).metadata_props}
    assert props["task"] == "multi_label" and "temperature" not in props
    assert "sigmoid(scale * logit + bias)" in props["output"]
    assert json.loads(props["thresholds"]) == THRESHOLDS
    assert json.loads(props["label_calibration"]) == CALIBRATION
    assert json.loads(props["imageclf"]) == Predictor.load(bundle).metadata


def test_parity_is_checked_per_label(exported):
    _, result = exported
    assert result.images == result.top1_agree == 1000 and result.max_prob_diff <= 1e-4
    assert result.label_agree == [1000] * 4


def test_predictor_on_the_onnx_file_gives_the_same_labels(exported):
    bundle, result = exported
    torch_p, onnx_p = Predictor.load(bundle), Predictor.load(result.path)
    assert onnx_p.multi_label and onnx_p.backend == "onnxruntime"
    noise = np.random.default_rng(1).integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
    pictures = [png_bytes((200, 30, 30)), *noise]
    for threshold in (None, 0.5):
        want = torch_p.predict(pictures, threshold=threshold)
        got = onnx_p.predict(pictures, threshold=threshold)
        assert [[lab for lab, _ in a] for a in got] == [[lab for lab, _ in a] for a in want]
    batch = torch_p.preprocess(noise)
    for tta in (False, True):
        np.testing.assert_allclose(
            onnx_p.predict_proba(batch, tta=tta), torch_p.predict_proba(batch, tta=tta), atol=1e-5
        )


def test_a_wrong_export_is_refused_per_label(tmp_path, monkeypatch):
    bundle = make_tiny_multilabel_bundle(tmp_path / "ml.safetensors", CLASSES, THRESHOLDS)
    original = _PixelsToLogits.__init__

    def skewed(self, reference):
        original(self, reference)
        self.shift += 0.3

    monkeypatch.setattr(_PixelsToLogits, "__init__", skewed)
    with pytest.raises(ExportError, match=r"every label agrees on \d+ of 1000 images"):
        export_onnx(bundle, tmp_path / "bad.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ml.safetensors"]


def test_cli_export_and_predict_with_the_onnx_file(exported, tmp_path, capsys):
    bundle, result = exported
    code, out, err = run_cli(
        ["-q", "export", str(bundle), "--out", str(tmp_path / "m.onnx")], capsys
    )
    assert code == 0, err
    assert "every label agrees on 1000/1000" in out
    picture = tmp_path / "x.png"
    picture.write_bytes(png_bytes())
    code, out, err = run_cli(
        ["-q", "predict", str(result.path), str(picture), "--format", "json"], capsys
    )
    assert code == 0, err
    (entry,) = json.loads(out)
    want = Predictor.load(bundle).predict(png_bytes())[0]
    assert entry["task"] == "multi_label"
    assert [x["label"] for x in entry["labels"]] == [lab for lab, _ in want]


def test_int8_export_checks_label_decisions(tmp_path):
    """int8 of a multi-label bundle: the check counts (picture, label) decisions at the
    bundle's thresholds against multi-hot labels, and the file answers with labels."""
    from imageclf.prediction.quantize import Int8Data, export_int8

    bundle = make_tiny_multilabel_bundle(tmp_path / "ml.safetensors", CLASSES, THRESHOLDS)
    rng = np.random.default_rng(0)
    pictures = rng.integers(0, 256, (60, 32, 32, 3), dtype=np.uint8)
    truth = rng.integers(0, 2, (60, 4), dtype=np.uint8)
    data = Int8Data(pictures[:30], "noise", pictures[30:], truth[30:], "noise (test)")
    result = export_int8(bundle, tmp_path / "ml.int8.onnx", data=data, max_drop=100)
    check = result.facts["check"]
    float_p = Predictor.load(bundle)
    decided = float_p.labels_on(float_p.predict_proba(pictures[30:]))
    assert check["float_accuracy"] == pytest.approx((decided == truth[30:].astype(bool)).mean())
    assert 0 <= check["top1_agree"] <= 30 and check["agreement_images"] == 30
    assert check["decisions"] == "labels"
    int8_p = Predictor.load(result.path)
    assert int8_p.multi_label and len(int8_p.predict(pictures[:2])) == 2
    bad = Int8Data(pictures[:30], "noise", pictures[30:], truth[30:, :3], "noise (test)")
    with pytest.raises(UserInputError, match="one column per label"):
        export_int8(bundle, tmp_path / "bad.int8.onnx", data=bad, max_drop=100)
