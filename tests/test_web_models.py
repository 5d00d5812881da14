"""Several models in one server (``serve --model NAME=PATH``), their versions, hot reload
and memory costs, through the test client (tests/test_web_reload_server.py: a real
multi-worker server under load)."""

from __future__ import annotations

import hashlib
import io
import re
import time
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_bundle, run_cli
from PIL import Image

from imageclf.errors import UserInputError
from imageclf.web import create_app
from imageclf.web.extensions import get_service
from imageclf.web.keys import add_key
from imageclf.web.models import DEFAULT_NAME, ModelSpec, parse_model_specs
from imageclf.web.reload import ModelMemoryError, request_reload


def png(colour=(200, 30, 30)) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(np.full((32, 32, 3), colour, np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def replace(path: Path, data: bytes) -> None:
    """Swap a model file atomically, as a deploy should (a worker never reads half)."""
    staged = path.with_name(path.name + ".new")
    staged.write_bytes(data)
    staged.replace(path)


def make_app(*specs: str, **config):
    config.setdefault("IMAGECLF_RELOAD_POLL_S", 0)  # these tests reload when they ask
    return create_app(
        models=parse_model_specs(specs), TESTING=True, IMAGECLF_MODEL_LOADING="eager", **config
    )


def predict(client, path="/api/v1/predict", **kw):
    return client.post(path, data={"file": (io.BytesIO(png()), "x.png")}, **kw)


@pytest.fixture()
def files(tmp_path):
    """Two versions of one model (other weights, same classes), one with other classes."""
    live = make_tiny_bundle(tmp_path / "live.safetensors")
    other_version = make_tiny_bundle(tmp_path / "v2.safetensors", seed=1)
    other_classes = make_tiny_bundle(tmp_path / "pets.safetensors", classes=["cat", "dog"])
    return live, other_version, other_classes


def version_of(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


# ---------------------------------------------------------------- names
def test_model_specs(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "My Cats.safetensors")
    assert parse_model_specs([]) == [ModelSpec(DEFAULT_NAME, None)]
    assert parse_model_specs([str(bundle)]) == [ModelSpec("my-cats", bundle)]
    specs = parse_model_specs(["a=x.onnx", "b_2=y.safetensors"])
    assert [(s.name, str(s.path)) for s in specs] == [("a", "x.onnx"), ("b_2", "y.safetensors")]
    for bad, message in [
        (["Big=x"], "bad model name"),
        (["a" * 33 + "=x"], "bad model name"),
        (["a=x", "a=y"], "given twice"),
        (["a="], "no file"),
    ]:
        with pytest.raises(UserInputError, match=message):
            parse_model_specs(bad)


# ---------------------------------------------------------------- routes
def test_models_are_listed_and_each_answers_by_name(files):
    live, _, pets = files
    client = make_app(f"main={live}", f"pets={pets}").test_client()
    listing = client.get("/api/v1/models").json
    assert listing["default"] == "main"
    main, second = listing["models"]
    assert (main["served_as"], main["default"], second["served_as"]) == ("main", True, "pets")
    assert main["version"] == version_of(live) and second["version"] == version_of(pets)
    assert second["classes"] == ["cat", "dog"] and second["input_size"] == 32
    assert main["metrics"]["test"]["accuracy"] == 0.1
    memory = main["memory"]
    assert memory["parameters_mb"] > 0 and memory["working_mb"] > 0
    assert memory["total_mb"] == pytest.approx(memory["parameters_mb"] + memory["working_mb"], 0.01)

    default = predict(client)  # today's route: the default model
    assert default.status_code == 200
    assert default.headers["X-Model-Version"] == version_of(live)
    assert default.headers["X-Model-Name"] == "main"
    assert default.json["model"]["version"] == version_of(live)
    named = predict(client, "/api/v1/models/pets/predict")
    assert named.status_code == 200 and named.headers["X-Model-Version"] == version_of(pets)
    assert named.json["model"]["served_as"] == "pets"
    assert {t["label"] for t in named.json["predictions"][0]["top"]} == {"cat", "dog"}
    assert client.get("/api/v1/model").headers["X-Model-Version"] == version_of(live)

    for path in ("/api/v1/models/nope/predict", "/api/v1/models/nope/reload"):
        missing = predict(client, path)
        assert (
            missing.status_code == 404 and "GET /api/v1/models" in missing.json["error"]["message"]
        )


def test_page_picker_without_javascript(files):
    live, _, pets = files
    client = make_app(f"main={live}", f"pets={pets}").test_client()
    page = client.get("/").text
    assert '<select name="model"' in page  # inside the upload form: posted with the file
    form = page[page.index('id="upload-form"') : page.index("</form>")]
    assert re.findall(r'<option value="(\w+)"', form) == ["main", "pets"]
    answer = client.post("/predict", data={"file": (io.BytesIO(png()), "x.png"), "model": "pets"})
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == version_of(pets)
    assert f"served as pets, version <code>{version_of(pets)}</code>" in answer.text
    default = client.post("/predict", data={"file": (io.BytesIO(png()), "x.png")})
    assert f"version <code>{version_of(live)}</code>" in default.text
    bad = client.post("/predict", data={"file": (io.BytesIO(png()), "x.png"), "model": "zzz"})
    assert bad.status_code == 400 and "unknown model" in bad.text

    single = make_app(str(live)).test_client()
    assert '<select name="model"' not in single.get("/").text


# ---------------------------------------------------------------- reload
def test_reload_switches_refuses_and_keeps_serving(files):
    live, v2, pets = files
    app = make_app(f"main={live}")
    client = app.test_client()
    first = version_of(live)
    assert client.post("/api/v1/models/main/reload").json["outcome"] == "unchanged"

    in_flight = get_service(app).current()  # a request that started before the reload
    replace(live, v2.read_bytes())
    switched = client.post("/api/v1/models/main/reload")
    assert switched.status_code == 200, switched.json
    assert switched.json["outcome"] == "switched" and switched.json["version"] == version_of(v2)
    assert predict(client).headers["X-Model-Version"] == version_of(v2)
    (old,) = get_service(app).classify(
        [_upload()], top_k=1, model=in_flight
    )  # finishes on the version it started with
    assert old.version == first

    replace(live, b"not a model")
    broken = client.post("/api/v1/models/main/reload")
    assert broken.status_code == 409 and broken.json["outcome"] == "failed"
    assert str(live) in broken.json["reason"] and "imageclf-models-" not in broken.json["reason"]
    assert broken.json["version"] == version_of(v2)  # the old one still serves
    assert predict(client).headers["X-Model-Version"] == version_of(v2)

    replace(live, pets.read_bytes())
    refused = client.post("/api/v1/models/main/reload")
    assert refused.status_code == 409 and refused.json["outcome"] == "refused"
    assert "--allow-class-change" in refused.json["reason"]

    metrics = client.get("/metrics").text
    for outcome in ("switched", "failed", "refused"):
        assert f'imageclf_model_reload_total{{model="main",outcome="{outcome}"}} 1.0' in metrics


def _upload():
    from imageclf.web.uploads import Upload

    return Upload("x.png", png())


def test_class_change_allowed_when_asked(files):
    live, _, pets = files
    client = make_app(f"main={live}", IMAGECLF_ALLOW_CLASS_CHANGE=True).test_client()
    replace(live, pets.read_bytes())
    answer = client.post("/api/v1/models/main/reload")
    assert answer.json["outcome"] == "switched"
    assert client.get("/api/v1/model").json["classes"] == ["cat", "dog"]


def test_who_may_reload(files, tmp_path):
    live, _, _ = files
    client = make_app(f"main={live}").test_client()
    remote = {"REMOTE_ADDR": "10.1.2.3"}
    refused = client.post("/api/v1/models/main/reload", environ_base=remote)
    assert refused.status_code == 403 and "API key" in refused.json["error"]["message"]
    closed = make_app(f"main={live}", IMAGECLF_ALLOW_RELOAD="off").test_client()
    assert closed.post("/api/v1/models/main/reload").status_code == 403
    behind_proxy = make_app(f"main={live}", IMAGECLF_PROXY_HOPS=1).test_client()
    assert behind_proxy.post("/api/v1/models/main/reload").status_code == 403

    keys = tmp_path / "keys.txt"
    secret = add_key(keys, "deployer")
    guarded = make_app(f"main={live}", IMAGECLF_API_KEYS=str(keys)).test_client()
    assert guarded.post("/api/v1/models/main/reload", environ_base=remote).status_code == 401
    allowed = guarded.post(
        "/api/v1/models/main/reload",
        environ_base=remote,
        headers={"Authorization": f"Bearer {secret}"},
    )
    assert allowed.status_code == 200 and allowed.json["outcome"] == "unchanged"


def test_watcher_sees_a_changed_file_and_sighup(files):
    live, v2, _ = files
    app = make_app(f"main={live}", IMAGECLF_RELOAD_POLL_S=0.05)
    client = app.test_client()
    replace(live, v2.read_bytes())
    deadline = time.monotonic() + 20
    while predict(client).headers["X-Model-Version"] != version_of(v2):
        assert time.monotonic() < deadline, "the watcher never switched"
        time.sleep(0.05)

    manual = make_app(f"main={live}")  # polling off: only SIGHUP (the flag) or the API
    service = get_service(manual)
    replace(live, make_tiny_bundle(live.with_name("v3.safetensors"), seed=3).read_bytes())
    service.watcher.tick()
    assert service.version == version_of(v2)
    request_reload()
    service.watcher.tick()
    assert service.version == version_of(live)


def test_version_is_the_hash_of_the_bytes_loaded(files, monkeypatch):
    """The file replaced right after it was read: the version names what was loaded."""
    live, v2, _ = files
    original = live.read_bytes()
    real_read = Path.read_bytes

    def read_then_replace(path):
        data = real_read(path)
        if path == live:
            replace(live, v2.read_bytes())
        return data

    monkeypatch.setattr(Path, "read_bytes", read_then_replace)
    app = make_app(f"main={live}")
    assert get_service(app).version == hashlib.sha256(original).hexdigest()[:16]


# ---------------------------------------------------------------- memory
def test_memory_limit(files, tmp_path, capsys, keep_torch_threads):
    live, _, _ = files
    with pytest.raises(ModelMemoryError, match="over --max-model-memory"):
        make_app(f"a={live}", f"b={live}", IMAGECLF_MAX_MODEL_MEMORY_MB=10)
    argv = ["serve", "--model", f"a={live}", "--model", f"b={live}", "--max-model-memory", "10"]
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and "over --max-model-memory 10 MB" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err

    client = make_app(f"main={live}", IMAGECLF_MAX_MODEL_MEMORY_MB=9.5).test_client()
    bigger = make_tiny_bundle(tmp_path / "bigger.safetensors", architecture="seed-b")
    replace(live, bigger.read_bytes())
    answer = client.post("/api/v1/models/main/reload")
    assert answer.status_code == 409 and answer.json["outcome"] == "refused"
    assert "--max-model-memory" in answer.json["reason"]


def test_openapi_names_the_models(files):
    live, _, pets = files
    spec = make_app(f"main={live}", f"pets={pets}").test_client().get("/api/v1/openapi.json").json
    reload = spec["paths"]["/api/v1/models/{name}/reload"]["post"]
    assert reload["parameters"][0]["schema"]["enum"] == ["main", "pets"]
    assert {"200", "403", "404", "409"} <= set(reload["responses"])
    named = spec["paths"]["/api/v1/models/{name}/predict"]["post"]
    assert "404" in named["responses"] and "X-Model-Version" in named["responses"]["200"]["headers"]
    assert "ModelList" in spec["components"]["schemas"]


def test_openapi_documents_threshold_when_a_second_model_is_multilabel(files, tmp_path):
    """The predict routes share their request schemas: a multi-label model served beside
    a single-label default makes ``threshold`` part of them (the default refuses it, 400),
    and without one it is absent."""
    from helpers import make_tiny_multilabel_bundle

    live, _, _ = files
    tags = make_tiny_multilabel_bundle(tmp_path / "tags.safetensors", ["a", "b"], [0.5, 0.5])

    def request_fields(app) -> dict:
        spec = app.test_client().get("/api/v1/openapi.json").json
        return spec["components"]["schemas"]["PredictRequest"]["properties"]

    assert "threshold" not in request_fields(make_app(f"main={live}"))
    client = make_app(f"main={live}", f"tags={tags}").test_client()
    assert "threshold" in request_fields(client.application)
    asked = {"file": (io.BytesIO(png()), "x.png"), "threshold": "0.4"}
    assert client.post("/api/v1/models/tags/predict", data=asked).status_code == 200
    asked = {"file": (io.BytesIO(png()), "x.png"), "threshold": "0.4"}
    assert client.post("/api/v1/predict", data=asked).status_code == 400


def test_onnx_model_is_served_and_reloaded(files, tmp_path):
    pytest.importorskip("onnxruntime", reason="needs the onnx extra")
    from imageclf.prediction.export import export_onnx

    live, v2, _ = files
    served = export_onnx(live, tmp_path / "served.onnx").path
    newer = export_onnx(v2, tmp_path / "newer.onnx").path
    client = make_app(f"main={live}", f"edge={served}").test_client()
    edge = client.get("/api/v1/models").json["models"][1]
    assert edge["backend"] == "onnxruntime" and edge["version"] == version_of(served)
    assert edge["memory"]["parameters_mb"] == pytest.approx(served.stat().st_size / 2**20, 0.01)
    replace(served, newer.read_bytes())
    assert client.post("/api/v1/models/edge/reload").json["outcome"] == "switched"
    answer = predict(client, "/api/v1/models/edge/predict")
    assert answer.status_code == 200 and answer.headers["X-Model-Version"] == version_of(newer)


def test_memory_counts_the_frozen_traces_copies_of_the_weights(files):
    from imageclf import Predictor
    from imageclf.web.models import measure_cost, warm

    live, _, _ = files
    predictor = Predictor.load(live)
    warm(predictor)  # as a server loads a model: the traces are made before it is measured
    net = predictor.engine.inference_model
    model_bytes = sum(t.numel() * t.element_size() for t in (*net.parameters(), *net.buffers()))
    bundle_bytes = sum(
        t.numel() * t.element_size()
        for t in (*predictor.model.parameters(), *predictor.model.buffers())
    )
    cost = measure_cost(predictor, 1, live.stat().st_size)
    # The bundle's module (Grad-CAM), the folded one, its trace's copy and its oneDNN
    # Graph trace's for one picture (traced.py).
    assert net.single is not None
    assert cost.parameter_bytes == bundle_bytes + 3 * model_bytes
    assert cost.working_bytes > 0  # the layer sizes were measured on the eager layers


def test_a_loaded_model_is_traced_before_its_first_request(tmp_path):
    from helpers import SURE, gated_bundle

    from imageclf.web.models import load_checked

    path = gated_bundle(tmp_path / "gated.safetensors", {"dog": [SURE]})
    predictor = load_checked("m", path, "v1", batch=1).predictor
    assert predictor.engine.inference_model.graph is not None
    assert predictor.gate.net.graph is not None  # the gate's too: the probe is a photo
