"""HOSTILE_INPUTS.md against the app, pictures that are odd but small: damaged files
(cases 15, 16), palettes, transparency, modes, CMYK, EXIF orientation, degenerate sizes
(18-24), and issue 12's orientation applied once on every path (model, page, Grad-CAM,
Predictor). Each must be refused cleanly or classified as the user sees it.
"""

from __future__ import annotations

import base64
import io
import re
import struct
import warnings

import numpy as np
import pytest
from crafted import encode, noise, png_with_xmp, xmp_packet
from helpers import decode_data_url, post, probabilities
from PIL import Image

from imageclf import imaging
from imageclf.web.extensions import get_service


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


# ================================================================ issue 12: orientation once
UPRIGHT_STRIPE = np.zeros((24, 40), np.uint8)
UPRIGHT_STRIPE[:, :6] = 255  # a bright band on the left, upright


@pytest.mark.parametrize(
    "orientation_xml",
    [
        ' tiff:Orientation="6">',  # attribute form
        "><tiff:Orientation>6</tiff:Orientation>",  # element form
        "><tiff:Orientation>6\n</tiff:Orientation>",  # Pillow reads it but cannot remove it
    ],
)
@pytest.mark.parametrize("mode", ["L", "RGB", "LA"])
def test_orientation_is_applied_once_on_every_path(client, app, orientation_xml, mode):
    """The picture is turned once, on decoding, and carries no orientation afterwards:
    the model, the page and Grad-CAM all see what the user sees."""
    upright = Image.fromarray(UPRIGHT_STRIPE).convert(mode)
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # orientation 6 turns it back
    sideways = png_with_xmp(stored, xmp_packet(orientation_xml))
    straight = encode(upright)
    assert probabilities(client, sideways) == pytest.approx(
        probabilities(client, straight), abs=1e-6
    )
    page = client.post("/predict", data={"file": (io.BytesIO(sideways), "x.png")})
    html = page.get_data(as_text=True)
    assert "40×24" in html
    shown = np.asarray(decode_data_url(html, "uploaded").convert("L"))
    assert shown.shape == (24, 40) and shown[:, :6].min() > 200 and shown[:, 8:].max() < 50
    predictor = get_service(app).predictor()
    ours = get_service(app).decode_all([upload_of(sideways)], 384)[0].picture
    assert np.array_equal(
        np.asarray(predictor.explain(ours).overlay),
        np.asarray(predictor.explain(imaging.open_image(straight)).overlay),
    )
    # The CLI's path too: bytes straight into Predictor.
    assert np.allclose(
        predictor.predict_proba(predictor.preprocess(sideways)),
        predictor.predict_proba(predictor.preprocess(straight)),
        atol=1e-6,
    )


def upload_of(data: bytes):
    from imageclf.web.uploads import Upload

    return Upload("x.png", data)
