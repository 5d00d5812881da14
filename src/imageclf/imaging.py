"""Turn untrusted image bytes into a clean RGB picture, safely and the same way everywhere.

Training data readers, ``Predictor`` and the web app all go through here, so a
photo uploaded to the server is preprocessed exactly like the training images.
"""

from __future__ import annotations

import io
import math
import os
import re
import time
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import (
    DecodeBudgetError,
    ImageError,
    ImageTooLargeError,
    InvalidImageError,
    UnsupportedFormatError,
    UserInputError,
)
from .fileio import read_file_capped

# File extensions worth trying when walking folders (datasets, `imageclf predict`).
IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())
# Formats the web app accepts; everything Pillow can read is allowed for local files.
# The upload page's accept list, names and client-side check all derive from this.
WEB_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
# Our own decompression-bomb limit, checked from the header before any pixel is decoded.
# 25 MP admits a 5000x5000 photo and refuses the 10000x10000 (100 MP) kind.
MAX_PIXELS = 25_000_000
# A 1x10000 strip squashed to 32x32 is noise, not a picture: refuse it rather than guess.
MAX_ASPECT_RATIO = 20.0
# Each scan of a progressive JPEG is one more pass over every block of the picture: a
# ~1 MB file with thousands of empty scans keeps a core busy for minutes. Encoders write
# about 10 (libjpeg's progressive script) and rarely more than 20.
MAX_JPEG_SCANS = 64
# A local file bigger than this is not an image we can use (a 25 MP picture stored
# uncompressed at 16 bits x 4 channels is 200 MB); checked before reading anything.
MAX_FILE_BYTES = 256 * 1024 * 1024
# What one web request may spend decoding, all its images together (see DecodeBudget):
# four pictures at the per-image limit, and a few seconds of wall-clock time.
MAX_REQUEST_PIXELS = 4 * MAX_PIXELS
DECODE_SECONDS = 5.0
# Alpha is composited onto one fixed colour so hidden pixels under alpha=0 never matter.
BACKGROUND = (255, 255, 255)

# Pillow's default: a truncated file is an error, never a silently half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False


def format_extensions(fmt: str) -> list[str]:
    """File extensions Pillow registers for ``fmt`` (``".jpg"``, ``".jpeg"``...)."""
    return sorted(ext for ext, name in Image.registered_extensions().items() if name == fmt)


def format_mime_type(fmt: str) -> str | None:
    """The MIME type Pillow registers for ``fmt``, if any."""
    Image.init()
    return Image.MIME.get(fmt)


ImageSource = str | os.PathLike | bytes | bytearray | BinaryIO | Image.Image | np.ndarray

_MARKUP_PREFIXES = (b"<?xml", b"<svg", b"<!doctype", b"<html", b"<!--")


def _describe_unsupported(head: bytes) -> str | None:
    """Name a recognisable non-allowed format from its first bytes, if any."""
    stripped = head.lstrip().lower()
    if stripped.startswith(b"%pdf"):
        return "PDF"
    if stripped.startswith(_MARKUP_PREFIXES):
        return "SVG/HTML/XML"
    try:
        with Image.open(io.BytesIO(head + b"\0" * 64)) as probe:  # header parse only
            return probe.format
    except Exception:
        return None


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _verify_png_checksums(data: bytes) -> None:
    """Refuse a PNG whose chunk CRCs do not match: Pillow checks them only for the header
    chunks, so a corrupted IDAT would otherwise decode into silently wrong pixels."""
    if not data.startswith(PNG_SIGNATURE):
        return
    view = memoryview(data)
    pos = len(PNG_SIGNATURE)
    while pos + 12 <= len(data):
        length = int.from_bytes(view[pos : pos + 4], "big")
        end = pos + 8 + length
        if end + 4 > len(data):
            return  # truncated: the decoder reports that itself
        if zlib.crc32(view[pos + 4 : end]) != int.from_bytes(view[end : end + 4], "big"):
            kind = bytes(view[pos + 4 : pos + 8]).decode("latin-1")
            raise InvalidImageError(f"not a valid image (PNG chunk {kind!r} fails its checksum)")
        if view[pos + 4 : pos + 8] == b"IEND":
            return
        pos = end + 4


# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker;
# anything else (after optional 0xFF fill bytes) is the next marker.
_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def jpeg_scan_count(data: bytes, stop_after: int = MAX_JPEG_SCANS) -> int:
    """How many scans (SOS markers) a JPEG holds, found by walking its segments without
    decoding anything; counting stops once it passes ``stop_after``. Metadata segments
    (an EXIF thumbnail's own scans included) are skipped by their length."""
    scans, pos, end = 0, 2, len(data)
    while pos + 4 <= end and scans <= stop_after:
        if data[pos] != 0xFF:
            return scans  # not a marker where one must be: the decoder will say so
        marker = data[pos + 1]
        if marker == 0xFF:  # fill byte
            pos += 1
            continue
        if marker == 0xD9:  # end of image
            break
        if 0xD0 <= marker <= 0xD7 or marker == 0x01:  # markers without a length
            pos += 2
            continue
        pos += 2 + int.from_bytes(data[pos + 2 : pos + 4], "big")
        if marker == 0xDA:  # start of scan: skip its entropy-coded data
            scans += 1
            found = _JPEG_MARKER.search(data, pos)
            if found is None:
                break
            pos = found.end() - 2
    return scans


@dataclass
class DecodeBudget:
    """What one request may spend decoding, shared by all of its images.

    Pixels are charged from each header before that image is decoded, so a request
    that asks for too much is refused without decoding it; the clock is checked
    while decoders read their input and between images, so no variant of a slow
    decode (many scans, RLE, huge frames) can hold a worker past ``seconds``.
    Both are request-wide, hence 413 like an over-long body.
    """

    max_pixels: int = MAX_REQUEST_PIXELS
    seconds: float = DECODE_SECONDS
    clock: Callable[[], float] = time.monotonic
    used_pixels: int = 0
    deadline: float = field(default=0.0, repr=False)

    def __post_init__(self) -> None:
        self.deadline = self.clock() + self.seconds

    def charge(self, pixels: int) -> None:
        self.used_pixels += pixels
        if self.used_pixels > self.max_pixels:
            raise DecodeBudgetError(
                f"the images of one request may hold at most {self.max_pixels:,} pixels "
                "in total; send fewer or smaller images per request"
            )

    def check_time(self) -> None:
        if self.clock() > self.deadline:
            raise DecodeBudgetError(
                f"decoding took longer than the {self.seconds:g} s a request may spend; "
                "send fewer or simpler images per request"
            )


class _BudgetedReader(io.BytesIO):
    """The upload's bytes as a file whose every read first checks the budget's clock:
    decoders pull their input in blocks, so a slow decode stops between blocks."""

    def __init__(self, data: bytes, budget: DecodeBudget | None) -> None:
        super().__init__(data)
        self.budget = budget

    def read(self, size: int | None = -1) -> bytes:
        if self.budget is not None:
            self.budget.check_time()
        return super().read(size)


def _check_geometry(size: tuple[int, int], max_pixels: int) -> None:
    width, height = size
    if width <= 0 or height <= 0:
        raise InvalidImageError("the image has zero width or height")
    if width * height > max_pixels:
        raise ImageTooLargeError(
            f"the image is {width}x{height} pixels; the limit is {max_pixels:,} pixels"
        )
    if max(width, height) / min(width, height) > MAX_ASPECT_RATIO:
        raise ImageTooLargeError(
            f"the image is {width}x{height}: aspect ratios beyond "
            f"{MAX_ASPECT_RATIO:g}:1 cannot be classified meaningfully"
        )


def _scale_to_8_bits(image: Image.Image, rows: int = 256) -> np.ndarray:
    """16/32-bit grey -> uint8 by scaling (``convert("L")`` would clip at 255 and saturate
    to white), a block of rows at a time so a 25 MP picture needs no 200 MB float copy."""
    values = np.asarray(image)
    top = 65535.0 if image.mode.startswith("I;16") else float(max(values.max(), 1))
    if image.mode in ("I", "F") and values.max() <= 255 and values.min() >= 0:
        top = 255.0
    out = np.empty(values.shape, np.uint8)
    for start in range(0, values.shape[0], rows):
        block = values[start : start + rows].astype(np.float32) * np.float32(255.0 / top)
        np.clip(block + 0.5, 0, 255, out=block)
        out[start : start + rows] = block
    return out


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, compositing alpha onto ``BACKGROUND``."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        image = Image.fromarray(_scale_to_8_bits(image), mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image if image.mode == "RGBA" else image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba)  # an RGBA mask means its alpha channel
        return canvas
    return image.convert("RGB") if image.mode != "RGB" else image


@dataclass
class Decoded:
    """One decoded upload: the upright RGB picture (possibly reduced, see ``decode_image``)
    and the size the user sees (upright, full resolution)."""

    picture: Image.Image
    size: tuple[int, int]
    format: str | None


ORIENTATION_TAG = 0x0112
_TURNS = (2, 3, 4, 5, 6, 7, 8)  # the EXIF orientations that move pixels
# Info keys that can carry an orientation; a decoded picture keeps none of them, so no
# later step can apply the rotation a second time.
_ORIENTATION_INFO = ("exif", "xmp", "XML:com.adobe.xmp", "Raw profile type exif")


def _upright(image: Image.Image) -> Image.Image:
    """Apply the EXIF/XMP orientation once and drop every trace of it from the result
    (which is ``image`` itself, edited, when there is nothing to turn: no full-size copy)."""
    if image.getexif().get(ORIENTATION_TAG, 1) in _TURNS:
        image = ImageOps.exif_transpose(image)
    image.info = {k: v for k, v in image.info.items() if k not in _ORIENTATION_INFO}
    image._exif = None  # Pillow's cached EXIF: re-read (empty) from the cleaned info
    return image


def _reduce(image: Image.Image, size: int | None) -> Image.Image:
    """Shrink by a whole factor (box filter, like a JPEG draft) while the longest side
    stays at least ``size``: the model and the page never need more, and the full
    picture's memory goes back at once."""
    factor = max(image.size) // size if size else 1
    return image.reduce(factor) if factor >= 2 else image


def _read_source(source: ImageSource) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, (str, os.PathLike)):
        try:
            return read_file_capped(source, MAX_FILE_BYTES)
        except UserInputError as exc:
            raise InvalidImageError(str(exc)) from None
    return source.read()


def _from_array(array: np.ndarray, max_pixels: int) -> Image.Image:
    """A notebook's picture: HxW (grey) or HxWx3/4 uint8, as NumPy/Pillow/matplotlib give."""
    if array.dtype != np.uint8:
        raise InvalidImageError(
            f"image arrays must be uint8 (0-255), got {array.dtype}; e.g. (x * 255).astype('uint8')"
        )
    if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] in (1, 3, 4))):
        raise InvalidImageError(
            f"image arrays must be HxW, HxWx3 or HxWx4 (channels last), got shape {array.shape}"
        )
    _check_geometry((array.shape[1], array.shape[0]), max_pixels)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def decode_image(
    source: ImageSource,
    *,
    formats: tuple[str, ...] | None = None,
    max_pixels: int = MAX_PIXELS,
    reduce_to: int | None = None,
    budget: DecodeBudget | None = None,
) -> Decoded:
    """Decode one image once: first frame, EXIF-upright, RGB; or raise an ``ImageError``.

    ``formats`` restricts the decoders (an allowlist). ``reduce_to`` shrinks a large
    picture as soon as it is decoded (JPEGs decode at a reduced scale right away) to
    no less than that on its longest side. ``budget`` is the request's decode budget:
    pixels are charged from the header before decoding, and the clock is checked
    while decoding. Everything is checked from the header first: dimensions, aspect
    ratio, JPEG scan count.
    """
    if isinstance(source, np.ndarray):
        picture = _reduce(_to_rgb(_from_array(source, max_pixels)), reduce_to)
        return Decoded(picture, picture.size, None)
    if isinstance(source, Image.Image):
        _check_geometry(source.size, max_pixels)
        picture = _reduce(_to_rgb(_upright(source.copy())), reduce_to)  # never edit theirs
        return Decoded(picture, picture.size, source.format)
    data = _read_source(source)
    if not data:
        raise InvalidImageError("the file is empty")
    _verify_png_checksums(data)

    with warnings.catch_warnings():
        # Pillow only *warns* past MAX_IMAGE_PIXELS; a warning here is a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(
                _BudgetedReader(data, budget), formats=list(formats) if formats else None
            )
        except UnidentifiedImageError:
            found = _describe_unsupported(data[:4096]) if formats else None
            if found and found.upper() not in formats:
                allowed = ", ".join(formats)
                raise UnsupportedFormatError(
                    f"{found} files are not accepted; allowed formats: {allowed}"
                ) from None
            raise InvalidImageError("not a valid image (the data could not be decoded)") from None
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLargeError("the image dimensions are too large") from None
        except Exception as exc:
            raise InvalidImageError(f"not a valid image ({exc})") from None

        try:
            _check_geometry(image.size, max_pixels)
            if image.format in ("JPEG", "MPO"):
                scans = jpeg_scan_count(data)
                if scans > MAX_JPEG_SCANS:
                    raise ImageTooLargeError(
                        f"the JPEG has more than {MAX_JPEG_SCANS} scans; "
                        "no real encoder writes that many"
                    )
            width, height = image.size
            if budget is not None:
                budget.charge(width * height)
            if reduce_to and image.format in ("JPEG", "MPO"):
                # DCT scaling (1/2 .. 1/8) while the longest side stays >= reduce_to.
                scale = reduce_to / max(width, height)
                image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
            image.seek(0)  # animated GIF/WebP: frame 0 only, never iterate frames
            image.load()
            decoded_size = image.size
            picture = _upright(image)
            # The size the user sees: full resolution, turned like the picture was.
            turned = picture.size != decoded_size
            size = (height, width) if turned else (width, height)
            picture = _reduce(_to_rgb(picture), reduce_to)
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLargeError("the image dimensions are too large") from None
        except MemoryError:
            raise ImageTooLargeError("there is not enough memory to decode this image") from None
        except Exception as exc:
            raise InvalidImageError(f"not a valid image: {exc}") from None
    if budget is not None:
        budget.check_time()
    return Decoded(picture, size, image.format)


def open_image(
    source: ImageSource,
    *,
    formats: tuple[str, ...] | None = None,
    max_pixels: int = MAX_PIXELS,
    reduce_to: int | None = None,
) -> Image.Image:
    """Decode one image (first frame, EXIF-upright, RGB) or raise an ``ImageError``.

    The picture carries no orientation metadata any more: passing it back in (to
    ``Predictor`` or Grad-CAM) never rotates it again.
    """
    return decode_image(source, formats=formats, max_pixels=max_pixels, reduce_to=reduce_to).picture


def resize_for_model(image: Image.Image, size: int) -> np.ndarray:
    """RGB picture -> ``size x size x 3`` uint8 array, the model's input geometry.

    The whole frame is resized (no crop), like the seeds' Keras apps did, so an
    off-centre object is never cut away.
    """
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()
