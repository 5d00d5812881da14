"""HOSTILE_INPUTS.md against the app, the service around the model: health and readiness
while the model loads or fails to (case 27), load and soak (28), and issue 12's
redirects that never name the client's host, request ids in errors and logs, and
tracebacks kept in ``imageclf serve``'s log lines.
"""

from __future__ import annotations

import io
import json
import logging
import re
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

import pytest
from crafted import encode, noise
from helpers import make_tiny_bundle, png_bytes, post

from imageclf.web import create_app
from imageclf.web.extensions import get_service


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# 27 ---------------------------------------------------------------- health and readiness
def test_27_healthz_always_readyz_after_load(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny.safetensors")
    app = create_app(bundle, IMAGECLF_MODEL_LOADING="manual", IMAGECLF_MODEL_WAIT_S=0.1)
    client = app.test_client()
    assert client.get("/healthz").status_code == 200
    response = client.get("/readyz")
    assert response.status_code == 503 and response.get_json()["status"] == "loading"
    predict = client.post("/api/v1/predict", data={"file": (io.BytesIO(png_bytes()), "a.png")})
    assert predict.status_code == 503 and predict.is_json
    assert client.get("/").status_code == 200  # the page renders while loading
    assert "imageclf_model_ready" in client.get("/metrics").get_data(as_text=True)
    get_service(app).load()
    assert client.get("/healthz").status_code == 200
    assert client.get("/readyz").status_code == 200


def test_27_background_load_becomes_ready(tmp_path):
    bundle = make_tiny_bundle(tmp_path / "tiny.safetensors")
    client = create_app(bundle).test_client()  # the default: load in a thread
    assert client.get("/healthz").status_code == 200
    deadline = time.monotonic() + 20
    while client.get("/readyz").status_code != 200:
        assert time.monotonic() < deadline, "model never became ready"
        time.sleep(0.05)
    # a prediction waits for the load instead of failing
    assert (
        client.post(
            "/api/v1/predict", data={"file": (io.BytesIO(png_bytes()), "a.png")}
        ).status_code
        == 200
    )


def test_27_failed_load_stays_503_with_reason(tmp_path):
    broken = tmp_path / "broken.safetensors"
    broken.write_bytes(b"not a model")
    app = create_app(broken, IMAGECLF_MODEL_LOADING="background", IMAGECLF_MODEL_WAIT_S=5)
    client = app.test_client()
    deadline = time.monotonic() + 20
    while client.get("/readyz").get_json()["status"] == "loading":
        assert time.monotonic() < deadline
        time.sleep(0.05)
    response = client.get("/readyz")
    assert response.status_code == 503 and "not a readable model" in response.get_json()["error"]
    assert client.get("/healthz").status_code == 200
    predict = client.post("/api/v1/predict", data={"file": (io.BytesIO(png_bytes()), "a.png")})
    assert predict.status_code == 503


# 28 ---------------------------------------------------------------- load and soak
def test_28_bounded_load_concurrency_32_no_errors(app):
    images = [png_bytes((i * 7 % 256, 100, 200)) for i in range(32)]
    statuses: list[int] = []
    lock = threading.Lock()

    def one(i: int) -> None:
        client = app.test_client()
        response = client.post(
            "/api/v1/predict", data={"file": (io.BytesIO(images[i % 32]), f"{i}.png")}
        )
        with lock:
            statuses.append(response.status_code)

    with ThreadPoolExecutor(max_workers=32) as pool:
        list(pool.map(one, range(320)))
    assert statuses == [200] * 320


@pytest.mark.slow
def test_28_soak_memory_stays_flat(app):
    client = app.test_client()
    data = encode(noise(64, 64), "PNG")

    def burst(n: int) -> None:
        for i in range(n):
            response = client.post("/api/v1/predict", data={"file": (io.BytesIO(data), f"{i}.png")})
            assert response.status_code == 200

    burst(100)  # warm up allocators and caches
    before = current_rss_mb()
    burst(600)
    assert current_rss_mb() - before < 25


# ================================================================ issue 12: the rest
@pytest.mark.parametrize("path", ["/static//x", "//static/app.js", "/static//evil.example/app.js"])
def test_redirects_never_point_at_the_clients_host(client, path):
    response = client.get(path, headers={"Host": "evil.example"})
    location = response.headers.get("Location")
    assert response.status_code in (308, 404)  # Werkzeug merges the slashes: a redirect
    if response.status_code == 308:
        # a path on this site, never a host: no scheme, no authority, no "//" prefix
        assert location.startswith("/") and not location.startswith("//"), location
        assert urlsplit(location).netloc == "" and "://" not in location


class _Records(logging.Handler):
    """Log records of one logger, whatever the CLI did to propagation before."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


def test_errors_carry_the_request_id_that_the_log_has(app, monkeypatch):
    client = app.test_client()
    response = post(client, b"junk", "x.png")
    request_id = response.headers["X-Request-ID"]
    assert response.get_json()["error"]["request_id"] == request_id and len(request_id) >= 16
    given = client.get("/healthz", headers={"X-Request-ID": "lb-1234.5"})
    assert given.headers["X-Request-ID"] == "lb-1234.5"  # a proxy's id is kept
    for odd in ("<script>", "a" * 65, "id with spaces", "é"):
        forged = client.get("/healthz", headers={"X-Request-ID": odd})
        assert forged.headers["X-Request-ID"] != odd  # anything odd is replaced
        assert re.fullmatch(r"[0-9a-f]{32}", forged.headers["X-Request-ID"])

    def bug(*args, **kwargs):
        raise RuntimeError("a bug")

    monkeypatch.setattr(get_service(app), "describe", bug)
    logger, seen = logging.getLogger("imageclf.web"), _Records()
    logger.addHandler(seen)
    try:
        failed = client.get("/")  # the page's footer describes the model: a 500 now
    finally:
        logger.removeHandler(seen)
    assert failed.status_code == 500
    request_id = failed.headers["X-Request-ID"]
    (record,) = [r for r in seen.records if "unhandled error" in r.getMessage()]
    assert request_id in record.getMessage() and record.exc_info[0] is RuntimeError
    assert request_id in failed.get_data(as_text=True)  # the page quotes it too


def test_serve_log_lines_keep_the_traceback(capsys):
    """``imageclf serve`` logs through the CLI's handler: a 500 must arrive with its stack."""
    from imageclf.cli.logs import configure_logging as _configure_logging

    for log_format in ("text", "json"):
        _configure_logging(quiet=False, log_format=log_format)
        try:
            raise ValueError("the real cause")
        except ValueError:
            logging.getLogger("imageclf.web").exception("unhandled error on GET /x (request r1)")
        out = capsys.readouterr().out
        assert "unhandled error on GET /x (request r1)" in out
        assert "Traceback" in out and "ValueError: the real cause" in out
        if log_format == "json":
            entry = json.loads(out.strip().splitlines()[-1])
            assert "ValueError: the real cause" in entry["traceback"]
