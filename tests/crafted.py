"""Hostile inputs built by hand, in the test run (nothing stored): each is small on the
wire and expensive to decode, or malformed in one precise way."""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
from PIL import Image


def encode(image: Image.Image, fmt: str = "PNG", **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def noise(width: int, height: int, seed: int = 0) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


# ---------------------------------------------------------------- PNG
def png_chunk(kind: bytes, payload: bytes) -> bytes:
    crc = struct.pack(">I", zlib.crc32(kind + payload))
    return struct.pack(">I", len(payload)) + kind + payload + crc


def bilevel_png(width: int, height: int, *, rows: int | None = None) -> bytes:
    """A one-colour 1-bit PNG: a few KB that claim width x height pixels (Pillow would
    allocate the whole canvas to make one). ``rows`` < height truncates it."""
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    row = b"\0" * (1 + (width + 7) // 8)
    packer = zlib.compressobj(9)
    data = b"".join(packer.compress(row) for _ in range(height if rows is None else rows))
    data += packer.flush()
    return (
        b"\x89PNG\r\n\x1a\n"
        + png_chunk(b"IHDR", header)
        + png_chunk(b"IDAT", data)
        + (png_chunk(b"IEND", b"") if rows is None else b"")
    )


def xmp_packet(orientation_xml: str) -> str:
    return (
        '<?xpacket begin=""?><x:xmpmeta xmlns:x="adobe:ns:meta/"><rdf:RDF '
        'xmlns:rdf="http://www.w3.org/1999/02/22-rdf-syntax-ns#"><rdf:Description '
        f'xmlns:tiff="http://ns.adobe.com/tiff/1.0/"{orientation_xml}</rdf:Description>'
        '</rdf:RDF></x:xmpmeta><?xpacket end="r"?>'
    )


def png_with_xmp(image: Image.Image, xmp: str) -> bytes:
    """A PNG whose only orientation is in its XMP packet (an iTXt chunk)."""
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_itxt("XML:com.adobe.xmp", xmp)
    return encode(image, "PNG", pnginfo=info)


# ---------------------------------------------------------------- JPEG
def _segment(marker: int, payload: bytes) -> bytes:
    return bytes([0xFF, marker]) + struct.pack(">H", len(payload) + 2) + payload


class _Bits:
    """Entropy-coded bits, MSB first, with JPEG's 0xFF byte stuffing."""

    def __init__(self) -> None:
        self.out = bytearray()
        self.acc = self.count = 0

    def put(self, value: int, length: int) -> None:
        for shift in range(length - 1, -1, -1):
            self.acc = (self.acc << 1) | ((value >> shift) & 1)
            self.count += 1
            if self.count == 8:
                self.out.append(self.acc)
                if self.acc == 0xFF:
                    self.out.append(0)
                self.acc = self.count = 0

    def flush(self) -> bytes:
        while self.count:
            self.put(1, 1)
        return bytes(self.out)


def progressive_jpeg(width: int, height: int, scans: int, *, app1: bytes = b"") -> bytes:
    """A valid grey progressive JPEG with one DC scan and ``scans - 1`` identical AC scans.

    Each AC scan is one end-of-band run over every block (a few bytes), yet the decoder
    walks all width*height/64 blocks for it: thousands of scans in well under 1 MB keep a
    core busy for minutes. ``app1`` is put in an APP1 segment (metadata).
    """
    blocks = -(-width // 8) * -(-height // 8)
    head = b"\xff\xd8" + (_segment(0xE1, app1) if app1 else b"")
    head += _segment(0xDB, b"\x00" + b"\x01" * 64)
    head += _segment(0xC2, struct.pack(">BHHB", 8, height, width, 1) + b"\x01\x11\x00")
    head += _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00")  # DC: 1 symbol
    eob_runs = bytes(run << 4 for run in range(15))  # EOB0..EOB14, 4-bit codes
    head += _segment(0xC4, b"\x10" + bytes([0, 0, 0, 15] + [0] * 12) + eob_runs)
    dc = _Bits()
    for _ in range(blocks):
        dc.put(0, 1)  # DC difference 0
    ac, left = _Bits(), blocks
    while left:
        run = min(left, 32767)
        bits = run.bit_length() - 1
        ac.put(bits, 4)
        ac.put(run - (1 << bits), bits)
        left -= run
    dc_scan = _segment(0xDA, b"\x01\x01\x00\x00\x00\x00") + dc.flush()
    ac_scan = _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") + ac.flush()
    return head + dc_scan + ac_scan * (scans - 1) + b"\xff\xd9"


# ---------------------------------------------------------------- BMP
def rle4_bmp(width: int, height: int) -> bytes:
    """A 4-bit RLE BMP: 2 bytes per 255 pixels on the wire, but Pillow decodes RLE4 in
    Python, one pixel per loop turn, so a few hundred KB take seconds."""
    row = bytearray()
    left = width
    while left:
        run = min(255, left)
        row += bytes([run, 0x12])
        left -= run
    row += b"\x00\x00"  # end of line
    pixels = bytes(row) * height + b"\x00\x01"  # end of bitmap
    palette = b"".join(bytes([i * 16, i * 16, i * 16, 0]) for i in range(16))
    offset = 14 + 40 + len(palette)
    info = struct.pack("<IiiHHIIiiII", 40, width, height, 1, 4, 2, len(pixels), 2835, 2835, 16, 0)
    file_header = b"BM" + struct.pack("<IHHI", offset + len(pixels), 0, 0, offset)
    return file_header + info + palette + pixels


# ---------------------------------------------------------------- WebP, GIF
def animated_webp(width: int, height: int, frames: int = 2) -> bytes:
    """A lossless animated WebP with a width x height canvas: ~150 bytes for 25 MP."""
    images = [Image.new("RGBA", (width, height), (i * 60, 0, 0, 255)) for i in range(frames)]
    return encode(images[0], "WEBP", save_all=True, append_images=images[1:], lossless=True)


def distinct_frame_gif(count: int, size: int = 32) -> bytes:
    """An animated GIF whose ``count`` frames all differ (so Pillow keeps every one)."""
    palette = [v for i in range(256) for v in (i, 255 - i, (i * 7) % 256)]
    frames = []
    for i in range(count):
        frame = Image.new("P", (size, size), 0)
        frame.putpalette(palette)
        frame.putpixel((i % size, (i // size) % size), 1 + i % 255)
        frame.putpixel(((i * 3) % size, 0), 1 + (i * 11) % 255)
        frames.append(frame)
    return encode(frames[0], "GIF", save_all=True, append_images=frames[1:], duration=10)
