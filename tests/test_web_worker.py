"""The gevent worker's connection count and response corking, against recording sockets
(no server needed)."""

from __future__ import annotations

import socket

import pytest
from gunicorn.workers.base_async import AsyncWorker
from gunicorn.workers.ggevent import GeventWorker

from imageclf.web import worker as worker_module
from imageclf.web.forward import connections
from imageclf.web.worker import IDLE_TIMEOUT_S, DeadlineGeventWorker

needs_cork = pytest.mark.skipif(not hasattr(socket, "TCP_CORK"), reason="TCP_CORK is Linux's")


class RecordingSocket:
    """Remembers the cork state; ``refuse`` makes setsockopt fail like a Unix socket's."""

    def __init__(self, refuse: bool = False) -> None:
        self.corked = False
        self.calls: list[int] = []
        self.refuse = refuse

    def setsockopt(self, level: int, option: int, value: int) -> None:
        if self.refuse:
            raise OSError(95, "Operation not supported")
        assert (level, option) == (socket.IPPROTO_TCP, socket.TCP_CORK)
        self.calls.append(value)
        self.corked = bool(value)


class FakeRequest:
    def __init__(self, headers: list[tuple[str, str]]) -> None:
        self.headers = headers


@pytest.fixture
def handled(monkeypatch):
    """Runs DeadlineGeventWorker.handle_request with gunicorn's own replaced by a probe
    that records whether the socket was corked while the app ran, or raises."""
    seen: list[bool] = []

    def app_side(self, listener_name, req, sock, addr):
        seen.append(sock.corked)
        if getattr(req, "explode", False):
            raise RuntimeError("the app failed")
        return True

    monkeypatch.setattr(GeventWorker, "handle_request", app_side)
    worker = DeadlineGeventWorker.__new__(DeadlineGeventWorker)  # no arbiter needed

    def run(req, sock):
        return worker.handle_request("listener", req, sock, ("127.0.0.1", 1))

    run.seen = seen
    return run


@needs_cork
def test_response_is_corked_while_handled_and_flushed_after(handled):
    sock = RecordingSocket()
    assert handled(FakeRequest([("HOST", "x")]), sock) is True
    assert handled.seen == [True]  # headers and body queue up as one segment
    assert sock.calls == [1, 0] and not sock.corked  # kept-alive clients get it at once


@needs_cork
def test_cork_is_released_when_the_request_fails(handled):
    sock = RecordingSocket()
    req = FakeRequest([])
    req.explode = True
    with pytest.raises(RuntimeError):
        handled(req, sock)
    assert sock.calls == [1, 0] and not sock.corked


@needs_cork
def test_expect_100_continue_is_never_corked(handled):
    # The client waits for the interim "100 Continue" before it sends the body.
    sock = RecordingSocket()
    handled(FakeRequest([("EXPECT", "100-continue")]), sock)
    assert handled.seen == [False] and sock.calls == []


@needs_cork
def test_sockets_without_tcp_cork_are_served_as_they_are(handled):
    sock = RecordingSocket(refuse=True)  # a Unix socket: setsockopt fails
    assert handled(FakeRequest([]), sock) is True
    assert handled.seen == [False]


@needs_cork
def test_set_cork_reports_what_it_did():
    assert worker_module._set_cork(RecordingSocket(), True) is True
    assert worker_module._set_cork(RecordingSocket(refuse=True), True) is False


class ClientSocket:
    def __init__(self) -> None:
        self.timeout: float | None = None

    def settimeout(self, seconds: float) -> None:
        self.timeout = seconds


def test_the_worker_counts_its_open_connections(monkeypatch):
    """What ``forward.ForwardRunner`` reads to run a lone connection's pass inline: each
    connection counts while gunicorn serves it (its kept-alive requests included), and
    stops counting when it ends, also when it ends with an error."""
    seen: list[int] = []
    worker = DeadlineGeventWorker.__new__(DeadlineGeventWorker)

    def serve(self, listener, client, addr):
        seen.append(connections.open)
        if addr == "inner":  # a second client connects while the first is served
            return
        worker.handle("listener", ClientSocket(), "inner")
        seen.append(connections.open)
        if addr == "fails":
            raise ConnectionResetError("the client went away")

    monkeypatch.setattr(AsyncWorker, "handle", serve)
    monkeypatch.setattr(connections, "open", 0)
    client = ClientSocket()
    worker.handle("listener", client, "outer")
    assert seen == [1, 2, 1] and connections.open == 0
    assert client.timeout == IDLE_TIMEOUT_S  # a silent client cannot hold the slot for ever

    seen.clear()
    with pytest.raises(ConnectionResetError):
        worker.handle("listener", ClientSocket(), "fails")
    assert seen == [1, 2, 1] and connections.open == 0
