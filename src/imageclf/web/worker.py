"""The gunicorn worker ``imageclf serve`` runs: gevent, with read deadlines.

gunicorn's sync workers read a request in the worker itself, so two clients that
send their headers a byte at a time hold both workers until the timeout kills them.
Here each connection is a greenlet: a slow client costs a few KB of memory, not a
worker, and the worker keeps answering others (``/healthz`` included). Decoding runs
on a thread of its own, fairly between clients (``web/decoding.py``); the forward pass
runs on the model's own thread, shared by the requests waiting for it, unless the
connection is the worker's only one (``web/forward.py``; this worker counts its
connections for that).

Deadlines, so a slow client cannot hold a connection slot for ever:
- headers: the whole request head within ``HEADER_TIMEOUT_S`` (gunicorn's keep-alive
  timer wraps the head read; ``serve`` sets keep-alive to this value);
- body: ``BODY_TIMEOUT_S`` for the whole body (``web.uploads.BodyDeadline``), and no
  single read may wait more than ``IDLE_TIMEOUT_S`` (a socket timeout; it also bounds
  sending to a client that stops reading).

A response leaves as one TCP segment where it fits: gunicorn writes the status line and
headers, then the body, with two sends, and each send on its own wakes the client for
half an answer (on loopback it is delivered at once). The socket is corked while a
request is handled and uncorked when its response is written.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
import warnings

from gunicorn.workers.ggevent import GeventWorker

from .forward import connections
from .reload import request_reload

IDLE_TIMEOUT_S = 15.0


class DeadlineGeventWorker(GeventWorker):
    """``GeventWorker`` whose client sockets time out after ``IDLE_TIMEOUT_S`` of silence."""

    def patch(self) -> None:
        # Patching walks every live object; torch's deprecated aliases warn when touched.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            super().patch()

    def init_process(self) -> None:
        # Until gunicorn installs its handlers (after monkey-patching, which takes a
        # while), a worker keeps the master's, which only queue the signal: a Ctrl-C or
        # the master's SIGQUIT in that window was lost, and the worker was killed 10 s
        # later ("was sent SIGKILL!"). Noted here, acted on once the handlers are in.
        self.stopped_early = False

        def note(sig, frame) -> None:
            self.stopped_early = True

        for stop in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM):
            signal.signal(stop, note)
        # A SIGHUP while booting must not end the worker (its default): it loads the
        # published versions anyway, and checks its files once when it starts.
        signal.signal(signal.SIGHUP, request_reload)
        super().init_process()

    def init_signals(self) -> None:
        super().init_signals()
        # The master forwards SIGHUP (server.ModelArbiter): check the model files now.
        signal.signal(signal.SIGHUP, request_reload)
        signal.siginterrupt(signal.SIGHUP, False)
        if self.stopped_early:
            self._exit_booting()

    def _exit_booting(self) -> None:
        """End a worker that has not started serving: nothing is in flight to finish."""
        self.alive = False
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(0)

    def handle_quit(self, sig, frame) -> None:
        # gevent's handler defers the exit to a greenlet, which only runs once the event
        # loop does: a Ctrl-C that lands while the worker still loads its model was lost,
        # and gunicorn killed the worker 10 s later ("was sent SIGKILL!"). Nothing is in
        # flight before the loop runs, so a booting worker ends at once.
        if not self.booted:
            self._exit_booting()
        super().handle_quit(sig, frame)

    def handle(self, listener, client, addr) -> None:
        client.settimeout(IDLE_TIMEOUT_S)  # gevent's base class would make it blocking
        connections.open += 1  # a lone connection's pass runs inline (web/forward.py)
        try:
            super(GeventWorker, self).handle(listener, client, addr)
        finally:
            connections.open -= 1

    def handle_request(self, listener_name, req, sock, addr):
        # Not while the client waits for "100 Continue": that line must leave at once.
        corked = not _expects_continue(req) and _set_cork(sock, True)
        try:
            return super().handle_request(listener_name, req, sock, addr)
        finally:
            if corked:  # flushes the response; a kept-alive connection must not wait for it
                _set_cork(sock, False)


def _expects_continue(req) -> bool:
    return any(name == "EXPECT" for name, _ in req.headers)


def _set_cork(sock, on: bool) -> bool:
    """TCP_CORK on or off; False where there is none (not Linux, a Unix socket, closed)."""
    option = getattr(socket, "TCP_CORK", None)
    if option is None:
        return False
    with contextlib.suppress(OSError):
        sock.setsockopt(socket.IPPROTO_TCP, option, int(on))
        return True
    return False
