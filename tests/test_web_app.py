"""Every route of the web app through Flask's test client: pages, API, probes, metrics."""

from __future__ import annotations

import base64
import io
import re
import sys
from pathlib import Path

import pytest
from helpers import make_tiny_bundle, png_bytes
from PIL import Image

from imageclf.web import SECURITY_HEADERS, create_app
from imageclf.web.server import gunicorn_options, threads_per_worker

# CIFAR-10's names, so the shipped example pictures belong to the served model's classes.
CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    return make_tiny_bundle(
        tmp_path_factory.mktemp("web-app") / "tiny.safetensors", classes=CLASSES
    )


@pytest.fixture(scope="module")
def app(bundle):
    return create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager")


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def no_gradcam(monkeypatch):
    """Pretend imageclf.gradcam is not installed (None in sys.modules: ImportError)."""
    monkeypatch.setitem(sys.modules, "imageclf.gradcam", None)


def upload(data: bytes, name: str = "image.png", field: str = "file", **fields):
    return {field: (io.BytesIO(data), name), **fields}


def decode_data_url(html: str, element_id: str) -> Image.Image:
    match = re.search(rf'id="{element_id}"[^>]*src="data:image/png;base64,([^"]+)"', html)
    assert match, f"no PNG data URL on #{element_id}"
    return Image.open(io.BytesIO(base64.b64decode(match.group(1))))


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
    """The CSP forbids inline code: every script and style must come from /static."""
    html = client.get("/").get_data(as_text=True)
    assert re.findall(r"<script(?![^>]*\bsrc=)[^>]*>", html) == []
    assert "<style" not in html and " style=" not in html and "onclick" not in html
    for path in re.findall(r'(?:src|href)="(/static/[^"]+)"', html):
        assert client.get(path).status_code == 200, path


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


def test_result_page_shows_gradcam_overlay_when_available(client):
    pytest.importorskip("imageclf.gradcam")
    html = client.post("/predict", data=upload(png_bytes())).get_data(as_text=True)
    overlay = decode_data_url(html, "overlay")
    assert overlay.size[0] >= 32


def test_result_page_without_gradcam_still_works(client, no_gradcam):
    response = client.post("/predict", data=upload(png_bytes()))
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
    predictor = app.extensions["imageclf"].predictor()
    calls = []
    original = predictor.predict_proba

    def counting(batch, **kwargs):
        calls.append(batch.shape)
        return original(batch, **kwargs)

    monkeypatch.setattr(predictor, "predict_proba", counting)
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


def test_api_explain_returns_png(client):
    pytest.importorskip("imageclf.gradcam")
    response = client.post("/api/v1/predict", data=upload(png_bytes(), explain="true"))
    explanation = response.get_json()["predictions"][0]["explanation"]
    image = Image.open(io.BytesIO(base64.b64decode(explanation)))
    assert image.format == "PNG"


def test_api_explain_without_gradcam_is_null(client, no_gradcam):
    response = client.post("/api/v1/predict", data=upload(png_bytes(), explain="true"))
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["explanation"] is None
    assert client.get("/api/v1/model").get_json()["explain"] is False


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


def test_metrics_prometheus_text(bundle):
    app = create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager")
    client = app.test_client()
    client.post("/api/v1/predict", data=upload(png_bytes()))
    client.post("/api/v1/predict", data=upload(b"junk"))
    client.get("/nope")
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200
    assert response.mimetype == "text/plain"
    assert "version=0.0.4" in response.headers["Content-Type"]
    ok = 'imageclf_http_requests_total{endpoint="/api/v1/predict",method="POST",status="200"} 1'
    bad = 'imageclf_http_requests_total{endpoint="/api/v1/predict",method="POST",status="400"} 1'
    assert ok in text and bad in text
    assert 'endpoint="unmatched",method="GET",status="404"' in text
    assert "# TYPE imageclf_http_request_duration_seconds histogram" in text
    assert (
        'imageclf_http_request_duration_seconds_bucket{endpoint="/api/v1/predict",le="+Inf"} 2'
        in text
    )
    predicted = re.findall(r'imageclf_predictions_total\{label="([a-z]+)"\} (\d+)', text)
    assert len(predicted) == 10 and sum(int(n) for _, n in predicted) == 1
    assert 'imageclf_images_rejected_total{status="400"} 1' in text
    assert 'imageclf_model_ready{model="tiny-seed-a"} 1' in text
    for line in text.splitlines():  # every sample line: name{labels} number
        if not line.startswith("#"):
            assert re.fullmatch(r"[a-z_]+(\{[^}]*\})? [0-9.e+-]+", line), line


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
    from imageclf import predict
    from imageclf.cli import main

    monkeypatch.setattr(predict.resources, "files", lambda _: Path("/nonexistent/imageclf"))
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--port", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "bundled default model is missing" in err and "\n" not in err
