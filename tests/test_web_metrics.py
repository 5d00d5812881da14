"""``/metrics``: Prometheus names, bounded labels, and totals that are right across workers."""

from __future__ import annotations

import io
import json
import random
import re
import string
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
from helpers import make_tiny_bundle, png_bytes
from realserver import serving

from imageclf.web import create_app
from imageclf.web.extensions import get_service
from imageclf.web.metrics import method_label, route_label, status_label

SAMPLE = re.compile(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)")


def samples(text: str) -> dict[tuple[str, frozenset], float]:
    """Every sample line as {(name, labels): value}."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        match = SAMPLE.fullmatch(line)
        assert match, line
        name, raw, value = match.groups()
        labels = frozenset(re.findall(r'(\w+)="((?:[^"\\]|\\.)*)"', raw or ""))
        out[(name, labels)] = float(value)
    return out


def total(text: str, name: str, **labels: str) -> float:
    """Sum of ``name`` over the series whose labels include ``labels``."""
    want = set(labels.items())
    return sum(v for (n, ls), v in samples(text).items() if n == name and want <= set(ls))


@pytest.fixture
def app(tmp_path):
    return create_app(
        make_tiny_bundle(tmp_path / "tiny.safetensors"),
        TESTING=True,
        IMAGECLF_MODEL_LOADING="eager",
    )


def upload(data: bytes, name: str = "a.png") -> dict:
    return {"file": (io.BytesIO(data), name)}


# ---------------------------------------------------------------- in one process
def test_names_types_and_labels(app):
    client = app.test_client()
    client.post("/api/v1/predict", data=upload(png_bytes()))
    client.post("/api/v1/predict", data=upload(b"junk"))
    client.get("/nope/123")
    client.get("/static/style.css")
    response = client.get("/metrics")
    text = response.get_data(as_text=True)
    assert response.status_code == 200 and response.mimetype == "text/plain"
    assert "version=0.0.4" in response.headers["Content-Type"]
    assert "# TYPE imageclf_http_requests_total counter" in text
    assert "# TYPE imageclf_http_request_duration_seconds histogram" in text
    assert "# TYPE imageclf_predictions_total counter" in text
    assert "# TYPE imageclf_images_rejected_total counter" in text
    predict = {"route": "/api/v1/predict", "method": "POST"}
    assert total(text, "imageclf_http_requests_total", **predict, status="2xx") == 1
    assert total(text, "imageclf_http_requests_total", **predict, status="4xx") == 1
    assert total(text, "imageclf_http_requests_total", route="other", status="4xx") == 1
    static = {"route": "/static/<path:filename>", "method": "GET", "status": "2xx"}
    assert total(text, "imageclf_http_requests_total", **static) == 1
    assert total(text, "imageclf_http_request_duration_seconds_count", route=predict["route"]) == 2
    inf = {"route": predict["route"], "le": "+Inf"}
    assert total(text, "imageclf_http_request_duration_seconds_bucket", **inf) == 2
    per_class = {
        dict(ls)["label"]: v
        for (n, ls), v in samples(text).items()
        if n == "imageclf_predictions_total"
    }
    assert sorted(per_class) == [f"class{i}" for i in range(10)]  # zeros included
    assert sum(per_class.values()) == 1
    assert total(text, "imageclf_images_rejected_total", status="400") == 1
    assert total(text, "imageclf_model_ready") == 1
    info = {"model": "tiny-seed-a", "backend": "pytorch"}
    assert total(text, "imageclf_model_info", **info) == 1
    # Never a raw path or a status code as a label value.
    assert "/nope" not in text and 'status="404"' not in text and 'status="200"' not in text


def test_model_ready_is_0_until_the_model_loads(tmp_path):
    app = create_app(
        make_tiny_bundle(tmp_path / "tiny.safetensors"),
        TESTING=True,
        IMAGECLF_MODEL_LOADING="manual",
    )
    client = app.test_client()
    assert total(client.get("/metrics").get_data(as_text=True), "imageclf_model_ready") == 0
    get_service(app).load()
    assert total(client.get("/metrics").get_data(as_text=True), "imageclf_model_ready") == 1


def test_hostile_methods_and_paths_add_no_series(app):
    """1,500 random methods and paths: the number of series does not grow."""
    client = app.test_client()
    client.get("/nope")
    client.open("/", method="BREW")
    client.get("/metrics")  # the scrape's own series exist from the second scrape on
    before = len(samples(client.get("/metrics").get_data(as_text=True)))
    rng = random.Random(0)
    for _ in range(1500):
        method = "".join(rng.choices(string.ascii_uppercase, k=rng.randint(3, 12)))
        path = "/" + "/".join(
            "".join(rng.choices(string.ascii_letters + string.digits + "%._-", k=8))
            for _ in range(rng.randint(1, 3))
        )
        client.open(path, method=method)
        client.open("/", method=method)
    text = client.get("/metrics").get_data(as_text=True)
    assert len(samples(text)) == before
    # A 405 on a known path is unmatched too: 3,000 random plus the first BREW.
    assert total(text, "imageclf_http_requests_total", route="other", method="other") == 3001


def test_label_mapping_is_a_fixed_set():
    assert route_label(None) == "other" and route_label("/api/v1/predict") == "/api/v1/predict"
    assert {method_label(m) for m in ("GET", "POST", "HEAD", "BREW", "get", "")} == {
        "GET",
        "POST",
        "HEAD",
        "other",
    }
    assert [status_label(s) for s in (200, 304, 404, 503, 99, 600)] == [
        "2xx",
        "3xx",
        "4xx",
        "5xx",
        "other",
        "other",
    ]


# ---------------------------------------------------------------- two real workers
def _healthz_counts_per_worker(folder) -> dict[str, float]:
    """Each worker's own /healthz count, read from its file in the multiprocess folder."""
    from prometheus_client.mmap_dict import MmapedDict

    counts: dict[str, float] = {}
    for path in folder.glob("counter_*.db"):
        pid = path.stem.rsplit("_", 1)[1]
        for key, value, *_ in MmapedDict.read_all_values_from_file(str(path)):
            _, sample, labels, _ = json.loads(key)
            if sample == "imageclf_http_requests_total" and labels["route"] == "/healthz":
                counts[pid] = counts.get(pid, 0) + value
    return counts


def test_two_workers_one_scrape_reads_every_request(tmp_path):
    """N requests spread over 2 gunicorn workers; one scrape (answered by either) reads N."""
    bundle = make_tiny_bundle(tmp_path / "tiny.safetensors")
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    body, ctype = _multipart(png_bytes())
    with serving(bundle, tmp_path, workers=2, env={"TMPDIR": str(scratch)}) as server:
        (folder,) = scratch.glob("imageclf-metrics-*")  # a fresh folder for this start

        def health(_):
            return server.request("GET", "/healthz")[0]

        def predict(_):
            return server.request("POST", "/api/v1/predict", body, {"Content-Type": ctype})[0]

        n_health, n_predict, statuses = 0, 24, []
        with ThreadPoolExecutor(8) as pool:
            # Until both workers have answered some (the kernel picks who accepts).
            while n_health < 1500:
                statuses += list(pool.map(health, range(60)))
                n_health += 60
                per_worker = _healthz_counts_per_worker(folder)
                if len(per_worker) == 2 and min(per_worker.values()) > 0:
                    break
            statuses += list(pool.map(predict, range(n_predict)))
        assert statuses == [200] * (n_health + n_predict)
        per_worker = _healthz_counts_per_worker(folder)
        assert len(per_worker) == 2 and min(per_worker.values()) > 0, per_worker
        assert sum(per_worker.values()) == n_health  # so neither worker alone holds N

        for _ in range(4):  # whichever worker answers, the totals are the same
            text = server.request("GET", "/metrics")[2].decode()
            assert total(text, "imageclf_http_requests_total", route="/healthz") == n_health
            assert total(text, "imageclf_predictions_total") == n_predict
            duration = "imageclf_http_request_duration_seconds_count"
            assert total(text, duration, route="/api/v1/predict") == n_predict
        assert total(text, "imageclf_model_ready") == 1

        # A worker that dies takes its live gauge with it but not its counts.
        victim = server.worker_pids()[0]
        import os
        import signal

        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 60
        while victim in server.worker_pids() or len(server.worker_pids()) < 2:
            assert time.monotonic() < deadline, server.text()
            time.sleep(0.2)
        assert not list(folder.glob(f"gauge_livemin_{victim}.db"))
        text = server.request("GET", "/metrics")[2].decode()
        assert total(text, "imageclf_http_requests_total", route="/healthz") == n_health
        assert total(text, "imageclf_predictions_total") == n_predict
    assert not folder.exists()  # removed when the server stops
    assert "Traceback" not in server.text()


def _multipart(data: bytes) -> tuple[bytes, str]:
    boundary = "b0undary"
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n'
            "Content-Type: image/png\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    return body, f"multipart/form-data; boundary={boundary}"
