"""Reading uploads from a request: in memory only, bounded, validated."""

from __future__ import annotations

import contextlib
import re
import socket
import sys
import time
import unicodedata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import IO, Any

from flask import Request
from werkzeug.datastructures import FileStorage
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, RequestTimeout
from werkzeug.wsgi import LimitedStream

from .multipart import BoundedFormDataParser

MB = 1024 * 1024
# One image may be up to 5 MB; the whole body gets a little more for multipart framing.
MAX_UPLOAD_BYTES = 5 * MB
FORM_OVERHEAD_BYTES = 64 * 1024
MAX_FILES = 64
MAX_FILENAME_CHARS = 255
# After a 413 the server reads (and drops) up to this much of the body before answering,
# so the client reads our 413 instead of a connection reset; bigger bodies are cut off.
DRAIN_LIMIT_BYTES = 16 * MB
# The whole body must arrive within this (5 MB at ~1 Mbit/s takes 40 s); see BodyDeadline.
BODY_TIMEOUT_S = 60.0

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
    """Uploaded files stay in memory (Werkzeug would spill parts over 500 KB to a temp
    file), parsed by :mod:`.multipart`. ``MAX_CONTENT_LENGTH`` bounds the memory this
    can take."""

    form_data_parser_class = BoundedFormDataParser


def _interrupt_at(seconds: float) -> contextlib.AbstractContextManager:
    """Under gevent, a blocking read that is still waiting after ``seconds`` is
    interrupted (a server's read may wait for a whole 64 KB block that a slow client
    sends a byte at a time). Elsewhere reads cannot be interrupted: nothing to do."""
    monkey = sys.modules.get("gevent.monkey")  # gevent imported without patching: no
    if monkey is None or not monkey.is_module_patched("socket"):
        return contextlib.nullcontext()
    import gevent

    return gevent.Timeout(max(seconds, 0.001), RequestTimeout(_TOO_SLOW))


_TOO_SLOW = "the request body took too long to arrive"


class _DeadlineInput:
    """``wsgi.input`` that refuses to wait past a deadline (408), and reports a socket
    timeout as one too instead of an error on our side."""

    def __init__(self, stream: IO[bytes], deadline: float) -> None:
        self._stream = stream
        self._deadline = deadline

    def _call(self, read: Callable[[int | None], bytes], size: int | None) -> bytes:
        left = self._deadline - time.monotonic()
        if left <= 0:
            raise RequestTimeout(_TOO_SLOW)
        try:
            with _interrupt_at(left):
                return read(size)
        except TimeoutError:  # the socket's own idle timeout
            raise RequestTimeout("the client stopped sending the request body") from None

    def read(self, size: int | None = -1) -> bytes:
        return self._call(self._stream.read, size)

    def readline(self, size: int | None = -1) -> bytes:
        return self._call(self._stream.readline, size)

    def __iter__(self) -> Iterator[bytes]:
        while line := self.readline():
            yield line


class BodyDeadline:
    """WSGI middleware: a request's body must arrive within ``seconds`` of its start.

    A client that sends a body a byte at a time would otherwise keep its connection
    (and the memory its upload takes) for as long as it likes.
    """

    def __init__(self, app: Callable[..., Iterable[bytes]], seconds: float) -> None:
        self.app = app
        self.seconds = seconds

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        stream = environ.get("wsgi.input")
        if stream is not None:
            deadline = time.monotonic() + self.seconds
            environ["wsgi.input"] = _DeadlineInput(stream, deadline)
        return self.app(environ, start_response)


def _read_part(part: FileStorage, max_bytes: int) -> bytes:
    data = part.stream.read(max_bytes + 1)
    if len(data) > max_bytes:
        name = clean_filename(part.filename) or "the file"
        raise RequestEntityTooLarge(f"{name} is larger than the {max_bytes // MB} MB limit")
    return data


def collect_uploads(
    request: Request,
    limits: dict[str, int] | None = None,
    *,
    max_bytes: int = MAX_UPLOAD_BYTES,
    max_files: int = MAX_FILES,
) -> list[Upload]:
    """Every uploaded file in the given form fields, in order, or a 400/413 saying why not.

    ``limits`` maps each field name to how many files it may hold (default: one in
    ``file``, ``MAX_FILES`` in ``files``); all fields together hold at most
    ``max_files``. A part with neither a filename nor data is what a browser sends for
    an empty file input: it counts as no file.
    """
    limits = limits or {"file": 1, "files": MAX_FILES}
    max_files = min(max_files, sum(limits.values()))
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
            if len(uploads) >= max_files:
                fields = " and ".join(f"'{n}'" for n in limits)
                raise BadRequest(f"too many files: at most {max_files} in {fields} together")
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


def stop_reading(request: Request) -> None:
    """Read nothing more from this client: the server then closes the connection after
    our answer instead of reading (and dropping) the rest of a refused body to reuse it.
    gunicorn ignores a ``Connection: close`` from the app, so shut the socket's read side."""
    sock = request.environ.get("gunicorn.socket")
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RD)


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
