"""Every case of HOSTILE_INPUTS.md against the app (Flask test client; real sockets are in
test_web_server.py). The hostile files are made here, with Pillow or by hand."""

from __future__ import annotations

import base64
import io
import re
import resource
import struct
import threading
import time
import warnings
import zlib
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from helpers import make_tiny_bundle, png_bytes
from PIL import Image
from werkzeug.test import EnvironBuilder, run_wsgi_app

from imageclf.web import create_app
from imageclf.web.uploads import DRAIN_LIMIT_BYTES, MAX_UPLOAD_BYTES

ALLOWED = "PNG, JPEG, GIF, WEBP, BMP"


@pytest.fixture(scope="module")
def app(tmp_path_factory):
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("hostile") / "tiny.safetensors")
    return create_app(bundle, TESTING=True, IMAGECLF_MODEL_LOADING="eager")


@pytest.fixture
def client(app):
    return app.test_client()


def post(client, data: bytes, name: str = "image.png", content_type: str | None = None, **extra):
    file = (io.BytesIO(data), name, content_type) if content_type else (io.BytesIO(data), name)
    return client.post("/api/v1/predict", data={"file": file, **extra})


def probabilities(client, data: bytes) -> dict[str, float]:
    response = post(client, data, top_k="10")
    assert response.status_code == 200, response.get_json()
    return {t["label"]: t["probability"] for t in response.get_json()["predictions"][0]["top"]}


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _chunk(kind: bytes, payload: bytes) -> bytes:
    return (
        struct.pack(">I", len(payload))
        + kind
        + payload
        + struct.pack(">I", zlib.crc32(kind + payload))
    )


def bilevel_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A one-colour 1-bit PNG written by hand: a few KB that claim width x height pixels
    (Pillow itself would allocate the whole canvas to make one). ``rows`` < height
    writes only that many rows: a truncated image."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
    data += packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + _chunk(b"IHDR", header)
        + _chunk(b"IDAT", data)
        + (_chunk(b"IEND", b"") if rows is None else b"")
    )


def rss_high_water_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def current_rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


# 1 ---------------------------------------------------------------- valid small PNG
def test_01_valid_small_png_probabilities_sum_to_one(client):
    probs = probabilities(client, png_bytes())
    assert len(probs) == 10
    assert sum(probs.values()) == pytest.approx(1.0, abs=1e-5)


# 2 ---------------------------------------------------------------- a 12 MP photo
def test_02_large_jpeg_photo_is_fast(client):
    ramp = Image.linear_gradient("L")
    channels = [ramp.resize((4000, 3000)), ramp.rotate(90).resize((4000, 3000)), noise(400, 300)]
    channels[2] = channels[2].convert("L").resize((4000, 3000))
    photo = encode(Image.merge("RGB", channels), "JPEG", quality=85)
    assert len(photo) < MAX_UPLOAD_BYTES
    started = time.perf_counter()
    response = post(client, photo, "photo.jpg")
    assert response.status_code == 200
    assert time.perf_counter() - started < 3.0  # draft mode decodes at 1/8 scale
    page = client.post("/predict", data={"file": (io.BytesIO(photo), "photo.jpg")})
    assert "4000×3000" in page.get_data(as_text=True)  # the real size, not the draft's


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


# 12, 13, 14 ---------------------------------------------------------------- pixel bombs
def test_12_tiny_file_huge_canvas_is_422_and_memory_stays_flat(client):
    bomb = bilevel_png(20000, 20000)
    assert len(bomb) < 200_000  # 400 M pixels in a small file
    before = rss_high_water_mb()
    response = post(client, bomb, "bomb.png")
    assert response.status_code == 422
    assert rss_high_water_mb() - before < 50  # decoding it would need 400 MB+


@pytest.mark.parametrize("side", [10000, 6000])
def test_13_10000_square_is_422_under_our_limit(client, side):
    """100 MP trips Pillow's own bomb check too; 36 MP only ours (25 MP)."""
    response = post(client, bilevel_png(side, side), "big.png")
    assert response.status_code == 422
    message = response.get_json()["error"]["message"]
    assert "too large" in message or "25,000,000" in message
    if side == 6000:
        assert "25,000,000" in message


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_14_huge_header_with_truncated_data_is_refused_before_decoding(client, fmt):
    if fmt == "PNG":
        data = bilevel_png(60000, 60000, rows=10)
    else:
        data = bytearray(encode(noise(64, 64), "JPEG"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
        data = bytes(data[: len(data) // 2])
    started = time.perf_counter()
    response = post(client, data, "header.img")
    assert response.status_code in (400, 422)
    assert time.perf_counter() - started < 1.0


# 15, 16 ---------------------------------------------------------------- damaged files
@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_15_file_cut_in_half_is_400(client, fmt):
    data = encode(noise(64, 64), fmt)
    response = post(client, data[: len(data) // 2], f"half.{fmt.lower()}")
    assert response.status_code == 400


@pytest.mark.parametrize("chunk", [b"IHDR", b"IDAT"])
def test_16_png_with_bad_crc_is_400(client, chunk):
    data = bytearray(encode(noise(32, 32), "PNG"))
    start = data.index(chunk)
    length = struct.unpack(">I", data[start - 4 : start])[0]
    data[start + 4 + length] ^= 0xFF  # first byte of the chunk's CRC
    response = post(client, bytes(data), "crc.png")
    assert response.status_code == 400
    assert "not a valid image" in response.get_json()["error"]["message"]


# 17 ---------------------------------------------------------------- animation
def test_17_500_frame_gif_uses_frame_zero_quickly(client):
    frames = [Image.new("P", (32, 32), i % 256) for i in range(500)]
    gif = encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
    first = encode(Image.open(io.BytesIO(gif)).convert("RGB"), "PNG")
    started = time.perf_counter()
    animated = probabilities(client, gif)
    assert time.perf_counter() - started < 2.0
    assert animated == pytest.approx(probabilities(client, first), abs=1e-6)


# 18 ---------------------------------------------------------------- palette + transparency
def test_18_palette_png_with_trns_no_warning(client):
    image = Image.new("P", (32, 32), 1)
    image.putpalette([255, 0, 0, 0, 255, 0] + [0, 0, 0] * 254)
    image.paste(0, (0, 0, 16, 32))
    data = encode(image, "PNG", transparency=0)
    assert Image.open(io.BytesIO(data)).info.get("transparency") == 0
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any warning (Pillow's palette one included) fails
        response = post(client, data, "palette.png")
    assert response.status_code == 200


# 19 ---------------------------------------------------------------- hidden pixels
def test_19_garbage_under_transparent_alpha_is_ignored(client):
    rgb = np.array(noise(32, 32, seed=19))
    alpha = np.full((32, 32), 255, np.uint8)
    alpha[:, :16] = 0
    rgba = Image.fromarray(np.dstack([rgb, alpha]), "RGBA")
    composited = rgb.copy()
    composited[:, :16] = 255  # the app's fixed background is white
    hidden = probabilities(client, encode(rgba))
    shown = probabilities(client, encode(Image.fromarray(composited)))
    assert hidden == pytest.approx(shown, abs=1e-6)


# 20, 21 ---------------------------------------------------------------- modes
@pytest.mark.parametrize("mode", ["1", "L", "LA"])
def test_20_modes_1_l_la_are_200(client, mode):
    color = 1 if mode == "1" else (128 if mode == "L" else (128, 200))
    response = post(client, encode(Image.new(mode, (32, 32), color)), f"{mode}.png")
    assert response.status_code == 200


def test_21_16_bit_ramp_is_not_saturated(client):
    ramp = np.tile(np.linspace(0, 65535, 256).astype(np.uint16), (32, 1))
    data = encode(Image.fromarray(ramp), "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    html = client.post("/predict", data={"file": (io.BytesIO(data), "ramp.png")})
    page = html.get_data(as_text=True)
    assert html.status_code == 200
    match = re.search(r'id="uploaded"[^>]*src="data:image/png;base64,([^"]+)"', page)
    shown = np.asarray(Image.open(io.BytesIO(base64.b64decode(match.group(1)))).convert("L"))
    assert shown[:, 0].max() < 10 and shown[:, -1].min() > 245
    assert 100 < shown.mean() < 155  # a ramp, not a white (saturated) picture


# 22 ---------------------------------------------------------------- CMYK
def test_22_cmyk_jpeg_is_200(client):
    response = post(client, encode(noise(32, 32).convert("CMYK"), "JPEG"), "cmyk.jpg")
    assert response.status_code == 200


# 23 ---------------------------------------------------------------- EXIF orientation
def test_23_exif_orientation_6_matches_upright(client):
    upright = noise(40, 24, seed=23)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # a camera held sideways
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    rotated = encode(stored, "PNG", exif=exif.tobytes())
    assert probabilities(client, rotated) == pytest.approx(
        probabilities(client, encode(upright)), abs=1e-6
    )
    page = client.post("/predict", data={"file": (io.BytesIO(rotated), "sideways.png")})
    assert "40×24" in page.get_data(as_text=True)  # shown upright
    # and the tag really matters: without it the same pixels classify differently
    assert probabilities(client, encode(stored)) != pytest.approx(
        probabilities(client, encode(upright)), abs=1e-6
    )


# 24 ---------------------------------------------------------------- degenerate sizes
@pytest.mark.parametrize(("size", "status"), [((1, 1), 200), ((1, 10000), 422), ((10000, 1), 422)])
def test_24_extreme_sizes_by_policy(client, size, status):
    response = post(client, encode(Image.new("RGB", size, "blue")), "odd.png")
    assert response.status_code == status


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
@pytest.mark.parametrize("name", ["../../x", "<script>alert(1)</script>" * 400])
def test_26_hostile_filename_is_escaped(client, name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    response = post(client, png_bytes(), name)
    assert response.status_code == 200
    assert response.get_json()["predictions"][0]["filename"] == name[:254] + (
        "…" if len(name) > 255 else ""
    )
    page = client.post("/predict", data={"file": (io.BytesIO(png_bytes()), name)})
    html = page.get_data(as_text=True)
    assert page.status_code == 200
    assert "<script>alert" not in html
    if "script" in name:
        assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html
    assert list(tmp_path.iterdir()) == []  # nothing was written anywhere near the name


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
    app.extensions["imageclf"].load()
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
