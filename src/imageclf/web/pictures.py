"""Pictures going back to the browser: small copies, re-encoded as PNG, never raw bytes."""

from __future__ import annotations

import base64
import io

from PIL import Image

# Result pages show the upload at most this big (the data URL stays small).
DISPLAY_SIZE = 384


def display_copy(image: Image.Image, size: int = DISPLAY_SIZE) -> Image.Image:
    """A copy no larger than ``size`` on its longest side, for showing back to the user."""
    if max(image.size) <= size:
        return image
    small = image.copy()
    small.thumbnail((size, size), Image.Resampling.LANCZOS)
    return small


def png_base64(image: Image.Image) -> str:
    """The picture as base64 PNG: our own encoding, so an upload's bytes are never echoed."""
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", optimize=False)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def png_data_url(image: Image.Image) -> str:
    """The picture as a ``data:`` URL for an ``<img>`` (allowed by the page's CSP)."""
    return "data:image/png;base64," + png_base64(image)
