"""Reading uploads from a request: in memory only, bounded, validated."""

from __future__ import annotations

import io
import re
import unicodedata
from dataclasses import dataclass
from typing import IO

from flask import Request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge
from werkzeug.wsgi import LimitedStream

MB = 1024 * 1024
# One image may be up to 5 MB; the whole body gets a little more for multipart framing.
MAX_UPLOAD_BYTES = 5 * MB
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FILES = 64
MAX_FILENAME_CHARS = 255
# After a 413 the server reads (and drops) up to this much of the body before answering,
# so the client reads our 413 instead of a connection reset; bigger bodies are cut off.
DRAIN_LIMIT_BYTES = 16 * MB

# Strict on purpose: the OpenAPI document says integer and boolean, and the fuzzing test
# checks that anything else ("05", " 3", "0" for false, "yes") is refused, not guessed.
_INTEGER = re.compile(r"[1-9][0-9]{0,5}")
_BOOLEAN = {"true": True, "false": False}


@dataclass
class Upload:
    """One uploaded file, held in memory."""

    filename: str
    data: bytes


def clean_filename(name: str | None) -> str:
    """A client's filename made safe to echo: no control characters, bounded length.

    It is only ever shown (escaped by Jinja/JSON), never used as a path.
    """
    text = "".join(ch for ch in (name or "") if unicodedata.category(ch)[0] != "C")
    if len(text) > MAX_FILENAME_CHARS:
        text = text[: MAX_FILENAME_CHARS - 1] + "…"
    return text


class InMemoryRequest(Request):
    """Uploaded files stay in memory: Werkzeug would spill parts over 500 KB to a temp
    file. ``MAX_CONTENT_LENGTH`` bounds the memory this can take."""

    def _get_file_stream(
        self,
        total_content_length: int | None,
        content_type: str | None,
        filename: str | None = None,
        content_length: int | None = None,
    ) -> IO[bytes]:
        return io.BytesIO()


def _read_part(part: FileStorage, max_bytes: int) -> bytes:
    data = part.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RequestEntityTooLarge(
            f"{part.filename or 'the file'} is larger than the {max_bytes // MB} MB limit"
        )
    return data


def collect_uploads(
    request: Request,
    limits: dict[str, int] | None = None,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
) -> list[Upload]:
    """Every uploaded file in the given form fields, in order, or a 400/413 saying why not.

    ``limits`` maps each field name to how many files it may hold (default: one in
    ``file``, ``MAX_FILES`` in ``files``). A part with neither a filename nor data is
    what a browser sends for an empty file input: it counts as no file.
    """
    limits = limits or {"file": 1, "files": MAX_FILES}
    uploads: list[Upload] = []
    for name, most in limits.items():
        if name in request.form:
            raise BadRequest(
                f"'{name}' must be a file upload (a multipart part with a filename), not text"
            )
        count = 0
        for part in request.files.getlist(name):
            data = _read_part(part, max_bytes)
            if not part.filename and not data:
                continue
            count += 1
            if count > most:
                raise BadRequest(f"too many files in '{name}': at most {most}")
            uploads.append(Upload(clean_filename(part.filename) or "upload", data))
    if not uploads:
        fields = " or ".join(f"'{n}'" for n in limits)
        raise BadRequest(f"no image was uploaded: send one as a multipart file in {fields}")
    return uploads


def form_value(request: Request, name: str) -> str | None:
    """A form field, falling back to the query string (so curl users can use either)."""
    value = request.form.get(name)
    return value if value is not None else request.args.get(name)


def parse_top_k(raw: str | None, *, default: int, maximum: int) -> int:
    """``top_k`` as an integer in 1..maximum, or a 400 saying what is allowed."""
    if raw is None:
        return min(default, maximum)
    if not _INTEGER.fullmatch(raw) or not 1 <= int(raw) <= maximum:
        raise BadRequest(f"top_k must be a whole number from 1 to {maximum}")
    return int(raw)


def parse_bool(raw: str | None, name: str) -> bool:
    """A form flag: ``true`` or ``false`` (absent means false)."""
    if raw is None:
        return False
    if raw.lower() not in _BOOLEAN:
        raise BadRequest(f"{name} must be true or false")
    return _BOOLEAN[raw.lower()]


def drain_body(request: Request, limit: int = DRAIN_LIMIT_BYTES) -> None:
    """Read and drop what is left of a refused body, if it is not too big.

    Answering 413 before the client has finished sending makes the kernel reset the
    connection, and many clients then report the reset instead of our message. The
    read is bounded; a body declared larger than ``limit`` is not drained at all.
    """
    environ = request.environ
    length = request.content_length
    if length is not None and length > limit:
        return
    try:
        try:
            stream = request.stream  # Werkzeug's view: knows what the parser consumed
            _discard(stream, limit)
        except RequestEntityTooLarge:
            raw = environ.get("wsgi.input")
            if raw is None:
                return
            if length is not None:  # refused from the header alone: nothing was read yet
                _discard(LimitedStream(raw, length), limit)
            elif environ.get("wsgi.input_terminated"):  # chunked: the server ends the stream
                _discard(raw, limit)
    except Exception:  # the client went away or sent garbage: nothing left to save
        return


def _discard(stream: IO[bytes], limit: int) -> None:
    left = limit
    while left > 0:
        chunk = stream.read(min(64 * 1024, left))
        if not chunk:
            return
        left -= len(chunk)
