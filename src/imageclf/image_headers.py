"""What an image file's bytes say before any pixel is decoded: PNG chunk checksums, the
number of scans in a JPEG, and the name of a format we do not accept.

A leaf of ``imaging`` (which re-exports ``jpeg_scan_count`` and ``MAX_JPEG_SCANS``):
these checks read bytes only, so they are cheap enough to run on every upload first.
"""

from __future__ import annotations

import io
import re
import zlib

from PIL import Image

from .errors import InvalidImageError

# Each scan of a progressive JPEG is one more pass over every block of the picture: a
# ~1 MB file with thousands of empty scans keeps a core busy for minutes. Encoders write
# about 10 (libjpeg's progressive script) and rarely more than 20.
MAX_JPEG_SCANS = 64

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_MARKUP_PREFIXES = (b"<?xml", b"<svg", b"<!doctype", b"<html", b"<!--")
# In entropy-coded data 0xFF is followed by 0x00 (a stuffed byte) or a restart marker;
# anything else (after optional 0xFF fill bytes) is the next marker.
_JPEG_MARKER = re.compile(rb"\xff+[^\x00\xd0-\xd7\xff]")


def describe_unsupported(head: bytes) -> str | None:
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


def verify_png_checksums(data: bytes) -> None:
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
