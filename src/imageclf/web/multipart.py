"""A multipart/form-data parser for bodies that are already bounded in size.

Werkzeug's parser streams, which suits unbounded uploads, but it compiles two regular
expressions for every request (they embed the request's random boundary, so Python's
regex cache never hits): for a small picture that cost as much CPU as decoding it. Our
bodies are capped by ``MAX_CONTENT_LENGTH`` (a few MB), so the whole body is read and
split with ``bytes.find``, using only patterns compiled once. It accepts what Werkzeug
accepts (CRLF, LF or CR line breaks, a first boundary without a line break before it,
whitespace after a boundary) and fails the same way: a malformed body raises
``ValueError`` (which the form parser turns into an empty form, so the request gets a
clear 400 from the view), too many parts or too large a text field a 413.
"""

from __future__ import annotations

import io
import re
from typing import IO, NamedTuple

from werkzeug.datastructures import FileStorage, Headers, MultiDict
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser, MultiPartParser
from werkzeug.http import parse_options_header

_LINE_BREAK = rb"(?:\r\n|\n|\r)"
# After "--boundary": "--" closes the form; otherwise optional blanks and a line break.
_AFTER_BOUNDARY = re.compile(rb"(--)|[^\S\r\n]*" + _LINE_BREAK)
_BLANK_LINE = re.compile(rb"\r\n\r\n|\n\n|\r\r")
_CONTINUATION = re.compile(rb"[\r\n]+[ \t]")
# A text field's charset by Werkzeug's own rule (a short safe list, else UTF-8), so a
# client's charset name never picks an arbitrary codec.
_part_charset = MultiPartParser().get_part_charset
# RFC 2046's characters; it allows 70 of them, but some clients (Werkzeug's own test
# client among them) send a few more.
_VALID_BOUNDARY = re.compile(rb"[0-9A-Za-z'()+_,\-./:=? ]{0,199}[0-9A-Za-z'()+_,\-./:=?]")


class _Delimiter(NamedTuple):
    """Where a boundary line starts, ends, and whether it closes the form."""

    start: int
    end: int
    closes: bool


def _line_break_before(body: bytes, pos: int) -> int:
    """Start of the line break that ends right at ``pos`` (-1 if there is none)."""
    if body.endswith(b"\r\n", 0, pos):
        return pos - 2
    if body.endswith((b"\n", b"\r"), 0, pos):
        return pos - 1
    return -1


def _next_delimiter(body: bytes, dash: bytes, pos: int, *, first: bool) -> _Delimiter:
    """The next real boundary line at or after ``pos``; only the first may lack a line
    break before it."""
    while True:
        found = body.find(dash, pos)
        if found < 0:
            raise ValueError("the form ends without its closing boundary")
        start = _line_break_before(body, found)
        if start < 0 and first:  # after a preamble without a line break, as Werkzeug allows
            start = found
        after = _AFTER_BOUNDARY.match(body, found + len(dash))
        if start >= 0 and after is not None:
            return _Delimiter(start, after.end(), after.group(1) is not None)
        pos = found + 1  # the boundary text inside data, not a boundary line


def _headers(raw: bytes) -> Headers:
    headers = Headers()
    for line in _CONTINUATION.sub(b" ", raw).splitlines():
        line = line.strip(b" \t")
        if line:
            name, _, value = line.decode().partition(":")  # not UTF-8: ValueError
            headers.add(name.strip(" \t"), value.strip(" \t"))
    return headers


def _check_held(size: int, limit: int | None) -> None:
    """Text that is not file data (a preamble, a part's headers) counts against the form
    memory limit, as in Werkzeug, which holds it in memory until it ends."""
    if limit is not None and size > limit:
        raise RequestEntityTooLarge(f"the form has more than {limit} bytes of non-file text")


def parse_form(
    body: bytes,
    boundary: bytes,
    *,
    max_parts: int | None,
    max_field_bytes: int | None,
) -> tuple[list[tuple[str, str]], list[tuple[str, FileStorage]]]:
    """(text fields, files) of a complete multipart/form-data body, in order."""
    if not _VALID_BOUNDARY.fullmatch(boundary):
        raise ValueError("invalid multipart boundary")
    dash = b"--" + boundary
    fields: list[tuple[str, str]] = []
    files: list[tuple[str, FileStorage]] = []
    delimiter = _next_delimiter(body, dash, 0, first=True)
    _check_held(delimiter.start, max_field_bytes)  # the preamble
    parts = 0
    while not delimiter.closes:
        blank = _BLANK_LINE.search(body, delimiter.end)
        _check_held((blank.start() if blank else len(body)) - delimiter.end, max_field_bytes)
        if blank is None:
            raise ValueError("a part's headers never end")
        headers = _headers(body[delimiter.end : blank.start()])
        data_start = blank.end()
        delimiter = _next_delimiter(body, dash, data_start, first=False)
        parts += 1
        if max_parts is not None and parts > max_parts:
            raise RequestEntityTooLarge(f"the form has more than {max_parts} parts")
        if "content-disposition" not in headers:
            raise ValueError("a part has no Content-Disposition header")
        _, options = parse_options_header(headers["content-disposition"])
        name = options.get("name")
        data = body[data_start : delimiter.start]
        filename = options.get("filename")
        if filename is not None:
            files.append((name, FileStorage(io.BytesIO(data), filename, name, headers=headers)))
            continue
        if max_field_bytes is not None and len(data) > max_field_bytes:
            raise RequestEntityTooLarge(f"a form field is larger than {max_field_bytes} bytes")
        fields.append((name, data.decode(_part_charset(headers), "replace")))
    return fields, files


def _read_all(stream: IO[bytes], chunk: int = 64 * 1024) -> bytes:
    """Everything left in the request stream, read as Werkzeug does, in chunks: the
    stream raises 413 on the read that goes past ``MAX_CONTENT_LENGTH``, which a
    single ``read()`` would stop just short of."""
    return b"".join(iter(lambda: stream.read(chunk), b""))


class BoundedFormDataParser(FormDataParser):
    """Werkzeug's form parser with :func:`parse_form` for multipart bodies."""

    def _parse_multipart(
        self,
        stream: IO[bytes],
        mimetype: str,
        content_length: int | None,
        options: dict[str, str],
    ) -> tuple[IO[bytes], MultiDict, MultiDict]:
        boundary = options.get("boundary", "").encode("latin-1")
        if not boundary:
            raise ValueError("Missing boundary")
        fields, files = parse_form(
            _read_all(stream),
            boundary,
            max_parts=self.max_form_parts,
            max_field_bytes=self.max_form_memory_size,
        )
        return stream, self.cls(fields), self.cls(files)
