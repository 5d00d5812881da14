"""Every route of the web app through Flask's test client: pages, API, probes, metrics."""

from __future__ import annotations

import base64
import io
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import decode_data_url, make_tiny_bundle, png_bytes
from PIL import Image

from imageclf.errors import UserInputError
from imageclf.web import SECURITY_HEADERS, create_app
from imageclf.web.extensions import get_service
from imageclf.web.server import (
    HEADER_TIMEOUT_S,
    gunicorn_options,
    limits_from_env,
    threads_per_worker,
)

# CIFAR-10's names, so the shipped example pictures belong to the served model's classes.
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    # Calibrated with threshold 0: a random model is never "unsure", so pages show the
    # confident layout; the unsure notice has its own tests below.
    return make_tiny_bundle(
        tmp_path_factory.mktemp("web-app") / "tiny.safetensors",
        classes=CLASSES,
        calibration={"temperature": 1.0, "threshold": 0.0},
    )


@pytest.fixture(scope="module")
def app(bundle):
    return create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager")


@pytest.fixture
def client(app):
    return app.test_client()


def upload(data: bytes, name: str = "image.png", field: str = "file", **fields):
    return {field: (io.BytesIO(data), name), **fields}


# ---------------------------------------------------------------- pages
def test_index_page_shows_form_formats_limit_and_examples(client):
    response = client.get("/")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.mimetype == "text/html"
    assert 'action="/predict"' in html and 'enctype="multipart/form-data"' in html
    assert 'name="file"' in html and "accept=" in html
    assert "PNG, JPEG, GIF, WebP, BMP" in html and "5&nbsp;MB" in html
    assert 'data-max-bytes="5242880"' in html
    assert html.count('name="example"') >= 4
    assert "tiny-seed-a" in html and "10.0%" in html  # model name and test accuracy


def test_pages_have_no_inline_script_or_style(client):
    """The CSP forbids inline code: every script and style must come from /static, on
    every kind of page (form, result, form with an error, error page)."""
    pages = {
        "index": client.get("/"),
        "result": client.post("/predict", data=upload(png_bytes())),
        "form with error": client.post("/predict", data=upload(b"junk")),
        "error page": client.get("/nope"),
    }
    assert [r.status_code for r in pages.values()] == [200, 200, 400, 404]
    for name, response in pages.items():
        html = response.get_data(as_text=True)
        scripts = re.findall(r"<script\b[^>]*>", html)
        assert scripts, name  # the page does load its script...
        assert all(re.search(r'\bsrc="/static/', tag) for tag in scripts), (name, scripts)
        assert re.search(r'<link[^>]+rel="stylesheet"[^>]+href="/static/', html), name
        assert "<style" not in html and " style=" not in html, name
        assert not re.search(r"\son[a-z]+=", html), name  # no inline event handlers
        assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', html)
        assert len(assets) >= 2, name
        for path in assets:
            assert client.get(path).status_code == 200, (name, path)


def test_result_page_has_image_label_confidence_bars_model_and_link(client):
    response = client.post("/predict", data=upload(png_bytes()), content_type="multipart/form-data")
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    label = re.search(r'id="label">([^<]+)<', html).group(1)
    assert label in CLASSES
    assert re.search(r'id="confidence">\d+\.\d% confidence', html)
    assert html.count('<rect class="fill"') == 5
    assert "tiny-seed-a" in html and "10.0% accuracy" in html
    assert 'href="/"' in html and "Classify another" in html
    shown = decode_data_url(html, "uploaded")
    assert shown.format == "PNG" and shown.size == (32, 32)
    assert 'id="unsure"' not in html


def _bundle_app(tmp_path, **calibration):
    path = make_tiny_bundle(
        tmp_path / "m.safetensors", classes=CLASSES, calibration=calibration or None
    )
    return create_app(path, TESTING=True, IMAGECLF_MODEL_LOADING="eager")


@pytest.mark.parametrize(
    ("calibration", "unsure"),
    [({"temperature": 1.0, "threshold": 1.0}, True), ({}, True), ({"threshold": 0.0}, False)],
)
def test_unsure_answers_say_so_on_the_page_and_in_the_api(tmp_path, calibration, unsure):
    """Under the bundle's threshold (or 50% when it has none: a random 10-class model
    is far below) the page leads with "not sure" instead of a confident label, and the
    API says unsure; above it, neither does."""
    client = _bundle_app(tmp_path, **calibration).test_client()
    html = client.post("/predict", data=upload(_striped())).get_data(as_text=True)
    assert ('id="unsure"' in html) is unsure
    assert ("The model is not sure" in html) is unsure
    assert ("The model says" in html) is not unsure
    label = re.search(r'id="label">([^<]+)<', html).group(1)
    assert label in CLASSES  # the best guess is still named
    body = client.post("/api/v1/predict", data=upload(_striped())).get_json()
    assert body["predictions"][0]["unsure"] is unsure
    assert body["model"]["calibrated"] is ("threshold" in calibration)
    model = client.get("/api/v1/model").get_json()
    assert model["unsure_below"] == calibration.get("threshold", 0.5)


def test_result_page_shows_the_picture_at_the_model_input_size(client):
    """The page shows what the model saw: the upload squashed to its 32x32 input."""
    html = client.post("/predict", data=upload(_striped((96, 48)))).get_data(as_text=True)
    view = decode_data_url(html, "model-view")
    assert view.size == (32, 32)
    assert "What the model sees: 32×32 pixels" in html
    expected = np.asarray(
        Image.open(io.BytesIO(_striped((96, 48))))
        .convert("RGB")
        .resize((32, 32), Image.Resampling.BICUBIC)
    )
    # The model's own resize (antialiased); a different picture would differ by far more.
    assert np.abs(np.asarray(view.convert("RGB")).astype(int) - expected).mean() < 12


def _striped(size=(32, 32), seed=0) -> bytes:
    """A picture with structure (Grad-CAM of a flat colour is flat too)."""
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 60, (size[1], size[0], 3), dtype=np.uint8)
    pixels[:, size[0] // 2 :, 0] = 250
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def assert_same_picture(shown: np.ndarray, expected: np.ndarray) -> None:
    """Equal up to rounding: the app computes Grad-CAM for the batch in one pass, which
    may differ from a one-image pass in the last float bits; a heat value on the edge
    of a colour-map step then moves a pixel by a level or two (on an Intel Xeon: up
    to 2, and by 1 on 7% of one picture's values). Another picture's overlay differs by
    tens on most pixels."""
    difference = np.abs(shown.astype(int) - expected.astype(int))
    assert difference.max() <= 4 and difference.mean() < 0.25


def _expected_overlay(app, data: bytes, class_index: int) -> np.ndarray:
    from imageclf.imaging import open_image

    predictor = get_service(app).predictor()
    return np.asarray(predictor.explain(open_image(data), class_index=class_index).overlay)


def test_result_page_shows_gradcam_overlay_of_the_top_class(client, app):
    """The overlay is Grad-CAM of this picture for the class the page names: exactly what
    ``Predictor.explain`` gives, drawn at the picture's shape, not some other image."""
    data = _striped()
    html = client.post("/predict", data=upload(data)).get_data(as_text=True)
    label = re.search(r'id="label">([^<]+)<', html).group(1)
    overlay = np.asarray(decode_data_url(html, "overlay").convert("RGB"))
    expected = _expected_overlay(app, data, CLASSES.index(label))
    assert overlay.shape == expected.shape == (256, 256, 3)
    assert_same_picture(overlay, expected)
    shown = np.asarray(decode_data_url(html, "uploaded").convert("RGB"))
    assert not np.array_equal(overlay[::8, ::8], shown)  # a colour map on top, not the upload
    wide = _striped((64, 32), seed=1)  # a 2:1 picture gets a 2:1 overlay
    html = client.post("/predict", data=upload(wide)).get_data(as_text=True)
    assert decode_data_url(html, "overlay").size == (256, 128)


def test_result_page_without_explanations_when_turned_off(bundle):
    app = create_app(
        bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_EXPLAIN_PAGES=False
    )
    response = app.test_client().post("/predict", data=upload(png_bytes()))
    html = response.get_data(as_text=True)
    assert response.status_code == 200
    assert 'id="overlay"' not in html and 'id="label"' in html


def test_example_images_can_be_classified(client):
    html = client.get("/").get_data(as_text=True)
    name = re.search(r'name="example" value="([^"]+)"', html).group(1)
    response = client.post("/predict", data={"example": name})
    assert response.status_code == 200
    assert 'id="label"' in response.get_data(as_text=True)


def test_examples_come_from_the_served_models_classes(tmp_path):
    """A user's ants/bees model shows no CIFAR-10 airplane: no examples at all."""
    bundle = make_tiny_bundle(tmp_path / "ants.safetensors", classes=["ants", "bees"])
    app = create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager")
    client = app.test_client()
    html = client.get("/").get_data(as_text=True)
    assert 'name="example"' not in html and "Or try an example" not in html
    assert client.post("/predict", data={"example": "airplane"}).status_code == 400
    partial = make_tiny_bundle(tmp_path / "p.safetensors", classes=["cat", "horse", "zebra"])
    html = create_app(partial, TESTING=True, IMAGECLF_MODEL_LOADING="eager").test_client().get("/")
    found = re.findall(r'name="example" value="([^"]+)"', html.get_data(as_text=True))
    assert sorted(found) == ["cat", "horse"]


def test_unknown_example_is_400_html(client):
    response = client.post("/predict", data={"example": "../../etc/passwd"})
    assert response.status_code == 400
    assert response.mimetype == "text/html"
    assert "unknown example" in response.get_data(as_text=True)


def test_get_predict_redirects_to_form(client):
    response = client.get("/predict")
    assert response.status_code == 303
    assert response.headers["Location"].endswith("/")


@pytest.mark.parametrize(
    ("data", "status", "text"),
    [
        ({}, 400, "no image was uploaded"),
        (upload(b"", "empty.png"), 400, "empty"),
        (upload(b"%PDF-1.4 nope", "doc.pdf"), 415, "PNG, JPEG, GIF, WEBP, BMP"),
        (upload(png_bytes(size=(2000, 10))), 422, "aspect ratio"),
    ],
)
def test_page_errors_are_html_with_status_and_form(client, data, status, text):
    response = client.post("/predict", data=data, content_type="multipart/form-data")
    html = response.get_data(as_text=True)
    assert response.status_code == status
    assert response.mimetype == "text/html"
    assert text in html
    assert 'id="server-error"' in html and 'id="upload-form"' in html  # try again at once


def test_page_413_is_html(client):
    body = upload(b"\0" * (6 * 1024 * 1024), "big.png")
    response = client.post("/predict", data=body)
    assert response.status_code == 413
    assert response.mimetype == "text/html"
    assert "too large" in response.get_data(as_text=True)


def test_unknown_page_is_404_html(client):
    response = client.get("/nope/<script>")
    assert response.status_code == 404
    assert response.mimetype == "text/html"
    assert "<script>" not in response.get_data(as_text=True)


# ---------------------------------------------------------------- headers
@pytest.mark.parametrize("path", ["/", "/static/style.css", "/api/v1/model", "/nope", "/healthz"])
def test_security_headers_on_every_response(client, path):
    response = client.get(path)
    for name, value in SECURITY_HEADERS.items():
        assert response.headers.get(name) == value, (path, name)
    csp = response.headers["Content-Security-Policy"]
    assert "script-src 'self'" in csp and "unsafe-inline" not in csp


def test_dynamic_responses_are_not_cached(client):
    response = client.post("/predict", data=upload(png_bytes()))
    assert response.headers["Cache-Control"] == "no-store"


# ---------------------------------------------------------------- API
def test_api_predict_one_file(client):
    response = client.post("/api/v1/predict", data=upload(png_bytes(), "red.png"))
    body = response.get_json()
    assert response.status_code == 200
    assert body["model"]["name"] == "tiny-seed-a"
    assert body["model"]["test_accuracy"] == pytest.approx(0.1)
    assert body["elapsed_ms"] >= 0
    (prediction,) = body["predictions"]
    assert prediction["filename"] == "red.png"
    assert len(prediction["top"]) == 5
    probabilities = [t["probability"] for t in prediction["top"]]
    assert probabilities == sorted(probabilities, reverse=True)
    assert "explanation" not in prediction


def test_api_batch_is_one_forward_pass(client, app, monkeypatch):
    predictor = get_service(app).predictor()
    calls = []
    original = predictor.calibrated_logits

    def counting(batch, **kwargs):
        calls.append(batch.shape)
        return original(batch, **kwargs)

    monkeypatch.setattr(predictor, "calibrated_logits", counting)
    colors = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    data = {"files": [(io.BytesIO(png_bytes(c)), f"{i}.png") for i, c in enumerate(colors)]}
    response = client.post("/api/v1/predict", data=data)
    assert response.status_code == 200
    assert [p["filename"] for p in response.get_json()["predictions"]] == [
        "0.png",
        "1.png",
        "2.png",
    ]
    assert calls == [(3, 32, 32, 3)]


def test_api_batch_matches_single_predictions(client):
    images = [png_bytes((200, 10 * i, 30)) for i in range(4)]
    data = {"files": [(io.BytesIO(b), f"{i}.png") for i, b in enumerate(images)], "top_k": "10"}
    batch = client.post("/api/v1/predict", data=data).get_json()["predictions"]
    for image, together in zip(images, batch, strict=True):
        alone = client.post("/api/v1/predict", data=upload(image, top_k="10")).get_json()
        for a, b in zip(alone["predictions"][0]["top"], together["top"], strict=True):
            assert a["label"] == b["label"]
            assert a["probability"] == pytest.approx(b["probability"], abs=1e-5)


def test_api_64_files_allowed_65_refused(client):
    one = png_bytes()
    ok = {"files": [(io.BytesIO(one), f"{i}.png") for i in range(64)], "top_k": "1"}
    response = client.post("/api/v1/predict", data=ok)
    assert response.status_code == 200 and len(response.get_json()["predictions"]) == 64
    too_many = {"files": [(io.BytesIO(one), f"{i}.png") for i in range(65)]}
    response = client.post("/api/v1/predict", data=too_many)
    assert response.status_code == 400
    assert "at most 64" in response.get_json()["error"]["message"]


def test_api_bad_image_in_batch_names_it(client):
    data = {"files": [(io.BytesIO(png_bytes()), "ok.png"), (io.BytesIO(b"junk"), "bad.png")]}
    response = client.post("/api/v1/predict", data=data)
    assert response.status_code == 400
    assert "bad.png" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("top_k", ["abc", "0", "11", "-1", "1.5", " 3", "05", ""])
def test_api_bad_top_k_is_400_json(client, top_k):
    response = client.post("/api/v1/predict", data=upload(png_bytes(), top_k=top_k))
    assert response.status_code == 400
    assert "top_k" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("top_k", ["1", "3", "10"])
def test_api_top_k_in_range(client, top_k):
    response = client.post("/api/v1/predict", data=upload(png_bytes(), top_k=top_k))
    assert len(response.get_json()["predictions"][0]["top"]) == int(top_k)


def test_api_top_k_from_query_string(client):
    response = client.post("/api/v1/predict?top_k=2", data=upload(png_bytes()))
    assert len(response.get_json()["predictions"][0]["top"]) == 2


def test_api_explain_returns_each_images_own_gradcam(client, app):
    """Each explanation is that image's Grad-CAM for its top class, in upload order."""
    images = [_striped(seed=0), _striped(seed=5), png_bytes((10, 200, 30))]
    data = {"files": [(io.BytesIO(b), f"{i}.png") for i, b in enumerate(images)]}
    response = client.post("/api/v1/predict", data={**data, "explain": "true"})
    predictions = response.get_json()["predictions"]
    assert len(predictions) == 3
    overlays = []
    for image, prediction in zip(images, predictions, strict=True):
        picture = Image.open(io.BytesIO(base64.b64decode(prediction["explanation"])))
        assert picture.format == "PNG"
        top = CLASSES.index(prediction["top"][0]["label"])
        overlays.append(np.asarray(picture.convert("RGB")))
        assert_same_picture(overlays[-1], _expected_overlay(app, image, top))
    assert not np.array_equal(overlays[0], overlays[2])


def test_api_explain_is_bounded_per_request(client, app):
    """Grad-CAM costs a backward pass and a drawing per image: 16 at most per request."""
    limit = app.config["IMAGECLF_MAX_EXPLAIN_FILES"]
    files = [(io.BytesIO(png_bytes()), f"{i}.png") for i in range(limit + 1)]
    response = client.post("/api/v1/predict", data={"files": files, "explain": "true"})
    assert response.status_code == 400
    assert f"at most {limit} images" in response.get_json()["error"]["message"]
    files = [(io.BytesIO(png_bytes()), f"{i}.png") for i in range(limit + 1)]
    assert client.post("/api/v1/predict", data={"files": files}).status_code == 200


def test_api_bad_explain_is_400(client):
    response = client.post("/api/v1/predict", data=upload(png_bytes(), explain="maybe"))
    assert response.status_code == 400


def test_api_text_in_file_field_is_400(client):
    response = client.post("/api/v1/predict", data={"file": "not a file"})
    assert response.status_code == 400
    assert "must be a file upload" in response.get_json()["error"]["message"]


def test_api_json_body_is_400(client):
    response = client.post("/api/v1/predict", json={"file": "x"})
    assert response.status_code == 400
    assert response.is_json


def test_api_model(client):
    body = client.get("/api/v1/model").get_json()
    assert body["name"] == "tiny-seed-a"
    assert body["classes"] == CLASSES
    assert body["input_size"] == 32
    assert body["metrics"]["test"]["accuracy"] == pytest.approx(0.1)


def test_api_unknown_route_and_method_are_json(client):
    response = client.get("/api/v1/nope")
    assert response.status_code == 404 and response.is_json
    response = client.get("/api/v1/predict")
    assert response.status_code == 405 and response.is_json
    assert "POST" in response.headers["Allow"]


def test_openapi_document(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    assert spec["openapi"].startswith("3.")
    assert {"/api/v1/predict", "/api/v1/model", "/healthz", "/readyz", "/metrics"} <= set(
        spec["paths"]
    )
    request = spec["components"]["schemas"]["PredictRequest"]["properties"]
    assert request["top_k"]["maximum"] == 10
    assert request["files"]["maxItems"] == 64
    responses = spec["paths"]["/api/v1/predict"]["post"]["responses"]
    assert {"200", "400", "413", "415", "422", "503"} <= set(responses)


# ---------------------------------------------------------------- probes and metrics
def test_healthz_and_readyz(client):
    assert client.get("/healthz").get_json() == {"status": "ok"}
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.get_json()["model"] == "tiny-seed-a"


def test_a_process_that_ends_while_its_model_loads_exits_cleanly():
    """The loader is no daemon: a daemon thread caught inside torch at exit aborts the
    process (SIGABRT, "terminate called without an active exception")."""
    code = (
        "import torch\nfrom imageclf.web import create_app\ncreate_app()\n"
        "torch.nn.Conv2d(3, 32, 3)(torch.randn(32, 3, 128, 128))\n"  # torch's threads busy too
        "print('created')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "created", done.stderr[-2000:]
    assert "terminate called" not in done.stderr


# /metrics has its own file: test_web_metrics.py.


# ---------------------------------------------------------------- serve helpers
def test_threads_split_cores_between_workers():
    assert threads_per_worker(1, cores=8) == 8
    assert threads_per_worker(4, cores=8) == 2
    assert threads_per_worker(16, cores=8) == 1


def test_gunicorn_options():
    options = gunicorn_options("127.0.0.1", 8123, 3)
    assert options["bind"] == "127.0.0.1:8123"
    assert options["workers"] == 3 and options["max_requests"] > 0
    assert options["max_requests_jitter"] > 0 and options["timeout"] > 0
    assert gunicorn_options("::1", 80, 1)["bind"] == "[::1]:80"
    # slow clients cost a greenlet, not a worker; heads have a deadline; no shared socket
    assert options["worker_class"] == "imageclf.web.worker.DeadlineGeventWorker"
    assert options["keepalive"] == HEADER_TIMEOUT_S and options["worker_connections"] > 0
    assert options["control_socket_disable"] is True
    # access lines only when asked for (serve --access-log)
    assert options["accesslog"] is None
    assert gunicorn_options("127.0.0.1", 80, 1, access_log=True)["accesslog"] == "-"


def test_serve_limits_from_the_environment():
    env = {"IMAGECLF_DECODE_SECONDS": "2.5", "IMAGECLF_MAX_FILES": "8", "HOME": "/x"}
    assert limits_from_env(env) == {"IMAGECLF_DECODE_SECONDS": 2.5, "IMAGECLF_MAX_FILES": 8}
    for bad in ("soon", "0", "-3"):
        with pytest.raises(UserInputError, match="IMAGECLF_DECODE_SECONDS"):
            limits_from_env({"IMAGECLF_DECODE_SECONDS": bad})


@pytest.fixture
def keep_torch_threads():
    import torch

    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


@pytest.mark.parametrize("content", [None, b"not a model at all"])
def test_serve_refuses_missing_or_invalid_model(tmp_path, capsys, keep_torch_threads, content):
    from imageclf.cli import main

    model = tmp_path / "model.safetensors"
    if content is not None:
        model.write_bytes(content)
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model", str(model), "--port", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("imageclf: error:") and "\n" not in err
    assert str(model) in err


def test_max_requests_can_be_turned_off(monkeypatch):
    monkeypatch.setenv("IMAGECLF_MAX_REQUESTS", "0")
    options = gunicorn_options("127.0.0.1", 8000, 1)
    assert options["max_requests"] == 0 and options["max_requests_jitter"] == 0


def test_serve_without_bundled_model_is_a_clear_error(monkeypatch, capsys, keep_torch_threads):
    from imageclf.cli import main
    from imageclf.prediction import predictor as predict

    monkeypatch.setattr(predict.resources, "files", lambda _: Path("/nonexistent/imageclf"))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "bundled default model is missing" in err and "\n" not in err


@pytest.mark.parametrize(("familiar_above", "outside"), [(1e9, True), (-1e9, False), (None, False)])
def test_one_of_its_classes_is_a_separate_question_from_which_class(
    tmp_path, familiar_above, outside
):
    """Issue 26: "is this one of my classes?" (familiarity under the bundle's threshold)
    is asked apart from "which class?" (unsure), said plainly on the page and in the API,
    and never asked of bundles that predate the rule."""
    calibration = {"temperature": 1.0, "threshold": 0.0}
    if familiar_above is not None:
        calibration["familiar_above"] = familiar_above
    client = _bundle_app(tmp_path, **calibration).test_client()
    html = client.post("/predict", data=upload(_striped())).get_data(as_text=True)
    assert ('id="outside"' in html) is outside
    assert ("Probably not one of its 10 classes" in html) is outside
    assert 'id="unsure"' not in html  # threshold 0: never unsure which class
    assert "It knows 10 classes: airplane, automobile, bird" in html
    body = client.post("/api/v1/predict", data=upload(_striped())).get_json()
    assert body["predictions"][0]["outside"] is outside
    assert body["predictions"][0]["unsure"] is False
    assert body["model"]["class_count"] == 10
    assert body["model"]["familiar_above"] == familiar_above
    assert client.get("/api/v1/model").get_json()["familiar_flagged"] == 0.05


def test_several_pictures_on_the_page_give_one_list(client):
    """Issue 26: several photos dropped (or chosen) at once: one row per picture, in the
    order sent, each with its answer; no Grad-CAM (that is for one picture)."""
    colours = [(255, 0, 0), (0, 255, 0), (0, 0, 255)]
    data = {"file": [(io.BytesIO(png_bytes(c)), f"p{i}.png") for i, c in enumerate(colours)]}
    response = client.post("/predict", data=data)
    html = response.get_data(as_text=True)
    assert response.status_code == 200, html[:500]
    assert 'id="results"' in html and "looked at 3 pictures" in html
    assert html.count('class="result-row') == 3
    assert [m for m in re.findall(r'class="filename">([^<]+)<', html)] == [
        "p0.png",
        "p1.png",
        "p2.png",
    ]
    labels = re.findall(r'class="row-label">([^<]+)<', html)
    assert len(labels) == 3 and set(labels) <= set(CLASSES)
    assert 'id="overlay"' not in html
    assert "It knows 10 classes" in html


def test_the_page_takes_at_most_its_limit_of_pictures(client):
    from imageclf.web.pages import PAGE_MAX_FILES

    data = {"file": [(io.BytesIO(png_bytes()), f"{i}.png") for i in range(PAGE_MAX_FILES + 1)]}
    response = client.post("/predict", data=data)
    assert response.status_code == 400
    assert f"at most {PAGE_MAX_FILES}" in response.get_data(as_text=True)
    html = client.get("/").get_data(as_text=True)
    assert "multiple" in re.search(r'<input type="file"[^>]+>', html).group(0)
    assert f'data-max-files="{PAGE_MAX_FILES}"' in html
