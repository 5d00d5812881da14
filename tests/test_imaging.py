"""imaging.py unit by unit, for what the hostile-upload tests reach only from outside:
the JPEG scan counter, wide-range grey scaling, format names in refusals, and that
open_image passes its limits on. Most of these were survivors of mutation testing."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from helpers import png_bytes
from PIL import Image

from imageclf.errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError
from imageclf.imaging import (
    WEB_FORMATS,
    decode_image,
    format_extensions,
    format_mime_type,
    jpeg_scan_count,
    open_image,
)

SOI, EOI = b"\xff\xd8", b"\xff\xd9"


def _segment(marker: int, payload: bytes = b"") -> bytes:
    """A marker with a big-endian length that counts itself (2 bytes) and the payload."""
    return bytes([0xFF, marker]) + (len(payload) + 2).to_bytes(2, "big") + payload


def _scan(data: bytes = b"\x12\x34\xff\x00\x56\xff\xd3\x78") -> bytes:
    """SOS header, then entropy-coded data with a stuffed 0xFF00 and an RST marker
    (neither ends the scan)."""
    return _segment(0xDA, b"\x01\x01\x00\x00\x3f\x00") + data


def test_scans_are_counted_and_stuffing_and_restarts_do_not_end_one():
    data = SOI + _segment(0xE0, b"JFIF\x00" + bytes(9)) + _scan() + _scan() + _scan() + EOI
    assert jpeg_scan_count(data) == 3


def test_metadata_is_skipped_by_its_big_endian_length():
    """An EXIF segment of 300 bytes holding a thumbnail's own SOS markers: not counted.
    Read little-endian (or from the wrong byte), the length would land inside it."""
    thumbnail = (b"\xff\xda" + bytes(8)) * 29 + bytes(8)
    assert len(thumbnail) == 298 and thumbnail.count(b"\xff\xda") == 29
    data = SOI + _segment(0xE1, thumbnail) + _scan() + EOI
    assert jpeg_scan_count(data) == 1


def test_fill_bytes_and_markers_without_a_length_between_segments():
    between = b"\xff\xff\xff" + b"\xff\xd0" + b"\xff\xd7" + b"\xff\x01"
    assert jpeg_scan_count(SOI + between + _scan() + between + _scan() + EOI) == 2


def test_a_scan_header_ending_exactly_at_the_end_is_counted():
    assert jpeg_scan_count(SOI + b"\xff\xda\x00\x02") == 1


def test_counting_stops_just_past_the_limit():
    data = SOI + _scan() * 50 + EOI
    assert jpeg_scan_count(data, stop_after=50) == 50
    assert jpeg_scan_count(data, stop_after=10) == 11  # enough to know it is too many


def test_garbage_where_a_marker_must_be_stops_the_walk():
    assert jpeg_scan_count(SOI + _segment(0xE0, b"x") + b"garbage" + _scan() + EOI) == 0


@pytest.mark.parametrize("progressive", [False, True])
def test_real_jpegs_match_a_count_of_their_sos_markers(progressive):
    pixels = np.random.default_rng(0).integers(0, 256, (64, 48, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "JPEG", progressive=progressive, quality=90)
    data = buffer.getvalue()
    # Pillow writes no thumbnail, and entropy data stuffs every 0xFF: a plain count works.
    expected = data.count(b"\xff\xda")
    assert jpeg_scan_count(data) == expected and (expected > 1) == progressive


# ---------------------------------------------------------------- wide-range grey
def _grey(mode: str, values: np.ndarray) -> bytes:
    """A TIFF in ``mode``: I;16 from uint16, I from int32, F from float32 values."""
    height, width = values.shape
    if mode == "I;16":
        image = Image.frombytes(mode, (width, height), values.astype("<u2").tobytes())
    else:
        image = Image.fromarray(values)
    assert image.mode == mode
    buffer = io.BytesIO()
    image.save(buffer, "TIFF")
    return buffer.getvalue()


def test_16_bit_grey_is_scaled_by_its_range_not_its_brightest_pixel():
    """A dark 16-bit picture stays dark; a full-range one spans 0..255."""
    dark = np.full((4, 4), 1000, np.uint16)
    assert np.asarray(open_image(_grey("I;16", dark)))[0, 0].tolist() == [4, 4, 4]  # 1000/257
    ramp = np.linspace(0, 65535, 16).astype(np.uint16).reshape(4, 4)
    out = np.asarray(open_image(_grey("I;16", ramp)))[..., 0]
    assert out.min() == 0 and out.max() == 255
    np.testing.assert_array_equal(out.ravel(), np.floor(ramp.ravel() / 257 + 0.5))


def test_32_bit_and_float_grey():
    # 32-bit integers beyond 8 bits (say 12-bit sensor data): scaled by the brightest.
    twelve_bit = np.array([[0, 1024, 2048, 4095]], np.int32)
    assert np.asarray(open_image(_grey("I", twelve_bit)))[0, :, 0].tolist() == [0, 64, 128, 255]
    # Values that already fit 0..255 (in I or F) are taken as they are, rounded.
    small = np.array([[0, 1, 100.4, 100.6, 255]], np.float32)
    assert np.asarray(open_image(_grey("F", small)))[0, :, 0].tolist() == [0, 1, 100, 101, 255]
    negative = np.array([[-10, 0, 100, 200]], np.float32)  # not 8-bit: scaled by the max
    assert np.asarray(open_image(_grey("F", negative)))[0, :, 0].tolist() == [0, 0, 128, 255]


def test_tall_wide_range_pictures_are_scaled_in_every_row_block():
    tall = np.full((700, 100), 65535, np.uint16)  # more rows than one 256-row block
    out = np.asarray(open_image(_grey("I;16", tall)))
    assert (out == 255).all()


# ---------------------------------------------------------------- refusals and limits
@pytest.mark.parametrize(
    "data, name",
    [
        (b"%PDF-1.7\n...", "PDF"),
        (b"  \n\t<svg xmlns='http://www.w3.org/2000/svg'/>", "SVG/HTML/XML"),
        (b"<!DOCTYPE html><html></html>", "SVG/HTML/XML"),
    ],
)
def test_a_refused_format_is_named(data, name):
    with pytest.raises(UnsupportedFormatError, match=f"^{re.escape(name)} files are not accepted"):
        open_image(data, formats=WEB_FORMATS)


def test_a_known_but_refused_image_format_is_named():
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8)).save(buffer, "TIFF")
    with pytest.raises(UnsupportedFormatError, match=r"^TIFF files are not accepted"):
        open_image(buffer.getvalue(), formats=WEB_FORMATS)


def test_open_image_passes_its_limits_on():
    with pytest.raises(UnsupportedFormatError, match="PNG files are not accepted"):
        open_image(png_bytes(), formats=("JPEG",))
    with pytest.raises(ImageTooLargeError, match="limit is 100 pixels"):
        open_image(png_bytes(size=(32, 32)), max_pixels=100)
    buffer = io.BytesIO()
    Image.new("RGB", (800, 600), (10, 20, 30)).save(buffer, "JPEG")
    reduced = open_image(buffer.getvalue(), reduce_to=100)
    assert 100 <= max(reduced.size) < 800


def test_format_extensions_and_mime_types():
    assert set(format_extensions("JPEG")) >= {".jpg", ".jpeg"}
    assert ".png" not in format_extensions("JPEG")
    assert format_extensions("PNG") == sorted(format_extensions("PNG"))
    assert [format_mime_type(f) for f in ("PNG", "JPEG", "GIF")] == [
        "image/png",
        "image/jpeg",
        "image/gif",
    ]


# ---------------------------------------------------------------- arrays as pictures
def test_a_float_array_is_the_same_picture_through_every_entry_point(tiny_bundle):
    """One rule for arrays (``imaging.picture_from_array``): floats in 0..1 are scaled, so
    ``open_image``, ``decode_image`` and every ``Predictor`` method give the answer the
    uint8 array gives, whichever of them the array is handed to."""
    from imageclf import Predictor

    pixels = np.random.default_rng(0).integers(0, 256, (20, 24, 3), dtype=np.uint8)
    floats = pixels / 255.0
    expected = np.asarray(open_image(pixels))
    np.testing.assert_array_equal(expected, pixels)
    np.testing.assert_array_equal(np.asarray(open_image(floats)), expected)
    np.testing.assert_array_equal(np.asarray(decode_image(floats).picture), expected)
    predictor = Predictor.load(tiny_bundle)
    answer = predictor.predict(pixels)
    assert predictor.predict(floats) == answer
    assert predictor.predict(open_image(floats)) == answer
    assert predictor.predict(floats[None]) == answer  # a batch of one
    prepared = predictor.prepare(pixels)
    np.testing.assert_array_equal(predictor.prepare(floats), prepared)
    np.testing.assert_array_equal(predictor.preprocess(floats)[0], prepared)
    heat = predictor.explain(pixels).heatmap
    np.testing.assert_array_equal(predictor.explain(floats).heatmap, heat)


def test_an_array_with_alpha_is_composited_like_a_file_with_alpha():
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # red, but entirely transparent
    rgba[:4, :, 3] = 255  # the top half opaque
    buffer = io.BytesIO()
    Image.fromarray(rgba).save(buffer, "PNG")
    from_array = np.asarray(open_image(rgba))
    np.testing.assert_array_equal(from_array, np.asarray(open_image(buffer.getvalue())))
    assert from_array[0, 0].tolist() == [200, 0, 0] and from_array[7, 0].tolist() == [255] * 3


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((8, 8, 3), 300.0), r"0\.\.255"),
        (np.full((8, 8, 3), np.inf), "NaN or infinity"),
        (np.zeros((8, 8, 3), bool), "numbers"),
        (np.zeros((8, 8, 2), np.uint8), "channels"),
    ],
)
def test_open_image_refuses_arrays_that_are_not_pictures(array, message):
    with pytest.raises(InvalidImageError, match=message):
        open_image(array)


def test_arrays_meet_the_same_geometry_limits_as_files():
    with pytest.raises(ImageTooLargeError, match="limit is 100 pixels"):
        open_image(np.zeros((32, 32), np.float32), max_pixels=100)
    with pytest.raises(ImageTooLargeError, match="aspect ratios"):
        open_image(np.zeros((1, 40, 3), np.uint8))
