"""Issue 26: pictures in a JSON body (base64), for clients that cannot send multipart;
the same answers and the same limits as a multipart upload, every bad body a 4xx JSON."""

from __future__ import annotations

import base64
import io
import json

import pytest
from helpers import make_tiny_bundle, png_bytes

from imageclf.web import create_app
from imageclf.web.json_body import json_body_limit
from imageclf.web.uploads import MAX_UPLOAD_BYTES


@pytest.fixture(scope="module")
def client(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("json") / "tiny.safetensors")
    return create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager").test_client()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def test_json_pictures_get_the_same_answer_as_multipart(client):
    red, blue = png_bytes((255, 0, 0)), png_bytes((0, 0, 255), fmt="JPEG")
    body = {
        "images": [
            {"data": b64(red), "filename": "red.png"},
            {"data": "data:image/jpeg;base64," + b64(blue)},
        ],
        "top_k": 3,
    }
    answer = client.post("/api/v1/predict", json=body)
    assert answer.status_code == 200, answer.get_json()
    got = answer.get_json()["predictions"]
    multipart = client.post(
        "/api/v1/predict",
        data={"files": [(io.BytesIO(red), "red.png"), (io.BytesIO(blue), "")], "top_k": "3"},
    ).get_json()["predictions"]
    assert [p["filename"] for p in got] == ["red.png", ""]
    assert [p["top"] for p in got] == [p["top"] for p in multipart]
    assert all(len(p["top"]) == 3 and "outside" in p and "unsure" in p for p in got)


def test_explain_works_in_json_too(client):
    body = {"images": [{"data": b64(png_bytes())}], "explain": True}
    prediction = client.post("/api/v1/predict", json=body).get_json()["predictions"][0]
    assert base64.b64decode(prediction["explanation"]).startswith(b"\x89PNG")


@pytest.mark.parametrize(
    ("raw", "status", "words"),
    [
        (b"{", 400, "JSON"),
        (b"[1, 2]", 400, "must be an object"),
        (b'{"images": []}', 400, "non-empty list"),
        (b'{"images": [{"data": "***"}]}', 400, "not valid base64"),
        (b'{"images": [{"data": ""}]}', 400, "empty"),
        (b'{"images": [{"data": 5}]}', 400, "base64 string"),
        (b'{"images": [{"data": "AAAA", "url": "http://x"}]}', 400, "unknown field 'url'"),
        (b'{"images": [{"data": "AAAA"}], "top_k": "3"}', 400, "top_k"),
        (b'{"images": [{"data": "AAAA"}], "top_k": 0}', 400, "top_k"),
        (b'{"images": [{"data": "AAAA"}], "explain": "yes"}', 400, "explain"),
        (b'{"images": [{"data": "AAAA"}], "url": "http://x"}', 400, "unknown field"),
        (b'{"images": [{"data": "AAAA"}], "top_k": NaN}', 400, "NaN"),
        (b'{"images": [{"data": "AAAA"}]}', 400, "not a valid image"),
        (b"[" * 100_000 + b"]" * 100_000, 400, "nest"),
        (b"\xff\xfe{}", 400, "UTF-8"),
    ],
)
def test_bad_json_bodies_are_a_clear_4xx(client, raw, status, words):
    answer = client.post("/api/v1/predict", data=raw, content_type="application/json")
    assert answer.status_code == status
    message = answer.get_json()["error"]["message"]
    assert words.lower() in message.lower(), message


def test_json_limits_are_the_multipart_limits_after_decoding(client):
    too_many = {"images": [{"data": b64(png_bytes())}] * 65}
    answer = client.post("/api/v1/predict", json=too_many)
    assert answer.status_code == 400 and "at most 64" in answer.get_json()["error"]["message"]
    # Two pictures of 3 MB each: each under the per-picture limit, over it in all. The
    # body (8 MB of base64) is refused before it is parsed.
    big = b64(b"\0" * (3 * 1024 * 1024))
    answer = client.post("/api/v1/predict", json={"images": [{"data": big}, {"data": big}]})
    assert answer.status_code == 413
    assert "at most 5 MB in all" in answer.get_json()["error"]["message"]
    huge = json.dumps({"images": [{"data": "A" * json_body_limit(MAX_UPLOAD_BYTES)}]})
    answer = client.post("/api/v1/predict", data=huge, content_type="application/json")
    assert answer.status_code == 413
    # Just under the body limit, the pictures themselves are still held to 5 MB in all.
    pictures = [{"data": b64(b"\0" * (2_630_000))} for _ in range(2)]
    assert len(json.dumps({"images": pictures})) < json_body_limit(MAX_UPLOAD_BYTES)
    answer = client.post("/api/v1/predict", json={"images": pictures})
    assert answer.status_code == 413 and "in all" in answer.get_json()["error"]["message"]


def test_the_openapi_document_describes_the_json_body(client):
    spec = client.get("/api/v1/openapi.json").get_json()
    content = spec["paths"]["/api/v1/predict"]["post"]["requestBody"]["content"]
    assert set(content) == {"multipart/form-data", "application/json"}
    schema = spec["components"]["schemas"]["PredictJsonRequest"]
    assert schema["required"] == ["images"]
    assert schema["properties"]["images"]["maxItems"] == 64
