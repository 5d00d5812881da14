"""A multi-label model in the web app: the JSON API's answer (labels with their
thresholds, no unsure/outside), ``threshold`` in a form, a query and a JSON body, the
server's default (``IMAGECLF_THRESHOLD``, serve --threshold), the result pages, and the
OpenAPI document, fuzzed with schemathesis like test_web_openapi's single-label one."""

from __future__ import annotations

import base64
import contextlib
import io
import json
import os
import re

import jsonschema_rs  # comes with schemathesis
import pytest
import schemathesis
from helpers import make_tiny_bundle, make_tiny_multilabel_bundle, png_bytes, post, run_cli
from hypothesis import HealthCheck, settings
from test_web_openapi import _as_the_server_sees_it, call_and_judge

from imageclf import Predictor
from imageclf.web import DEFAULTS, create_app
from imageclf.web.openapi import build_spec

CLASSES = ["cat", "dog", "tree", "car"]
THRESHOLDS = [0.3, 0.5, 0.6, 0.9]


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ml-web")
    return make_tiny_multilabel_bundle(folder / "ml.safetensors", CLASSES, THRESHOLDS)


@pytest.fixture(scope="module")
def app(bundle):
    return create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager")


@pytest.fixture
def client(app):
    return app.test_client()


def _expected(bundle, picture, threshold=None):
    return Predictor.load(bundle).predict(picture, threshold=threshold)[0]


def test_api_answers_every_label_above_its_threshold(client, bundle):
    picture = png_bytes((20, 200, 40))
    response = post(client, picture, top_k="4")
    assert response.status_code == 200
    body = response.get_json()
    assert body["model"]["task"] == "multi_label"
    (item,) = body["predictions"]
    assert item["task"] == "multi_label" and "unsure" not in item and "outside" not in item
    want = _expected(bundle, picture)
    assert [(x["label"], x["probability"]) for x in item["labels"]] == pytest.approx(want)
    assert [x["threshold"] for x in item["labels"]] == [
        THRESHOLDS[CLASSES.index(label)] for label, _ in want
    ]
    assert len(item["top"]) == 4
    info = client.get("/api/v1/model").get_json()
    assert info["task"] == "multi_label" and info["label_thresholds"] == THRESHOLDS


def test_threshold_in_a_form_a_query_and_a_json_body(client, bundle):
    picture = png_bytes((200, 30, 30))
    form = post(client, picture, threshold="0.001").get_json()["predictions"][0]
    assert len(form["labels"]) == 4 and {x["threshold"] for x in form["labels"]} == {0.001}
    query = client.post(
        "/api/v1/predict?threshold=0.999",
        data={"file": (__import__("io").BytesIO(picture), "a.png")},
    ).get_json()["predictions"][0]
    assert query["labels"] == []
    data = base64.b64encode(picture).decode()
    response = client.post("/api/v1/predict", json={"images": [{"data": data}], "threshold": 0.5})
    labels = response.get_json()["predictions"][0]["labels"]
    assert [x["label"] for x in labels] == [lab for lab, _ in _expected(bundle, picture, 0.5)]


@pytest.mark.parametrize("value", ["0", "1", "-0.5", "abc", "nan", "1e400", ""])
def test_a_bad_threshold_is_a_400(client, value):
    response = post(client, png_bytes(), threshold=value)
    assert response.status_code == 400
    assert "threshold must be a number between 0 and 1" in response.get_json()["error"]["message"]


@pytest.mark.parametrize("value", [0, 1.5, "0.5", True, None])
def test_a_bad_json_threshold_is_a_400(client, value):
    data = base64.b64encode(png_bytes()).decode()
    response = client.post("/api/v1/predict", json={"images": [{"data": data}], "threshold": value})
    if value is None:  # null: no threshold
        assert response.status_code == 200
    else:
        assert response.status_code == 400


def test_a_single_label_model_refuses_a_threshold(tmp_path):
    app = create_app(
        make_tiny_bundle(tmp_path / "s.safetensors"), TESTING=True, IMAGECLF_MODEL_LOADING="eager"
    )
    client = app.test_client()
    response = post(client, png_bytes(), threshold="0.5")
    assert response.status_code == 400
    assert "applies to multi-label models" in response.get_json()["error"]["message"]
    body = post(client, png_bytes()).get_json()
    assert body["model"]["task"] == "single_label"
    assert set(body["predictions"][0]) == {"filename", "top", "unsure", "outside"}
    spec = client.get("/api/v1/openapi.json").get_json()
    assert "threshold" not in spec["components"]["schemas"]["PredictRequest"]["properties"]


def test_the_servers_default_threshold(bundle):
    app = create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_THRESHOLD=0.999)
    client = app.test_client()
    item = post(client, png_bytes()).get_json()["predictions"][0]
    assert item["labels"] == []  # serve --threshold 0.999
    item = post(client, png_bytes(), threshold="0.001").get_json()["predictions"][0]
    assert len(item["labels"]) == 4  # the request's own wins


def test_feedback_is_refused_for_a_multilabel_model(bundle, tmp_path):
    """The feedback folder keeps one label per picture (DIR/<label>/): a multi-label
    model's answer is a 400 that says why, and nothing is written."""
    app = create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager",
                     IMAGECLF_FEEDBACK_DIR=str(tmp_path / "fb"))  # fmt: skip
    response = app.test_client().post(
        "/api/v1/feedback",
        data={"file": (io.BytesIO(png_bytes()), "x.png"), "answer": "wrong", "label": "dog"},
    )
    assert response.status_code == 400
    assert "several labels per picture" in response.get_json()["error"]["message"]
    assert not any(p.is_file() for p in (tmp_path / "fb").rglob("*") if p.suffix != ".lock")


def test_result_pages_list_the_labels(client, bundle):
    picture = png_bytes((20, 200, 40))
    html = client.post(
        "/predict", data={"file": (__import__("io").BytesIO(picture), "a.png")}
    ).get_data(as_text=True)
    want = _expected(bundle, picture)
    assert len(want) >= 2
    found = re.search(r'<h1 class="label" id="label">([^<]*)</h1>', html).group(1)
    assert found == ", ".join(label for label, _ in want)
    assert html.count('class="tick"') == len(want) and "feedback" not in html.lower()
    files = [(__import__("io").BytesIO(picture), f"{i}.png") for i in range(2)]
    listing = client.post("/predict", data={"file": files}).get_data(as_text=True)
    assert listing.count(", ".join(label for label, _ in want)) == 2


def test_result_page_says_no_label_plainly(bundle):
    app = create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager", IMAGECLF_THRESHOLD=0.999)
    html = (
        app.test_client()
        .post("/predict", data={"file": (__import__("io").BytesIO(png_bytes()), "a.png")})
        .get_data(as_text=True)
    )
    assert 'id="no-label">No label above its threshold</h1>' in html


# ---------------------------------------------------------------- the document, fuzzed
@pytest.fixture(scope="module")
def ml_schema(app):
    return schemathesis.openapi.from_wsgi("/api/v1/openapi.json", app)


schema = schemathesis.pytest.from_fixture("ml_schema")


def _valid_on_the_wire(body: dict) -> bool:
    """Whether a "negative" case is a valid request once serialized (test_web_openapi's
    rule, with the threshold's text read as the number the server reads)."""
    seen = _as_the_server_sees_it(body)
    if isinstance(seen.get("threshold"), str):
        with contextlib.suppress(ValueError):
            seen["threshold"] = float(seen["threshold"])
    spec = build_spec(DEFAULTS, CLASSES, multi_label=True)
    # Draft 4: OpenAPI 3.0's exclusiveMinimum/Maximum are booleans, as there.
    request_schema = spec["components"]["schemas"]["PredictRequest"]
    return jsonschema_rs.Draft4Validator(request_schema).is_valid(seen)


@schema.include(path_regex="predict$").parametrize()
@settings(
    max_examples=int(os.environ.get("IMAGECLF_FUZZ_EXAMPLES", "25")),
    deadline=None,
    suppress_health_check=list(HealthCheck),
    derandomize=os.environ.get("IMAGECLF_FUZZ_EXAMPLES") is None,
    database=None,
)
def test_multilabel_predict_conforms_to_openapi(case):
    """Statuses, content types and bodies match the document (the multi-label answer
    and the threshold field included); never a 5xx. Judged as in test_web_openapi."""
    call_and_judge(case, _valid_on_the_wire(case.body if isinstance(case.body, dict) else {}))


# ---------------------------------------------------------------- imageclf serve
def test_serve_refuses_a_threshold_without_a_multilabel_model(tmp_path, capsys):
    single = make_tiny_bundle(tmp_path / "s.safetensors")
    code, out, err = run_cli(
        ["serve", "--model", str(single), "--threshold", "0.5", "--port", "0"], capsys
    )
    assert code == 2 and out == ""
    assert (
        err.strip()
        .splitlines()[-1]
        .endswith("--threshold applies to multi-label models; none is served")
    )


def test_serve_runs_a_multilabel_model_with_its_threshold(bundle, tmp_path):
    """The real server (gunicorn): the API's labels under serve --threshold (here from
    its environment variable), and a request's own threshold."""
    from realserver import serving

    picture = png_bytes((20, 200, 40))
    with serving(bundle, tmp_path, workers=1, env={"IMAGECLF_THRESHOLD": "0.999"}) as server:
        for query, count in (("", 0), ("?threshold=0.001", 4)):
            boundary = "x" * 20
            body = (
                (
                    f'--{boundary}\r\nContent-Disposition: form-data; name="file"; '
                    f'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
                ).encode()
                + picture
                + f"\r\n--{boundary}--\r\n".encode()
            )
            status, _, answer = server.request(
                "POST",
                "/api/v1/predict" + query,
                body,
                {"Content-Type": f"multipart/form-data; boundary={boundary}"},
            )
            assert status == 200, answer
            (item,) = json.loads(answer)["predictions"]
            assert item["task"] == "multi_label" and len(item["labels"]) == count
