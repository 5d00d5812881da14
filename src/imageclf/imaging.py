"""Turn untrusted image bytes (or an in-memory picture) into a clean RGB picture, safely
and the same way everywhere.

Training data readers, ``Predictor`` and the web app all go through here, so a photo
uploaded to the server is preprocessed exactly like the training images, and a NumPy
array means the same picture whichever of them it is handed to (``picture_from_array``).
Checks that read only the file's bytes live in ``image_headers``.
"""

from __future__ import annotations

import io
import math
import os
import time
import warnings
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
from .image_headers import (  # MAX_JPEG_SCANS, jpeg_scan_count: public here too
    MAX_JPEG_SCANS,
    describe_unsupported,
    jpeg_scan_count,
    verify_png_checksums,
)

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


def picture_from_array(array: np.ndarray, max_pixels: int | None = None) -> Image.Image:
    """The one rule for arrays as pictures, wherever one is handed in (``Predictor``,
    ``open_image``): HxW, HxWx1, HxWx3 or HxWx4; uint8 as it is; floats in 0..1 (the
    scikit-image and matplotlib convention) scaled to 0..255; any other numbers must
    already lie in 0..255. A plain cast would wrap or truncate them into a picture of
    noise (0.7 -> 0) and give a confident answer about it. RGB out, alpha composited
    like a file's; ``max_pixels`` also applies the geometry limits of a decoded file."""
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (1, 3, 4)):
        raise InvalidImageError(
            f"an image array must be HxW or HxWxC with 1, 3 or 4 channels, got shape {array.shape}"
        )
    if max_pixels is not None:
        _check_geometry((array.shape[1], array.shape[0]), max_pixels)
    if array.dtype != np.uint8:
        array = _array_to_uint8(array)
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[:, :, 0]
    return _to_rgb(Image.fromarray(np.ascontiguousarray(array)))


def _array_to_uint8(array: np.ndarray) -> np.ndarray:
    """Numbers -> uint8 by ``picture_from_array``'s rule, or an ``InvalidImageError``."""
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise InvalidImageError(f"an image array must hold numbers, got {array.dtype}")
    values = np.asarray(array, dtype=np.float64)
    if not np.isfinite(values).all():
        raise InvalidImageError("an image array must not hold NaN or infinity")
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if np.issubdtype(array.dtype, np.floating) and low >= 0 and high <= 1:
        values = values * 255.0
    elif low < 0 or high > 255:
        raise InvalidImageError(
            f"image array values must lie in 0..255 (or 0..1 for floats), got {low:g}..{high:g}"
        )
    return np.rint(values).astype(np.uint8)


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
    if isinstance(source, (np.ndarray, Image.Image)):
        return _from_memory(source, max_pixels, reduce_to)
    data = _read_source(source)
    if not data:
        raise InvalidImageError("the file is empty")
    verify_png_checksums(data)
    with warnings.catch_warnings():
        # Pillow only *warns* past MAX_IMAGE_PIXELS; a warning here is a refusal.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        image = _open(data, formats, budget)
        try:
            _check_header(image, data, max_pixels, budget)
            picture, size = _load(image, reduce_to)
        except ImageError:
            raise
        except Exception as exc:
            raise _decoder_failure(exc, "not a valid image: {}") from None
    if budget is not None:
        budget.check_time()
    return Decoded(picture, size, image.format)


def _from_memory(
    source: np.ndarray | Image.Image, max_pixels: int, reduce_to: int | None
) -> Decoded:
    """A picture already in memory: an array (``picture_from_array``) or a PIL image,
    checked and converted like a file's, never edited in place."""
    if isinstance(source, np.ndarray):
        picture = _reduce(picture_from_array(source, max_pixels), reduce_to)
        return Decoded(picture, picture.size, None)
    _check_geometry(source.size, max_pixels)
    picture = _reduce(_to_rgb(_upright(source.copy())), reduce_to)  # never edit theirs
    return Decoded(picture, picture.size, source.format)


def _open(data: bytes, formats: tuple[str, ...] | None, budget: DecodeBudget | None) -> Image.Image:
    """Parse the header with the allowed decoders only; no pixel is decoded yet."""
    try:
        return Image.open(_BudgetedReader(data, budget), formats=list(formats) if formats else None)
    except UnidentifiedImageError:
        found = describe_unsupported(data[:4096]) if formats else None
        if found and formats and found.upper() not in formats:
            allowed = ", ".join(formats)
            raise UnsupportedFormatError(
                f"{found} files are not accepted; allowed formats: {allowed}"
            ) from None
        raise InvalidImageError("not a valid image (the data could not be decoded)") from None
    except ImageError:
        raise
    except Exception as exc:
        raise _decoder_failure(exc, "not a valid image ({})") from None


def _check_header(
    image: Image.Image, data: bytes, max_pixels: int, budget: DecodeBudget | None
) -> None:
    """Everything refused from the header alone, before a pixel is decoded: geometry,
    the JPEG scan count, the request's pixel budget."""
    _check_geometry(image.size, max_pixels)
    if image.format in ("JPEG", "MPO") and jpeg_scan_count(data) > MAX_JPEG_SCANS:
        raise ImageTooLargeError(
            f"the JPEG has more than {MAX_JPEG_SCANS} scans; no real encoder writes that many"
        )
    if budget is not None:
        budget.charge(image.size[0] * image.size[1])


def _load(image: Image.Image, reduce_to: int | None) -> tuple[Image.Image, tuple[int, int]]:
    """Decode frame 0 (a JPEG straight at a reduced scale when ``reduce_to`` allows),
    upright and RGB; with the size the user sees: full resolution, turned like the
    picture was."""
    width, height = image.size
    if reduce_to and image.format in ("JPEG", "MPO"):
        # DCT scaling (1/2 .. 1/8) while the longest side stays >= reduce_to.
        scale = reduce_to / max(width, height)
        image.draft("RGB", (math.ceil(width * scale), math.ceil(height * scale)))
    image.seek(0)  # animated GIF/WebP: frame 0 only, never iterate frames
    image.load()
    decoded_size = image.size
    picture = _upright(image)
    size = (height, width) if picture.size != decoded_size else (width, height)
    return _reduce(_to_rgb(picture), reduce_to), size


def _decoder_failure(exc: Exception, message: str) -> ImageError:
    """What a decoder's own exception means to the user (``message`` takes its text)."""
    if isinstance(exc, (Image.DecompressionBombError, Image.DecompressionBombWarning)):
        return ImageTooLargeError("the image dimensions are too large")
    if isinstance(exc, MemoryError):
        return ImageTooLargeError("there is not enough memory to decode this image")
    return InvalidImageError(message.format(exc))


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


# Pictures to classify are reduced to this as they are decoded, then resized to the
# input: the same two steps in the web app, ``predict`` and ``Predictor`` (one answer).
WORKING_SIZE = 384


def working_size(input_size: int) -> int:
    return max(WORKING_SIZE, input_size)


def resize_for_model(image: Image.Image, size: int, source_size: int | None = None) -> np.ndarray:
    """RGB picture -> ``size x size x 3`` uint8 array, the model's input geometry.

    The whole frame is resized (no crop), like the seeds' Keras apps did, so an
    off-centre object is never cut away. ``source_size``: first reduced to that side, as
    the training pictures were (CIFAR's 32 px thumbnails enlarged to the input size).
    """
    if source_size is not None and source_size < size and image.size != (source_size,) * 2:
        image = image.resize((source_size, source_size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    if image.size != (size, size):
        image = image.resize((size, size), Image.Resampling.BICUBIC, reducing_gap=3.0)
    return np.asarray(image, dtype=np.uint8).copy()
