"""HOSTILE_INPUTS.md against the app, what arrives: the body, the form, the file's name
and format (cases 1, 3-11, 25, 26), and issue 12's limits on files per request and the
echoed name. Flask test client; the same classes over real sockets are in
test_web_server.py. The other themes: test_web_hostile_pixels.py (odd pictures),
test_web_hostile_budgets.py (decode work and memory), test_web_hostile_server.py.

Work is asserted by counting it (reads made, files written), never by a wall-clock
limit: the cores are shared. Timings belong in benchmarks/.
"""

from __future__ import annotations

import base64
import contextlib
import io
import os
import sys

import numpy as np
import pytest
from crafted import encode, noise
from helpers import png_bytes, post, probabilities
from PIL import Image
from werkzeug.test import EnvironBuilder, run_wsgi_app

from imageclf.web.uploads import DRAIN_LIMIT_BYTES, MAX_UPLOAD_BYTES

ALLOWED = "PNG, JPEG, GIF, WEBP, BMP"


# 1 ---------------------------------------------------------------- valid small PNG
def test_01_valid_small_png_probabilities_sum_to_one(client):
    probs = probabilities(client, png_bytes())
    assert len(probs) == 10
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


# 3, 4 ---------------------------------------------------------------- nothing to classify
def test_03_no_file_part_is_400(client):
    response = client.post("/api/v1/predict", data={"top_k": "3"})
    assert response.status_code == 400
    assert "no image" in response.get_json()["error"]["message"]
    assert client.post("/api/v1/predict").status_code == 400


def test_04_empty_file_is_400(client):
    response = post(client, b"", "empty.png")
    assert response.status_code == 400
    assert "empty" in response.get_json()["error"]["message"]


# 5 ---------------------------------------------------------------- random bytes
def test_05_random_bytes_named_png_is_400(client):
    data = np.random.default_rng(5).integers(0, 256, 4096, dtype=np.uint8).tobytes()
    response = post(client, data, "x.png", "image/png")
    assert response.status_code == 400
    assert "not a valid image" in response.get_json()["error"]["message"]


# 6, 7 ---------------------------------------------------------------- outside the allowlist
@pytest.mark.parametrize(
    ("name", "data"),
    [
        ("doc.pdf", b"%PDF-1.7\n1 0 obj << /Type /Catalog >> endobj\n%%EOF\n"),
        ("pic.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
        ("page.html", b"<!DOCTYPE html><html><body><script>alert(1)</script></body></html>"),
    ],
)
def test_06_pdf_svg_html_are_415_listing_allowed(client, name, data):
    response = post(client, data, name, "image/png")
    assert response.status_code == 415
    assert ALLOWED in response.get_json()["error"]["message"]


@pytest.mark.parametrize("fmt", ["TIFF", "ICO"])
def test_07_valid_tiff_and_ico_are_415(client, fmt):
    response = post(client, encode(Image.new("RGB", (32, 32), "red"), fmt), "image.png")
    assert response.status_code == 415
    message = response.get_json()["error"]["message"]
    assert fmt in message and ALLOWED in message


# 8 ---------------------------------------------------------------- the bytes decide
def test_08_jpeg_named_png_is_200(client):
    response = post(client, png_bytes(fmt="JPEG"), "really-a-jpeg.png", "image/png")
    assert response.status_code == 200


# 9, 10, 11 ---------------------------------------------------------------- body limits
def test_09_body_over_limit_is_413(client):
    response = post(client, b"\0" * (MAX_UPLOAD_BYTES + 128 * 1024), "big.png")
    assert response.status_code == 413
    assert "too large" in response.get_json()["error"]["message"]


def test_09_declared_length_over_limit_is_413_before_reading(app):
    """A client announcing 1 GB is refused from the header alone: nothing is read."""
    body = io.BytesIO(b"x" * 1024)
    environ = EnvironBuilder(
        path="/api/v1/predict",
        method="POST",
        input_stream=body,
        content_type="multipart/form-data; boundary=b",
    ).get_environ()
    environ["CONTENT_LENGTH"] = str(1024**3)
    _, status, _ = run_wsgi_app(app, environ)
    assert status.startswith("413")
    assert body.tell() == 0


class EndlessBody:
    """A chunked upload that never ends (no Content-Length): counts what is read."""

    def __init__(self) -> None:
        self.read_bytes = 0

    def read(self, size: int = -1) -> bytes:
        size = 64 * 1024 if size is None or size < 0 else size
        self.read_bytes += size
        return b"a" * size

    def readline(self, size: int = -1) -> bytes:
        return self.read(size if size and size > 0 else 1024)


def test_10_chunked_body_over_limit_is_413_with_bounded_read(app):
    endless = EndlessBody()
    environ = EnvironBuilder(
        path="/api/v1/predict",
        method="POST",
        headers={"Transfer-Encoding": "chunked"},
        content_type="multipart/form-data; boundary=b",
    ).get_environ()
    environ.pop("CONTENT_LENGTH", None)
    environ["wsgi.input"] = endless
    environ["wsgi.input_terminated"] = True  # what gunicorn and Werkzeug set for chunked
    body, status, _ = run_wsgi_app(app, environ)
    assert status.startswith("413")
    assert b"too large" in b"".join(body)
    limit = app.config["MAX_CONTENT_LENGTH"] + DRAIN_LIMIT_BYTES + 256 * 1024
    assert endless.read_bytes < limit


def test_11_too_many_form_parts_is_413(client):
    fields = {f"field{i}": "x" for i in range(500)}
    response = client.post(
        "/api/v1/predict", data={**fields, "file": (io.BytesIO(png_bytes()), "a.png")}
    )
    assert response.status_code == 413


def test_11_huge_text_field_is_413(client):
    response = post(client, png_bytes(), top_k="1" * (1024 * 1024))
    assert response.status_code == 413


# 25 ---------------------------------------------------------------- polyglots
@pytest.mark.parametrize(
    "payload",
    [b"<html><script>alert('polyglot')</script></html>", b"PK\x03\x04polyglot-zip-entry"],
)
def test_25_polyglot_gif_is_classified_never_echoed(client, payload):
    data = encode(Image.new("P", (32, 32), 3), "GIF") + payload
    response = post(client, data, "poly.gif")
    assert response.status_code == 200
    assert response.is_json and response.headers["X-Content-Type-Options"] == "nosniff"
    assert payload not in response.data
    page = client.post("/predict", data={"file": (io.BytesIO(data), "poly.gif")})
    assert page.status_code == 200 and page.headers["X-Content-Type-Options"] == "nosniff"
    assert b"polyglot" not in page.data  # not raw, and not inside a data URL either
    raw_b64 = base64.b64encode(data)[:40]
    assert raw_b64 not in page.data  # the shown image is our own PNG re-encoding


# 26 ---------------------------------------------------------------- hostile filenames
_WRITES: list[tuple] | None = None  # audit events recorded while a sandbox is open
_WRITE_EVENTS = {
    "os.mkdir", "os.rename", "os.remove", "os.rmdir", "os.symlink", "os.link",
    "os.truncate", "os.chmod", "os.utime", "shutil.copyfile", "shutil.move",
}  # fmt: skip


def _audit(event: str, args: tuple) -> None:
    if _WRITES is None:
        return
    if event == "open":
        path, mode, flags = [*args, None, None][:3]
        writing = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        if (isinstance(mode, str) and set(mode) & set("wax+")) or (
            isinstance(flags, int) and flags & writing
        ):
            _WRITES.append((event, path))
    elif event in _WRITE_EVENTS:
        _WRITES.append((event, *args[:2]))


@contextlib.contextmanager
def write_sandbox():
    """Every file write this process attempts meanwhile, wherever it points (Python's
    audit hooks see each open for writing, rename, mkdir...)."""
    global _WRITES
    if not getattr(write_sandbox, "installed", False):
        sys.addaudithook(_audit)  # cannot be removed: it records only inside a sandbox
        write_sandbox.installed = True
    _WRITES = []
    try:
        yield _WRITES
    finally:
        _WRITES = None


def test_write_sandbox_sees_a_write_anywhere(tmp_path):
    target = tmp_path.parent.parent / f"sandbox-probe-{os.getpid()}"
    with write_sandbox() as writes:
        target.write_bytes(b"x")
    target.unlink()
    assert ("open", str(target)) in writes


@pytest.mark.parametrize("name", ["../../x", "<script>alert(1)</script>" * 400, "/tmp/x\x00y"])
def test_26_hostile_filename_is_escaped(client, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with write_sandbox() as writes:
        response = post(client, png_bytes(), name)
        page = client.post("/predict", data={"file": (io.BytesIO(png_bytes()), name)})
    assert writes == []  # nothing written anywhere, near the name or not
    name = name.replace("\x00", "")  # control characters are dropped before echoing
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["filename"] == name[:254] + (
        "…" if len(name) > 255 else ""
    )
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "<script>alert" not in html
    if "script" in name:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert list(tmp_path.iterdir()) == []


def test_26_uploads_never_touch_the_disk(client, monkeypatch):
    """Werkzeug spills file parts over 500 KB to temp files; ours must stay in memory."""
    import tempfile

    import werkzeug.formparser

    def refuse(*args, **kwargs):
        raise AssertionError("an upload was about to be written to disk")

    monkeypatch.setattr(tempfile, "SpooledTemporaryFile", refuse)
    monkeypatch.setattr(tempfile, "TemporaryFile", refuse)
    monkeypatch.setattr(werkzeug.formparser, "default_stream_factory", refuse)
    big = encode(noise(800, 800), "PNG")
    assert len(big) > 1024 * 1024
    assert post(client, big, "big.png").status_code == 200


# ================================================================ issue 12: the rest
def test_file_and_files_together_hold_at_most_64(client):
    one = png_bytes()
    files = [(io.BytesIO(one), f"{i}.png") for i in range(64)]
    response = client.post(
        "/api/v1/predict", data={"file": (io.BytesIO(one), "extra.png"), "files": files}
    )
    assert response.status_code == 400
    assert "at most 64" in response.get_json()["error"]["message"]


def test_413_page_cleans_the_filename(client):
    name = "\x1b[31m" + "\x07evil\u202e\x7f" * 1000  # 8 KB of control characters and text
    body = {"file": (io.BytesIO(b"\0" * (MAX_UPLOAD_BYTES + 1)), name)}
    for path in ("/predict", "/api/v1/predict"):
        response = client.post(path, data=body if path == "/predict" else dict(body))
        body = {"file": (io.BytesIO(b"\0" * (MAX_UPLOAD_BYTES + 1)), name)}
        text = response.get_data(as_text=True)
        assert response.status_code == 413
        assert not any(ch in text for ch in "\x1b\x07\u202e\x7f")
        assert "evilevil" in text and text.count("evil") < 100  # echoed, cleaned, bounded
