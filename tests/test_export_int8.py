"""int8 export (``imageclf export --format onnx-int8``): calibrated on the bundle's recorded
training split or a folder, checked in accuracy on a labelled test split, refused past
``--max-drop``, and served like any export.

Needs the onnx extra (skips locally without it; CI installs every extra).
"""

from __future__ import annotations

import io
import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import CLASSES, make_tiny_bundle, png_bytes, run_cli, write_image_folder

from imageclf.data import load_dataset
from imageclf.models import build
from imageclf.models.bundle import save_bundle
from imageclf.prediction.predictor import Predictor

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'imageclf[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")


def _props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


def _bundle_with_data(path, data):
    """A small random-weight bundle that records ``data`` and its official split, as a
    trained one does."""
    torch.manual_seed(0)
    model = build("seed-a", num_classes=len(CLASSES), input_size=32)
    fingerprint = load_dataset(data, image_size=32, progress=False).fingerprint
    save_bundle(
        path,
        model.state_dict(),
        {
            "name": "tiny-recorded",
            "architecture": "seed-a",
            "arch_kwargs": {},
            "classes": CLASSES,
            "input_size": 32,
            "normalization": {"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]},
            "data": {"source": str(data), "fingerprint": fingerprint},
            "split": {"name": "official", "seed": 0},
        },
    )
    return path


@pytest.fixture(scope="module")
def recorded(tmp_path_factory):
    """(bundle, its data folder, the int8 file written from it with the CLI, output)."""
    folder = tmp_path_factory.mktemp("int8")
    data = write_image_folder(folder / "data", per_class=8)
    bundle = _bundle_with_data(folder / "tiny.safetensors", data)
    out = folder / "tiny.int8.onnx"
    from imageclf.cli import main

    with pytest.raises(SystemExit) as exc:
        main(["export", str(bundle), "--format", "onnx-int8", "--max-drop", "100"])
    assert exc.value.code == 0
    return bundle, data, out


def test_int8_export_is_quantized_and_records_its_check(recorded):
    bundle, _, out = recorded
    assert out.is_file()
    assert sorted(p.name for p in out.parent.iterdir() if p.name.startswith(".")) == []
    model = onnx.load(str(out))
    ops = Counter(node.op_type for node in model.graph.node)
    assert ops["QuantizeLinear"] and ops["DequantizeLinear"] and ops["Conv"]
    int8_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT8]
    assert int8_weights  # the convolutions' weights are stored as int8
    assert {o.domain for o in model.opset_import} <= {"", "ai.onnx"}
    facts = json.loads(_props(out)["quantization"])
    # all of the recorded training split: 24 pictures, less the tenth held out for validation
    assert facts["calibration"]["images"] == 24 - 3
    assert "training split" in facts["calibration"]["source"]
    check = facts["check"]
    assert check["test_images"] == 3 * 4 and check["agreement_images"] == 3 * 4
    assert 0 <= check["top1_agree"] <= 12 and "test split" in check["test_source"]
    assert check["max_drop_points"] == 100
    points = (check["int8_accuracy"] - check["float_accuracy"]) * 100
    assert check["accuracy_change_points"] == pytest.approx(points, abs=1e-3)
    assert json.loads(_props(out)["imageclf"]) == Predictor.load(bundle).metadata


def test_int8_file_loads_predicts_and_serves(recorded):
    bundle, _, out = recorded
    predictor = Predictor.load(out)
    assert predictor.backend == "onnxruntime" and predictor.classes == CLASSES
    picture = png_bytes((20, 200, 30))
    int8_probs = predictor.predict_proba(predictor.preprocess(picture))
    float_probs = Predictor.load(bundle).predict_proba(predictor.preprocess(picture))
    assert np.isclose(int8_probs.sum(), 1) and np.abs(int8_probs - float_probs).max() < 0.2

    from imageclf.web import create_app

    client = create_app(out, IMAGECLF_MODEL_LOADING="eager", TESTING=True).test_client()
    response = client.post("/api/v1/predict", data={"file": (io.BytesIO(picture), "a.png")})
    assert response.status_code == 200, response.json
    served = [t["label"] for t in response.json["predictions"][0]["top"]]
    assert served[0] == predictor.predict(picture, top_k=1)[0][0][0]
    assert client.get("/api/v1/model").json["backend"] == "onnxruntime"


def test_info_shows_the_quantization_facts(recorded, capsys):
    _, _, out = recorded
    code, text, err = run_cli(["info", str(out)], capsys)
    assert code == 0, err
    assert "quantized    int8 per channel weights, uint8 per tensor activations (QDQ)" in text
    assert "int8 check   top-1 agrees with the float model on" in text
    assert "bound 100) on 12 pictures" in text


@pytest.mark.parametrize(
    ("facts", "needle"),
    [
        ("[1, 2]", "quantized    (the file's quantization facts are unreadable)"),
        ('{"weights": NaN}', "quantized    (the file's quantization facts are unreadable)"),
        ("evil", "quantized    (the file's quantization facts are unreadable)"),
        ("source", "pictures from \\x1b]0;owned\\x07"),
    ],
)
def test_info_reads_the_facts_as_untrusted(recorded, tmp_path, capsys, facts, needle):
    _, _, out = recorded
    model = onnx.load(str(out))
    (entry,) = [p for p in model.metadata_props if p.key == "quantization"]
    if facts == "source":
        real = json.loads(entry.value)
        real["calibration"]["source"] = "\x1b]0;owned\x07"
        facts = json.dumps(real)
    entry.value = facts
    onnx.save(model, str(tmp_path / "edited.onnx"))
    code, text, err = run_cli(["info", str(tmp_path / "edited.onnx")], capsys)
    assert code == 0, err
    assert needle in text and "\x1b" not in text


def test_a_drop_past_the_bound_is_refused_and_writes_nothing(recorded, tmp_path, capsys):
    bundle, _, _ = recorded
    out = tmp_path / "refused.onnx"
    argv = ["export", str(bundle), "--format", "onnx-int8", "--out", str(out)]
    code, _, err = run_cli([*argv, "--max-drop", "-100"], capsys)
    assert code == 2
    assert "the int8 model loses" in err and "--max-drop -100): not written" in err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_calibration_folder_and_check_data_for_a_bundle_without_data(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "plain.safetensors", classes=CLASSES)
    data = write_image_folder(tmp_path / "data", per_class=4)
    out = tmp_path / "plain.int8.onnx"
    base = ["export", str(bundle), "--format", "onnx-int8", "--max-drop", "100"]
    code, _, err = run_cli(base, capsys)
    assert code == 2 and "no pictures to calibrate" in err and "--calibration DIR" in err
    code, _, err = run_cli([*base, "--calibration", str(data / "train")], capsys)
    assert code == 2 and "no labelled test set" in err and "--check-data" in err
    code, _, err = run_cli([*base, "--calibration", str(tmp_path / "nowhere")], capsys)
    assert code == 2 and "not one" in err
    assert not out.exists()
    argv = [*base, "--calibration", str(data / "train"), "--check-data", str(data)]
    code, text, err = run_cli(argv, capsys)
    assert code == 0, err
    assert "calibrated on 12 pictures from the folder" in text
    assert "checked on 6 test pictures" in text and out.is_file()


def test_check_data_may_be_a_table_with_its_own_columns(tmp_path, capsys):
    """--check-data reads a labels table with the same table flags as train and evaluate."""
    bundle = make_tiny_bundle(tmp_path / "plain.safetensors", classes=CLASSES)
    data = write_image_folder(tmp_path / "data", per_class=4)
    rows = ["picture,kind,part"] + [
        f"{p.relative_to(data).as_posix()},{p.parent.name},{p.parts[-3]}"
        for p in sorted(data.rglob("*.png"))
    ]
    (data / "pictures.csv").write_text("\n".join(rows) + "\n")
    out = tmp_path / "plain.int8.onnx"
    base = ["export", str(bundle), "--format", "onnx-int8", "--max-drop", "100", "--out",
            str(out), "--calibration", str(data / "train"), "--check-data",
            str(data / "pictures.csv")]  # fmt: skip
    code, _, err = run_cli(base, capsys)  # the default column names are not there
    assert code == 2 and "Traceback" not in err and not out.exists()
    flags = ["--file-column", "picture", "--label-column", "kind", "--split-column", "part"]
    code, text, err = run_cli([*base, *flags], capsys)
    assert code == 0, err
    assert "checked on 6 test pictures of" in text and "pictures.csv (test split)" in text
    # Without --check-data the flags would have nothing to say.
    code, _, err = run_cli(["export", str(bundle), "--format", "onnx-int8", *flags[:2]], capsys)
    assert code == 2 and "--file-column says how --check-data is read" in err


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--max-drop", "1"], "--max-drop applies to --format onnx-int8 only"),
        (["--calibration", "x"], "--calibration applies to --format onnx-int8 only"),
        (["--label-column", "kind"], "--label-column applies to --format onnx-int8 only"),
        (["--format", "onnx-int8", "--max-drop", "500"], "500"),
    ],
)
def test_int8_options_are_checked(tiny_bundle, capsys, argv, needle):
    code, _, err = run_cli(["export", str(tiny_bundle), *argv], capsys)
    assert code == 2 and needle in err


@pytest.mark.slow
def test_bundled_model_int8_keeps_its_accuracy_on_the_mirror(
    shared_archive, tmp_path, capsys, monkeypatch
):
    """The bundled model, calibrated on its recorded CIFAR-10 training split (the mirror,
    recorded relative to the repository) and checked on all 10,000 test pictures, within
    the default bound of one point."""
    monkeypatch.chdir(Path(__file__).resolve().parents[1])
    out = tmp_path / "default.int8.onnx"
    code, text, err = run_cli(["export", "--format", "onnx-int8", "--out", str(out)], capsys)
    assert code == 0, err
    check = json.loads(_props(out)["quantization"])["check"]
    assert check["test_images"] == 10000 and check["agreement_images"] == 1000
    assert check["accuracy_change_points"] >= -1.0 and check["top1_agree"] >= 950
    assert "checked on 10000 test pictures" in text
