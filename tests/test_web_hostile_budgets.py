"""HOSTILE_INPUTS.md against the app, the work a picture can demand: a 12 MP photo, pixel
bombs (cases 2, 12-14), a 500-frame animation (17), and issue 12's decode budgets (JPEG
scans, pixels and seconds per request) and per-request memory. The hostile files are
made here (crafted.py), with Pillow or by hand; nothing is stored.

Work is asserted by counting it (decoders started, reads made, pixels charged), never by
a wall-clock limit: the cores are shared. Timings belong in benchmarks/. Memory is
measured in a fresh process (memory_probe.py) whose peak one request alone can raise.
"""

from __future__ import annotations

import functools
import io
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from crafted import (
    animated_webp,
    bilevel_png,
    distinct_frame_gif,
    encode,
    noise,
    progressive_jpeg,
    rle4_bmp,
)
from helpers import make_tiny_bundle, post, probabilities
from PIL import Image

from imageclf import imaging
from imageclf.web.extensions import get_service
from imageclf.web.uploads import MAX_UPLOAD_BYTES

TESTS = Path(__file__).resolve().parent


# What a fresh process's peak may grow by for one request within the documented limits,
# and what it may still hold afterwards (issue 12: ~500 MB and ~50 MB).
PEAK_LIMIT_MB = 500
HELD_LIMIT_MB = 50
# case -> the status it must get (the cases are built in memory_probe.py)
MEMORY_CASES = {
    "bomb-20000": 422,
    "1bit-5000-x4": 200,
    "1bit-5000-x64": 413,
    "webp-canvas-5000-x4": 200,
    "webp-canvas-5000-x40": 413,
    "rgba-5000-x2": 200,
    "gray16-5000-x2": 200,
}


@pytest.fixture(scope="module")
def memory_probe(app, tmp_path_factory) -> dict[str, dict]:
    """Each memory case as one request in a fresh process (memory_probe.py)."""
    bundle = make_tiny_bundle(tmp_path_factory.mktemp("probe") / "tiny.safetensors")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        [sys.executable, str(TESTS / "memory_probe.py"), str(bundle), *MEMORY_CASES],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads(line) for line in done.stdout.splitlines() if line.startswith("{")]
    return {r["case"]: r for r in results}


@pytest.fixture
def decoders(monkeypatch) -> list[tuple[str, str]]:
    """Every Pillow decoder started while the test runs, as (decoder, mode): the work
    done, counted (a decoder per frame or image decoded)."""
    started: list[tuple[str, str]] = []
    real = Image._getdecoder

    def counting(mode, decoder_name, *args, **kwargs):
        started.append((decoder_name, mode))
        return real(mode, decoder_name, *args, **kwargs)

    monkeypatch.setattr(Image, "_getdecoder", counting)
    return started


@pytest.fixture
def loads(monkeypatch) -> list[tuple[str | None, tuple[int, int]]]:
    """(format, size) of every image file loaded (pixels decoded) while the test runs."""
    from PIL import ImageFile

    seen: list[tuple[str | None, tuple[int, int]]] = []
    real = ImageFile.ImageFile.load

    def recording(self):
        if self.tile:  # only a load that decodes something
            seen.append((self.format, self.size))
        return real(self)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording)
    return seen


# 2 ---------------------------------------------------------------- a 12 MP photo
def test_02_large_jpeg_photo_is_fast(client, loads):
    """Fast because it is decoded at 1/8 scale: 0.2 MP of pixels instead of 12 MP."""
    ramp = Image.linear_gradient("L")
    channels = [ramp.resize((4000, 3000)), ramp.rotate(90).resize((4000, 3000)), noise(400, 300)]
    channels[2] = channels[2].convert("L").resize((4000, 3000))
    photo = encode(Image.merge("RGB", channels), "JPEG", quality=85)
    assert len(photo) < MAX_UPLOAD_BYTES
    response = post(client, photo, "photo.jpg")
    assert response.status_code == 200
    assert loads == [("JPEG", (500, 375))]  # the draft: the only pixels decoded
    page = client.post("/predict", data={"file": (io.BytesIO(photo), "photo.jpg")})
    assert "4000×3000" in page.get_data(as_text=True)  # the real size, not the draft's


# 12, 13, 14 ---------------------------------------------------------------- pixel bombs
def test_12_tiny_file_huge_canvas_is_422_and_memory_stays_flat(client, decoders, memory_probe):
    bomb = bilevel_png(20000, 20000)
    assert len(bomb) < 200_000  # 400 M pixels in a small file
    decoders.clear()
    response = post(client, bomb, "bomb.png")
    assert response.status_code == 422
    assert decoders == []  # refused from the header
    # Memory, measured in a fresh process whose peak this request alone can raise:
    result = memory_probe["bomb-20000"]
    assert result["status"] == 422
    assert result["peak_mb"] < 50, result  # decoding it would need 400 MB+


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
def test_14_huge_header_with_truncated_data_is_refused_before_decoding(client, fmt, decoders):
    if fmt == "PNG":
        data = bilevel_png(60000, 60000, rows=10)
    else:
        data = bytearray(encode(noise(64, 64), "JPEG"))
        sof = data.index(b"\xff\xc0")
        data[sof + 5 : sof + 9] = struct.pack(">HH", 60000, 60000)  # height, width
        data = bytes(data[: len(data) // 2])
    decoders.clear()  # count from here: building the test's files decoded some
    response = post(client, data, "header.img")
    assert response.status_code in (400, 422)
    assert decoders == []  # no pixel was decoded


# 17 ---------------------------------------------------------------- animation
def test_17_500_frame_gif_uses_frame_zero_quickly(client, decoders):
    gif = distinct_frame_gif(500)
    with Image.open(io.BytesIO(gif)) as check:
        assert check.n_frames == 500  # distinct frames: Pillow merged none of them
        first = encode(check.convert("RGB"), "PNG")
    decoders.clear()  # count from here: building the test's files decoded some
    animated = probabilities(client, gif)
    assert decoders == [("gif", "L")] or decoders == [("gif", "P")]  # frame 0, nothing else
    assert animated == pytest.approx(probabilities(client, first), abs=1e-6)


# ================================================================ issue 12: decode budgets
@pytest.mark.parametrize("scans", [imaging.MAX_JPEG_SCANS + 1, 3000])
def test_progressive_jpeg_with_too_many_scans_is_422_before_decoding(client, decoders, scans):
    bomb = progressive_jpeg(4992, 4992, scans)
    assert len(bomb) < 1024 * 1024  # ~100 KB that would take minutes of CPU
    decoders.clear()
    response = post(client, bomb, "scans.jpg")
    assert response.status_code == 422, response.get_json()
    assert "scans" in response.get_json()["error"]["message"]
    assert decoders == []  # counted from the header; nothing decoded


def test_progressive_jpegs_within_the_scan_limit_are_classified(client):
    ours = progressive_jpeg(256, 192, imaging.MAX_JPEG_SCANS)
    pillows = encode(noise(256, 192), "JPEG", progressive=True)
    # An EXIF thumbnail or any metadata may hold scan markers of its own: skipped by length.
    fake_markers = progressive_jpeg(64, 48, 10, app1=b"Exif\0\0" + b"\xff\xda" * 500)
    for data in (ours, pillows, fake_markers):
        assert post(client, data, "ok.jpg").status_code == 200


def test_request_pixel_budget_is_four_pictures_at_the_limit(client, decoders):
    """64 one-bit 5000x5000 PNGs are a 0.2 MB body; each is under the per-image limit,
    the request is not: refused at the fifth, from its header."""
    data = bilevel_png(5000, 5000)
    allowed = imaging.MAX_REQUEST_PIXELS // (5000 * 5000)
    assert allowed == 4
    files = [(io.BytesIO(data), f"{i}.png") for i in range(64)]
    decoders.clear()
    response = client.post("/api/v1/predict", data={"files": files})
    assert response.status_code == 413
    message = response.get_json()["error"]["message"]
    assert "file 5 (4.png)" in message and "pixels in total" in message
    assert len(decoders) == allowed


@pytest.mark.parametrize(
    ("kind", "size", "build"),
    [
        ("1-bit PNG", 5000, lambda: bilevel_png(5000, 5000)),
        ("WebP canvas", 5000, lambda: animated_webp(5000, 5000)),
        ("RLE BMP", 2000, lambda: rle4_bmp(2000, 2000)),
        ("GIF", 3000, lambda: encode(Image.new("P", (3000, 3000), 3), "GIF")),
        ("progressive JPEG", 4000, lambda: progressive_jpeg(4000, 4000, 12)),
    ],
)
def test_request_pixel_budget_holds_for_every_format(
    client, app, decoders, monkeypatch, kind, size, build
):
    """The budget counts header pixels before decoding, whatever the format."""
    monkeypatch.setattr(get_service(app), "max_request_pixels", 2 * size * size)
    frozen = functools.partial(imaging.DecodeBudget, clock=lambda: 0.0)  # pixels only
    monkeypatch.setattr("imageclf.web.service.DecodeBudget", frozen)
    data = build()
    files = [(io.BytesIO(data), f"{i}.img") for i in range(5)]
    decoders.clear()
    response = client.post("/api/v1/predict", data={"files": files})
    assert response.status_code == 413, (kind, response.get_json())
    message = response.get_json()["error"]["message"]
    assert "file 3 (2.img)" in message and "pixels in total" in message
    assert len({d for d in decoders if d[0] != "raw"} or decoders) >= 1
    assert len([d for d in decoders if d[0] != "raw"]) <= 2  # the third was never decoded


class CountingClock:
    """A clock that advances a fixed step each time it is read: the decode deadline is
    then reached after a known number of checks, on any machine."""

    def __init__(self, step: float) -> None:
        self.now, self.step, self.reads = 0.0, step, 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


def test_decode_time_budget_stops_a_slow_decoder_midway(client, monkeypatch, decoders):
    """RLE BMPs are decoded in Python, a few bytes per read: 8 of them at 4000x4000 need
    ~250,000 reads. The budget (5 s, here 5,000 clock steps of 1 ms) stops the decoder
    between reads, long before that: work is bounded, whatever the machine's speed."""
    clock = CountingClock(0.001)
    budget = functools.partial(imaging.DecodeBudget, clock=clock)
    monkeypatch.setattr("imageclf.web.service.DecodeBudget", budget)
    data = rle4_bmp(4000, 4000)
    files = [(io.BytesIO(data), f"{i}.bmp") for i in range(8)]
    decoders.clear()
    response = client.post("/api/v1/predict", data={"files": files})
    assert response.status_code == 413
    assert "decoding took longer" in response.get_json()["error"]["message"]
    steps = imaging.DECODE_SECONDS / clock.step
    assert clock.reads <= steps + 2  # the reads made before the deadline, and no more
    assert len(decoders) == 1  # the first picture was cut short; the rest never began


def test_decode_budget_is_per_request(client, monkeypatch):
    """A refused request leaves nothing behind: the next one gets a whole budget."""
    big = bilevel_png(5000, 5000)
    over = {"files": [(io.BytesIO(big), f"{i}.png") for i in range(5)]}
    assert client.post("/api/v1/predict", data=over).status_code == 413
    under = {"files": [(io.BytesIO(big), f"{i}.png") for i in range(4)]}
    assert client.post("/api/v1/predict", data=under).status_code == 200


@pytest.mark.parametrize("case", [c for c in MEMORY_CASES if c != "bomb-20000"])
def test_request_memory_is_bounded_and_returned(memory_probe, case):
    """Each picture is reduced as soon as it is decoded and the memory handed back: a
    request within the limits raises a fresh process's peak by at most ~500 MB, and
    the process holds at most ~50 MB more afterwards (before: 6.4 GB and 4.2 GB)."""
    result = memory_probe[case]
    assert result["status"] == MEMORY_CASES[case], result
    assert result["peak_mb"] < PEAK_LIMIT_MB, result
    assert result["held_mb"] < HELD_LIMIT_MB, result
