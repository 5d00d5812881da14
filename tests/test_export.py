"""ONNX export (``imageclf export``) and serving the exported file on onnxruntime.

Needs the onnx extra (skips locally without it; CI installs every extra).
"""

from __future__ import annotations

import io
import json
import sys

import numpy as np
import pytest
import torch
from helpers import make_tiny_bundle, png_bytes

from imageclf.cli import main
from imageclf.errors import BundleError, UserInputError
from imageclf.models.registry import names
from imageclf.prediction.export import (
    ExportError,
    _PixelsToLogits,
    export_onnx,
    require_onnx_extra,
    verification_images,
)
from imageclf.prediction.inference import Normalizer, predict_logits
from imageclf.prediction.predictor import Predictor

onnx = pytest.importorskip("onnx", reason="needs the onnx extra: pip install 'imageclf[onnx]'")
pytest.importorskip("onnxscript", reason="needs the onnx extra")
pytest.importorskip("onnxruntime", reason="needs the onnx extra")

from imageclf.prediction.onnx_backend import OnnxBackend  # noqa: E402


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _props(path) -> dict[str, str]:
    return {p.key: p.value for p in onnx.load(str(path)).metadata_props}


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """A tiny bundle (with a temperature) and its ONNX export."""
    folder = tmp_path_factory.mktemp("export")
    bundle = make_tiny_bundle(folder / "tiny.safetensors")
    result = export_onnx(bundle, folder / "tiny.onnx")
    return bundle, result


def test_export_writes_one_self_contained_file_with_the_metadata(exported):
    bundle, result = exported
    assert result.path.name == "tiny.onnx" and result.path.is_file()
    # No external data file and no leftover partial file beside it.
    assert sorted(p.name for p in result.path.parent.iterdir()) == ["tiny.onnx", "tiny.safetensors"]
    model = onnx.load(str(result.path), load_external_data=False)
    assert all(init.data_location != onnx.TensorProto.EXTERNAL for init in model.graph.initializer)
    props = _props(result.path)
    meta = json.loads(props["imageclf"])
    assert meta == Predictor.load(bundle).metadata
    assert json.loads(props["classes"]) == [f"class{i}" for i in range(10)]
    assert props["input_size"] == "32" and float(props["temperature"]) == 1.0
    assert json.loads(props["normalization"]) == meta["normalization"]
    (graph_input,) = model.graph.input
    dims = graph_input.type.tensor_type.shape.dim
    assert dims[0].dim_param and not dims[0].HasField("dim_value")  # dynamic batch
    assert [d.dim_value for d in dims[1:]] == [32, 32, 3]
    assert graph_input.type.tensor_type.elem_type == onnx.TensorProto.UINT8


def test_export_reports_its_parity_check(exported):
    _, result = exported
    assert result.images == 1000 and result.top1_agree == 1000
    assert result.limits == "limit 0.0001"
    assert 0 <= result.max_prob_diff <= 1e-4


@pytest.mark.parametrize("batch", [1, 3, 17])
def test_onnx_predictor_matches_torch_for_any_batch_size(exported, batch):
    bundle, result = exported
    torch_p, onnx_p = Predictor.load(bundle), Predictor.load(result.path)
    assert isinstance(onnx_p.engine, OnnxBackend) and not onnx_p.explainable
    images = verification_images(32, batch, seed=batch)
    expected = torch_p.predict_proba(images)
    got = onnx_p.predict_proba(images)
    assert got.shape == (batch, 10) and got.dtype == np.float32
    np.testing.assert_allclose(got, expected, atol=1e-5)
    np.testing.assert_allclose(got.sum(1), 1.0, atol=1e-5)


def test_onnx_predictor_refuses_gradcam_with_one_clear_message(exported):
    """The backend says it cannot explain; ``Predictor`` refuses, before decoding anything."""
    onnx_p = Predictor.load(exported[1].path)
    assert onnx_p.backend == "onnxruntime" and onnx_p.model is None
    with pytest.raises(UserInputError, match="Grad-CAM needs the PyTorch model's gradients"):
        onnx_p.gradcam(verification_images(32, 2))
    with pytest.raises(UserInputError, match="Grad-CAM needs the PyTorch model's gradients"):
        onnx_p.explain(b"not even an image")


def test_exporting_an_onnx_file_is_refused(exported):
    with pytest.raises(UserInputError, match="not an ONNX file"):
        export_onnx(exported[1].path)


def test_onnx_predictor_has_the_same_api_and_preprocessing(exported, tmp_path):
    bundle, result = exported
    torch_p, onnx_p = Predictor.load(bundle), Predictor.load(result.path)
    assert (onnx_p.name, onnx_p.classes, onnx_p.input_size) == (
        torch_p.name,
        torch_p.classes,
        torch_p.input_size,
    )
    # Bytes, a path and a large picture all go through the same decode and resize.
    (tmp_path / "big.png").write_bytes(png_bytes((10, 200, 90), size=(300, 200)))
    sources = [png_bytes(), tmp_path / "big.png", png_bytes((0, 0, 255), fmt="JPEG")]
    np.testing.assert_array_equal(onnx_p.preprocess(sources), torch_p.preprocess(sources))
    for want, got in zip(torch_p.predict(sources, 4), onnx_p.predict(sources, 4), strict=True):
        assert [label for label, _ in got] == [label for label, _ in want]
        np.testing.assert_allclose([p for _, p in got], [p for _, p in want], atol=1e-5)


def test_onnx_tta_matches_torch_tta(exported):
    bundle, result = exported
    images = verification_images(32, 8, seed=3)
    expected = Predictor.load(bundle).predict_proba(images, tta=True)
    plain = Predictor.load(result.path).predict_proba(images)
    got = Predictor.load(result.path).predict_proba(images, tta=True)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert np.abs(got - plain).max() > 1e-3  # the views really changed something


def test_temperature_is_carried_and_applied(tmp_path):
    """A calibrated bundle's temperature goes into the file and divides the logits on
    onnxruntime exactly as on torch (with and without TTA)."""
    bundle = make_tiny_bundle(tmp_path / "t.safetensors")
    from imageclf.models.bundle import load_bundle, save_bundle

    loaded = load_bundle(bundle)
    hot = save_bundle(
        tmp_path / "hot.safetensors",
        loaded.state_dict,
        {**loaded.metadata, "calibration": {"temperature": 2.5}},
    )
    result = export_onnx(hot, tmp_path / "hot.onnx")
    assert float(_props(result.path)["temperature"]) == 2.5
    assert json.loads(_props(result.path)["imageclf"])["calibration"] == {"temperature": 2.5}
    predictor, reference = Predictor.load(result.path), Predictor.load(hot)
    assert predictor.temperature == reference.temperature == 2.5
    images = verification_images(32, 5)
    norm = loaded.metadata["normalization"]
    normalizer = Normalizer(norm["mean"], norm["std"])
    logits = predict_logits(reference.model, torch.from_numpy(images), normalizer)
    expected = torch.softmax(logits / 2.5, dim=1).numpy()
    np.testing.assert_allclose(predictor.predict_proba(images), expected, atol=1e-5)
    for tta in (False, True):
        np.testing.assert_allclose(
            predictor.log_probs(images, tta=tta), reference.log_probs(images, tta=tta), atol=1e-5
        )


def test_a_wrong_export_is_refused_and_leaves_no_file(tmp_path, monkeypatch):
    """If the graph does not reproduce the model, export fails loudly and writes nothing."""
    bundle = make_tiny_bundle(tmp_path / "tiny.safetensors")
    original = _PixelsToLogits.__init__

    def skewed(self, predictor):
        original(self, predictor)
        self.shift += 0.05  # a slightly wrong normalisation baked into the graph

    monkeypatch.setattr(_PixelsToLogits, "__init__", skewed)
    with pytest.raises(ExportError, match=r"top-1 agrees on \d+ of 1000 images"):
        export_onnx(bundle, tmp_path / "bad.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tiny.safetensors"]


def test_cli_export_prints_both_numbers(tmp_path, capsys):
    bundle = make_tiny_bundle(tmp_path / "tiny.safetensors")
    code, out, err = run(["export", str(bundle), "--format", "onnx"], capsys)
    assert code == 0, err
    assert "top-1 agrees on 1000/1000" in out and "max probability difference" in out
    assert (tmp_path / "tiny.onnx").is_file()  # default: beside the bundle


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--out", "model.bin"], "must end in .onnx"),
        (["--out", "/no/such/folder/m.onnx"], "output folder does not exist"),
        (["--opset", "7"], "cannot export to opset 7"),
        (["--format", "tflite"], "tflite"),
    ],
)
def test_cli_export_bad_options_exit_2(tmp_path, capsys, argv, needle):
    bundle = make_tiny_bundle(tmp_path / "tiny.safetensors")
    code, _, err = run(["export", str(bundle), *argv], capsys)
    assert code == 2 and needle in err and "Traceback" not in err


@pytest.mark.parametrize("module", ["onnx", "onnxscript", "onnxruntime"])
def test_export_without_the_extra_is_one_line_naming_it(tmp_path, capsys, monkeypatch, module):
    monkeypatch.setitem(sys.modules, module, None)  # import now raises ImportError
    with pytest.raises(UserInputError, match=r"imageclf\[onnx\]"):
        require_onnx_extra()
    code, _, err = run(["export", str(tmp_path / "x.safetensors")], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert module in lines[0] and "imageclf[onnx]" in lines[0]


def test_loading_onnx_without_onnxruntime_names_the_extra(exported, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)
    with pytest.raises(UserInputError, match=r"imageclf\[onnx\]"):
        Predictor.load(exported[1].path)


def test_bad_onnx_files_are_clear_errors(tmp_path, exported):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf at all" * 10)
    with pytest.raises(BundleError, match="not a readable ONNX model"):
        Predictor.load(garbage)
    with pytest.raises(BundleError, match="not found"):
        Predictor.load(tmp_path / "missing.onnx")
    # A valid ONNX graph that imageclf did not write: no metadata to serve it with.
    foreign = onnx.load(str(exported[1].path))
    del foreign.metadata_props[:]
    onnx.save_model(foreign, str(tmp_path / "foreign.onnx"))
    with pytest.raises(BundleError, match="not written by 'imageclf export'"):
        Predictor.load(tmp_path / "foreign.onnx")


@pytest.mark.parametrize(
    ("metadata_json", "needle"),
    [
        ('{"classes": NaN}', "holds NaN, which is not a JSON number"),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ("{", "is not valid JSON"),
    ],
    ids=["nan", "100k-levels", "syntax"],
)
def test_onnx_metadata_is_parsed_like_a_bundles(tmp_path, exported, metadata_json, needle):
    """The same rules as a bundle's metadata (``fileio.parse_json``), one BundleError line."""
    model = onnx.load(str(exported[1].path))
    for prop in model.metadata_props:
        if prop.key == "imageclf":
            prop.value = metadata_json
    onnx.save_model(model, str(tmp_path / "hostile.onnx"))
    with pytest.raises(BundleError, match=needle) as caught:
        Predictor.load(tmp_path / "hostile.onnx")
    assert "\n" not in str(caught.value)


def test_predict_cli_accepts_an_onnx_model(exported, tmp_path, capsys):
    (tmp_path / "a.png").write_bytes(png_bytes())
    code, out, err = run(["-q", "predict", str(exported[1].path), str(tmp_path / "a.png")], capsys)
    assert code == 0, err
    torch_top = Predictor.load(exported[0]).predict(tmp_path / "a.png", 1)[0][0][0]
    assert torch_top in out
    code, _, err = run(
        ["-q", "predict", str(exported[1].path), str(tmp_path / "a.png"), "--explain", "x"],
        capsys,
    )
    assert code == 2 and "ONNX" in err


# ---------------------------------------------------------------- the web app on ONNX
@pytest.fixture(scope="module")
def onnx_client(exported):
    from imageclf.web import create_app

    app = create_app(exported[1].path, IMAGECLF_MODEL_LOADING="eager", TESTING=True)
    return app.test_client()


def test_api_serves_the_onnx_model(onnx_client, exported):
    response = onnx_client.post(
        "/api/v1/predict",
        data={"file": (io.BytesIO(png_bytes()), "a.png"), "explain": "true"},
    )
    assert response.status_code == 200, response.json
    (item,) = response.json["predictions"]
    assert item["explanation"] is None  # asked for, not available on onnxruntime
    expected = Predictor.load(exported[0]).predict(png_bytes(), 5)[0]
    assert [t["label"] for t in item["top"]] == [label for label, _ in expected]
    np.testing.assert_allclose(
        [t["probability"] for t in item["top"]], [p for _, p in expected], atol=1e-5
    )
    info = onnx_client.get("/api/v1/model").json
    assert info["backend"] == "onnxruntime" and info["explain"] is False


def test_result_page_says_gradcam_is_unavailable_for_onnx(onnx_client):
    response = onnx_client.post("/predict", data={"file": (io.BytesIO(png_bytes()), "a.png")})
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="explain-note"' in html and "unavailable for ONNX models" in html
    assert 'id="overlay"' not in html


@pytest.mark.slow
def test_bundled_model_exports_and_agrees(tmp_path, capsys):
    code, out, err = run(["export", "--out", str(tmp_path / "default.onnx")], capsys)
    assert code == 0, err
    assert "top-1 agrees on 1000/1000" in out
    diff = float(out.split("max probability difference ")[1].split()[0])
    assert diff <= 1e-4
    props = _props(tmp_path / "default.onnx")
    # the ImageNet gate stays behind (prediction/gate.py): the file is the model alone
    alone = {k: v for k, v in Predictor.load().metadata.items() if k != "gate"}
    assert json.loads(props["imageclf"]) == alone


@pytest.mark.slow
@pytest.mark.parametrize("architecture", names())
def test_every_architecture_exports_and_agrees(tmp_path, architecture):
    bundle = make_tiny_bundle(tmp_path / "m.safetensors", architecture=architecture)
    result = export_onnx(bundle, tmp_path / "m.onnx")
    assert result.top1_agree == result.images == 1000 and result.max_prob_diff <= 1e-4


def test_imageclf_serve_runs_an_onnx_file(exported, tmp_path):
    """``imageclf serve --model model.onnx``: gunicorn, two workers, onnxruntime in each."""
    from realserver import serving

    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes() + b"\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    expected = Predictor.load(exported[0]).predict(png_bytes(), 5)[0]
    with serving(exported[1].path, tmp_path, workers=2) as server:
        for _ in range(4):
            status, _, data = server.request("POST", "/api/v1/predict", body, headers)
            assert status == 200, data
            top = json.loads(data)["predictions"][0]["top"]
            assert [t["label"] for t in top] == [label for label, _ in expected]
        status, _, data = server.request("GET", "/api/v1/model")
        assert json.loads(data)["backend"] == "onnxruntime"
        status, _, html = server.request("POST", "/predict", body, headers)
        assert status == 200 and b"unavailable for ONNX models" in html
    assert "Traceback" not in server.text()
    assert server.process.returncode == 0


@pytest.mark.slow
def test_onnx_workers_end_without_aborting(tmp_path):
    """onnxruntime's thread pools threw from C++ destructors when a worker that had run
    threaded passes exited ("terminate called after throwing an instance of
    'std::system_error'", SIGABRT at every recycle and shutdown). The bundled model is
    big enough to use them; the tiny one is not."""
    from concurrent.futures import ThreadPoolExecutor

    from realserver import serving

    side = Predictor.load().input_size
    model = export_onnx(
        None, tmp_path / "bundled.onnx", verify_images=np.zeros((2, side, side, 3), np.uint8)
    )
    body = (
        b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
        b"Content-Type: image/png\r\n\r\n" + png_bytes(size=(300, 200)) + b"\r\n--b--\r\n"
    )
    headers = {"Content-Type": "multipart/form-data; boundary=b"}
    with serving(model.path, tmp_path / "srv", workers=2) as server:
        with ThreadPoolExecutor(8) as pool:
            answers = list(pool.map(
                lambda _: server.request("POST", "/api/v1/predict", body, headers)[0], range(16)
            ))  # fmt: skip
        assert answers == [200] * 16
    assert server.process.returncode == 0
    assert "terminate called" not in server.text() and "SIGABRT" not in server.text()
