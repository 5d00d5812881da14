"""The bounded multipart parser must read forms exactly as Werkzeug's own parser does:
checked side by side on well-formed, odd and malformed bodies."""

from __future__ import annotations

import io
import random

import pytest
from werkzeug.exceptions import RequestEntityTooLarge
from werkzeug.formparser import FormDataParser

from imageclf.web.multipart import BoundedFormDataParser, parse_form

B = b"xYz-Boundary_123"
# Above Werkzeug's 64 KB read size: it checks its limit per read, we per field.
FIELD_LIMIT = 100_000


def _form(*parts: bytes, nl: bytes = b"\r\n", preamble: bytes = b"", close: bool = True) -> bytes:
    body = preamble
    for part in parts:
        body += b"--" + B + nl + part + nl
    if close:
        body += b"--" + B + b"--" + nl
    return body


def _field(name: str, value: bytes, nl: bytes = b"\r\n", extra: bytes = b"") -> bytes:
    head = b'Content-Disposition: form-data; name="%s"' % name.encode() + extra
    return head + nl + nl + value


def _file(name: str, filename: str, data: bytes, nl: bytes = b"\r\n") -> bytes:
    head = b'Content-Disposition: form-data; name="%s"; filename="%s"' % (
        name.encode(),
        filename.encode(),
    )
    return head + nl + b"Content-Type: image/jpeg" + nl + nl + data


def _both(body: bytes, boundary: bytes = B, **limits):
    """(ours, Werkzeug's) parse of ``body``, each as plain comparable values."""

    def run(cls):
        parser = cls(max_form_memory_size=limits.get("fields", FIELD_LIMIT),
                     max_form_parts=limits.get("parts", 100))  # fmt: skip
        options = {"boundary": boundary.decode("latin-1")}
        try:
            parsed = parser.parse(io.BytesIO(body), "multipart/form-data", len(body), options)
        except RequestEntityTooLarge:
            return "413"
        _, form, files = parsed
        return (
            list(form.items(multi=True)),
            [(k, f.filename, f.read()) for k, f in files.items(multi=True)],
        )

    return run(BoundedFormDataParser), run(FormDataParser)


JPEG = b"\xff\xd8\xff\xe0" + bytes(range(256)) * 4 + b"\xff\xd9"

CASES = {
    "one file": _form(_file("file", "cat.jpg", JPEG)),
    "fields and files": _form(
        _field("top_k", b"3"), _file("files", "a.jpg", JPEG), _file("files", "b.jpg", b"")
    ),
    "LF line breaks": _form(_field("a", b"1", nl=b"\n"), _file("f", "x", JPEG, nl=b"\n"), nl=b"\n"),
    "CR line breaks": _form(_field("a", b"1", nl=b"\r"), nl=b"\r"),
    "preamble": _form(_field("a", b"1"), preamble=b"ignore me\r\n"),
    "preamble without line break": _form(_field("a", b"1"), preamble=b"junk"),
    "boundary text inside the data": _form(
        _file("f", "x", b"a--" + B + b"b\r\n--" + B + b"x\r\nend")
    ),
    "data ending in line breaks": _form(_file("f", "x", JPEG + b"\r\n\r\n")),
    "blank after boundary": _form(_field("a", b"1")).replace(B + b"\r\n", B + b" \t\r\n", 1),
    "unclosed form": _form(_field("a", b"1"), close=False),
    "truncated in a part": _form(_file("f", "x", JPEG))[:300],
    "no content-disposition": _form(b"Content-Type: text/plain\r\n\r\nhello"),
    "headers never end": b"--" + B + b"\r\nContent-Disposition: form-data; name=a\r\n",
    "continued header": _form(b'Content-Disposition: form-data;\r\n name="a"\r\n\r\nvalue'),
    "RFC 2231 filename": _form(
        b"Content-Disposition: form-data; name=\"f\"; filename*=UTF-8''%C3%A9t%C3%A9.jpg"
        b"\r\n\r\n" + JPEG
    ),
    "latin-1 field": _form(
        _field("a", "été".encode("latin-1"), extra=b"\r\nContent-Type: text/x; charset=iso-8859-1")
    ),
    "unsafe charset name": _form(
        _field("a", b"abc", extra=b"\r\nContent-Type: text/plain; charset=rot13")
    ),
    "invalid utf-8 field": _form(_field("a", b"\xff\xfe ok")),
    "empty form": b"--" + B + b"--\r\n",
    "nothing": b"",
    "too many parts": _form(*[_field("a", b"1")] * 101),
    "field too large": _form(_field("a", b"x" * (FIELD_LIMIT + 1))),
    "large file is not a field": _form(_file("f", "x", b"x" * (3 * FIELD_LIMIT))),
    "huge preamble": _form(_field("a", b"1"), preamble=b"p" * (FIELD_LIMIT + 50_000)),
    "huge headers": _form(_field("a", b"1", extra=b"; x=" + b"h" * (FIELD_LIMIT + 50_000))),
    "headers never end, huge": b"--" + B + b"\r\nX: " + b"h" * (FIELD_LIMIT + 50_000),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_parses_as_werkzeug_does(name):
    ours, theirs = _both(CASES[name])
    assert ours == theirs


def test_cases_cover_success_empty_and_refusal():
    """The side-by-side test above is only as good as its cases: some must parse to
    something, some to nothing (malformed), some must be refused."""
    outcomes = [_both(body)[1] for body in CASES.values()]
    assert sum(o == "413" for o in outcomes) == 5
    assert sum(o == ([], []) for o in outcomes) >= 5
    assert sum(o not in ("413", ([], [])) and bool(o[1]) for o in outcomes) >= 6


def test_random_bodies_parse_as_werkzeug_does():
    """Random mutations of a valid form (bytes cut, dropped, doubled or swapped for line
    breaks, dashes and boundary pieces) give the same result from both parsers."""
    rng = random.Random(0)
    base = CASES["fields and files"]
    pieces = [b"\r\n", b"\n", b"\r", b"--", B, b"\r\n\r\n", b" ", b"--" + B]
    for _ in range(400):
        body = bytearray(base)
        for _ in range(rng.randint(1, 4)):
            at = rng.randrange(len(body) + 1)
            kind = rng.random()
            if kind < 0.4:
                body[at:at] = rng.choice(pieces)
            elif kind < 0.7:
                del body[at : at + rng.randint(1, 8)]
            else:
                body = body[:at]
        ours, theirs = _both(bytes(body))
        assert ours == theirs, bytes(body)


def test_boundary_must_be_sane():
    with pytest.raises(ValueError, match="boundary"):
        parse_form(b"", b"bad\nboundary", max_parts=None, max_field_bytes=None)
    with pytest.raises(ValueError, match="boundary"):
        parse_form(b"", b"x" * 201, max_parts=None, max_field_bytes=None)
