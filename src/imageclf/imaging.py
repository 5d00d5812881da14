"""Turn untrusted image bytes into a clean RGB picture, safely and the same way everywhere.

Training data readers, ``Predictor`` and the web app all go through here, so a
photo uploaded to the server is preprocessed exactly like the training images.
"""

from __future__ import annotations

import io
import os
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from .errors import ImageTooLargeError, InvalidImageError, UnsupportedFormatError

# File extensions worth trying when walking folders (datasets, `imageclf predict`).
IMAGE_EXTENSIONS = frozenset(Image.registered_extensions())
# Formats the web app accepts; everything Pillow can read is allowed for local files.
WEB_FORMATS: tuple[str, ...] = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
# Our own decompression-bomb limit, checked from the header before any pixel is decoded.
# 25 MP admits a 5000x5000 photo and refuses the 10000x10000 (100 MP) kind.
MAX_PIXELS = 25_000_000
# A 1x10000 strip squashed to 32x32 is noise, not a picture: refuse it rather than guess.
MAX_ASPECT_RATIO = 20.0
# Alpha is composited onto one fixed colour so hidden pixels under alpha=0 never matter.
BACKGROUND = (255, 255, 255)

# Pillow's default: a truncated file is an error, never a silently half-grey image.
ImageFile.LOAD_TRUNCATED_IMAGES = False

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


def _to_rgb(image: Image.Image) -> Image.Image:
    """Any Pillow mode -> 8-bit RGB, compositing alpha onto ``BACKGROUND``."""
    if image.mode in ("I;16", "I;16L", "I;16B", "I;16N", "I", "F"):
        # convert("L") would clip 16-bit values at 255 and saturate to white: rescale instead.
        values = np.asarray(image, dtype=np.float64)
        top = 65535.0 if image.mode.startswith("I;16") else float(max(values.max(), 1.0))
        if image.mode in ("I", "F") and values.max() <= 255 and values.min() >= 0:
            top = 255.0
        scaled = np.clip(values / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        image = Image.fromarray(scaled, mode="L")
    if image.mode == "P":
        image = image.convert("RGBA" if "transparency" in image.info else "RGB")
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = image.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, BACKGROUND)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return image.convert("RGB") if image.mode != "RGB" else image


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


def open_image(
    source: ImageSource,
    *,
    formats: tuple[str, ...] | None = None,
    max_pixels: int = MAX_PIXELS,
    draft_size: int | None = None,
) -> Image.Image:
    """Decode one image (first frame, EXIF-upright, RGB) or raise an ``ImageError``.

    ``formats`` restricts the decoders (an allowlist); ``draft_size`` lets large
    JPEGs decode at a reduced scale when only a small picture is needed.
    """
    if isinstance(source, np.ndarray):
        return _to_rgb(_from_array(source, max_pixels))
    if isinstance(source, Image.Image):
        _check_geometry(source.size, max_pixels)
        return _to_rgb(ImageOps.exif_transpose(source) or source)
    if isinstance(source, (bytes, bytearray)):
        data = bytes(source)
    elif isinstance(source, (str, os.PathLike)):
        try:
            data = Path(source).read_bytes()
        except OSError as exc:
            raise InvalidImageError(f"cannot read {source}: {exc.strerror or exc}") from None
    else:
        data = source.read()
    if not data:
        raise InvalidImageError("the file is empty")
    _verify_png_checksums(data)

    with warnings.catch_warnings():
        # Pillow only *warns* past MAX_IMAGE_PIXELS; a warning here is a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            image = Image.open(io.BytesIO(data), formats=list(formats) if formats else None)
        except UnidentifiedImageError:
            found = _describe_unsupported(data[:4096]) if formats else None
            if found and found.upper() not in formats:
                allowed = ", ".join(formats)
                raise UnsupportedFormatError(
                    f"{found} files are not accepted; allowed formats: {allowed}"
                ) from None
            raise InvalidImageError("not a valid image (the data could not be decoded)") from None
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLargeError("the image dimensions are too large") from None
        except Exception as exc:
            raise InvalidImageError(f"not a valid image ({exc})") from None

        try:
            _check_geometry(image.size, max_pixels)
            if draft_size and image.format == "JPEG":
                image.draft("RGB", (draft_size, draft_size))
            image.seek(0)  # animated GIF/WebP: frame 0 only, never iterate frames
            image.load()
            image = ImageOps.exif_transpose(image) or image
            return _to_rgb(image)
        except ImageTooLargeError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning):
            raise ImageTooLargeError("the image dimensions are too large") from None
        except Exception as exc:
            raise InvalidImageError(f"not a valid image: {exc}") from None


def resize_for_model(image: Image.Image, size: int) -> np.ndarray:
    """RGB picture -> ``size x size x 3`` uint8 array, the model's input geometry.

    The whole frame is resized (no crop), like the seeds' Keras apps did, so an
    off-centre object is never cut away.
    """
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()
