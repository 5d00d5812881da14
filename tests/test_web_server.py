"""The real thing: ``imageclf serve`` (gunicorn, two workers) over real sockets."""

from __future__ import annotations

import http.client
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from helpers import make_tiny_bundle, png_bytes

STARTUP_S = 90


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multipart(files: list[tuple[str, str, bytes]], fields: dict[str, str] | None = None):
    """(body, content type) for form fields and (field, filename, bytes) files."""
    boundary = uuid.uuid4().hex
    out = io.BytesIO()
    for name, value in (fields or {}).items():
        out.write(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'.encode())
        out.write(value.encode() + b"\r\n")
    for field, filename, data in files:
        out.write(
            f"--{boundary}\r\nContent-Disposition: form-data; "
            f'name="{field}"; filename="{filename}"\r\n'
            "Content-Type: application/octet-stream\r\n\r\n".encode()
        )
        out.write(data + b"\r\n")
    out.write(f"--{boundary}--\r\n".encode())
    return out.getvalue(), f"multipart/form-data; boundary={boundary}"


class Server:
    def __init__(self, port: int, process: subprocess.Popen, log: Path) -> None:
        self.port, self.process, self.log = port, process, log

    def request(self, method: str, path: str, body=None, headers=None, chunked=False):
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {}, encode_chunked=chunked)
            response = conn.getresponse()
            return response.status, dict(response.getheaders()), response.read()
        finally:
            conn.close()


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("serve")
    bundle = make_tiny_bundle(folder / "tiny.safetensors")
    port = free_port()
    log = folder / "server.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "imageclf", "serve", "--model", str(bundle)]
    command += ["--port", str(port), "--workers", "2"]
    with open(log, "wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)
    running = Server(port, process, log)
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"server exited early ({process.returncode}):\n{log.read_text()}")
            try:
                if running.request("GET", "/readyz")[0] == 200:
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"server not ready after {STARTUP_S}s:\n{log.read_text()}")
            time.sleep(0.2)
        yield running
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def test_server_classifies_real_images(server):
    body, content_type = multipart(
        [
            ("files", "red.png", png_bytes()),
            ("files", "blue.jpg", png_bytes((0, 0, 255), fmt="JPEG")),
        ],
        {"top_k": "3"},
    )
    status, headers, data = server.request(
        "POST", "/api/v1/predict", body, {"Content-Type": content_type}
    )
    assert status == 200, data
    result = json.loads(data)
    assert [p["filename"] for p in result["predictions"]] == ["red.png", "blue.jpg"]
    assert all(len(p["top"]) == 3 for p in result["predictions"])
    assert headers["X-Content-Type-Options"] == "nosniff"


def test_server_pages_and_probes(server):
    status, headers, html = server.request("GET", "/")
    assert status == 200 and b'id="upload-form"' in html
    assert "script-src 'self'" in headers["Content-Security-Policy"]
    body, content_type = multipart([("file", "x.png", png_bytes())])
    status, _, html = server.request("POST", "/predict", body, {"Content-Type": content_type})
    assert status == 200 and b'id="label"' in html
    assert server.request("GET", "/healthz")[0] == 200
    status, _, text = server.request("GET", "/metrics")
    assert status == 200 and b"imageclf_http_requests_total" in text


def test_server_refuses_body_over_limit_with_413(server):
    body, content_type = multipart([("file", "big.png", b"\0" * (6 * 1024 * 1024))])
    status, _, data = server.request(
        "POST", "/api/v1/predict", body, {"Content-Type": content_type}
    )
    assert status == 413
    assert "too large" in json.loads(data)["error"]["message"]


def test_server_refuses_chunked_body_over_limit_with_413(server):
    def chunks():
        yield b'--b\r\nContent-Disposition: form-data; name="file"; filename="a.png"\r\n\r\n'
        for _ in range(7 * 16):
            yield b"\0" * (64 * 1024)

    status, _, data = server.request(
        "POST",
        "/api/v1/predict",
        chunks(),
        {"Content-Type": "multipart/form-data; boundary=b", "Transfer-Encoding": "chunked"},
        chunked=True,
    )
    assert status == 413
    assert json.loads(data)["error"]["status"] == 413


def test_server_runs_two_workers_and_stops_cleanly(server):
    assert server.request("GET", "/readyz")[0] == 200
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(timeout=30) == 0
    log = server.log.read_text()
    assert log.count("Booting worker") >= 2
    assert "Traceback" not in log
