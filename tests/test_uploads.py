"""uploads.py's draining and socket handling, unit by unit. Over a real socket these only
show as "the client read our 413 instead of a reset", so the bounds are checked here:
how many bytes each path reads from the client, and that it never reads past the body."""

from __future__ import annotations

import io
import socket

import pytest
from werkzeug.wrappers import Request

from imageclf.web.uploads import _discard, drain_body, stop_reading

NEXT = b"NEXT REQUEST ON THE SAME CONNECTION"


class Endless(io.RawIOBase):
    """A client that never stops sending; counts what was read."""

    def __init__(self) -> None:
        self.sent = 0

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        buffer[:] = b"x" * len(buffer)
        self.sent += len(buffer)
        return len(buffer)


def _request(raw, length: int | None, *, max_length: int | None = None, chunked=False):
    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": raw,
        "CONTENT_TYPE": "application/octet-stream",
    }
    if length is not None:
        environ["CONTENT_LENGTH"] = str(length)
    if chunked:
        environ["wsgi.input_terminated"] = True
    request = Request(environ)
    request.max_content_length = max_length
    return request


@pytest.mark.parametrize("limit", [300_000, 1_000_000])  # exactly at the limit, and under
def test_a_body_within_the_limit_is_read_to_its_end_and_no_further(limit):
    raw = io.BytesIO(b"b" * 300_000 + NEXT)
    drain_body(_request(raw, 300_000), limit=limit)
    assert raw.read() == NEXT


def test_a_body_declared_over_the_limit_is_not_read_at_all():
    raw = io.BytesIO(b"b" * 300_000)
    drain_body(_request(raw, 300_000), limit=299_999)
    assert raw.tell() == 0


def test_a_body_refused_from_its_header_is_drained_up_to_its_length():
    """MAX_CONTENT_LENGTH refused it before anything was read: Werkzeug's stream raises,
    so the raw input is read, but only to the declared length."""
    raw = io.BytesIO(b"b" * 300_000 + NEXT)
    drain_body(_request(raw, 300_000, max_length=1000), limit=1_000_000)
    assert raw.read() == NEXT


def test_a_chunked_body_is_drained_only_up_to_the_limit():
    raw = Endless()
    drain_body(_request(raw, None, max_length=1000, chunked=True), limit=200_000)
    assert 200_000 <= raw.sent < 200_000 + 64 * 1024


def test_without_a_length_or_an_end_of_stream_nothing_is_read():
    raw = Endless()
    drain_body(_request(raw, None, max_length=1000), limit=200_000)
    assert raw.sent == 0


@pytest.mark.parametrize("limit", [1, 65_535, 65_536, 65_537, 200_000])
def test_discard_reads_exactly_up_to_the_limit(limit):
    stream = io.BytesIO(b"z" * 300_000)
    _discard(stream, limit)
    assert stream.tell() == limit


def test_discard_stops_at_the_end_of_the_stream():
    stream = io.BytesIO(b"z" * 1000)
    _discard(stream, 1_000_000)
    assert stream.tell() == 1000


def test_discard_reads_in_bounded_chunks():
    sizes = []

    class Recording(io.BytesIO):
        def read(self, size=-1):
            sizes.append(size)
            return super().read(size)

    _discard(Recording(b"z" * 300_000), 1_000_000)
    assert sizes and all(0 < s <= 64 * 1024 for s in sizes)


def test_stop_reading_shuts_the_read_side_of_gunicorns_socket():
    left, right = socket.socketpair()
    with left, right:
        left.settimeout(5)  # without the shutdown, recv would wait for more body
        stop_reading(_with_socket(left))
        assert left.recv(100) == b""  # reads see end-of-stream: gunicorn stops reading
        left.sendall(b"our 413")  # the write side still works for the answer
        assert right.recv(100) == b"our 413"


def _with_socket(sock):
    request = _request(io.BytesIO(), 0)
    request.environ["gunicorn.socket"] = sock
    return request


def test_stop_reading_without_gunicorn_or_with_a_closed_socket_is_harmless():
    stop_reading(_request(io.BytesIO(), 0))  # the test client, the dev server
    closed = socket.socket()
    closed.close()
    stop_reading(_with_socket(closed))
