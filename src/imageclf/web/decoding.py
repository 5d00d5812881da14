"""Where a worker decodes uploads: off the event loop, fairly between clients, and within
each client's share of decoding time.

One request's decoding is already bounded (``imaging.DecodeBudget``: pixels and a few
seconds). But a picture can legitimately cost seconds of CPU for a few KB (a 21 KB RLE
BMP: ~4 s), so eight clients sending such files kept a worker decoding all the time:
good requests waited 14 s, and ``/healthz`` (answered on the same event loop) more
than 10 s. Three rules close that:

- decoding runs on one thread of its own beside the event loop (under gevent), so the
  loop keeps answering health checks and reading bodies while a picture decodes
  (Pillow releases the GIL in its C decoders; its pure-Python ones yield it at Python's
  switch interval);
- when several requests wait to decode, the one whose client has used the least
  decoding time lately goes first, so one busy client's queue never stands in front of
  everyone else;
- a client may spend at most ``client_seconds`` decoding per ``window_s`` in each worker:
  beyond that its requests get 429 with ``Retry-After`` before anything is decoded.

A client is its address (``request.remote_addr``; behind a proxy, ``serve --proxies N``
makes that the address the proxy saw). Outside gevent (tests, the debug server) decoding
runs in the caller, with the same accounting and refusals.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable
from typing import Any, TypeVar

from ..errors import ImageError, RetryLaterError
from .forward import gevent_is_patched

T = TypeVar("T")

# Half of one core per client and worker: a client sending 64 large photos at a time
# (~3 s of decoding each request) still gets several requests a minute.
CLIENT_DECODE_SECONDS = 30.0
WINDOW_S = 60.0
# Clients remembered at once; past this the least recently seen are forgotten (memory
# stays bounded when addresses are spoofed or many).
MAX_CLIENTS = 10_000


class DecodeQuotaError(RetryLaterError, ImageError):
    """This client used its share of decoding time: retry after ``retry_after`` s (429)."""


class DecodeLedger:
    """Decoding seconds each client spent in the last ``window_s`` (this process only)."""

    def __init__(
        self,
        client_seconds: float = CLIENT_DECODE_SECONDS,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.client_seconds = client_seconds
        self.window_s = window_s
        self.clock = clock
        self._spent: dict[str, deque[tuple[float, float]]] = {}

    def used(self, client: str) -> float:
        """Seconds ``client`` spent decoding within the window ending now."""
        entries = self._spent.get(client)
        if not entries:
            return 0.0
        horizon = self.clock() - self.window_s
        while entries and entries[0][0] <= horizon:
            entries.popleft()
        if not entries:
            del self._spent[client]
            return 0.0
        return sum(seconds for _, seconds in entries)

    def check(self, client: str) -> None:
        """Raise ``DecodeQuotaError`` if ``client`` has no decoding time left."""
        used = self.used(client)
        if used < self.client_seconds:
            return
        # The oldest charges leave the window first: wait until enough of them have.
        now, excess, wait = self.clock(), used - self.client_seconds, self.window_s
        for at, seconds in self._spent[client]:
            excess -= seconds
            if excess < 0:
                wait = at + self.window_s - now
                break
        retry_after = max(1, math.ceil(wait))
        raise DecodeQuotaError(
            f"this client spent {used:.0f} s decoding pictures in the last "
            f"{self.window_s:.0f} s (the limit is {self.client_seconds:.0f} s); "
            f"try again in {retry_after} s",
            retry_after,
        )

    def charge(self, client: str, seconds: float) -> None:
        entries = self._spent.pop(client, None) or deque()
        entries.append((self.clock(), seconds))
        self._spent[client] = entries  # re-inserted: the dict's order is by last use
        while len(self._spent) > MAX_CLIENTS:
            del self._spent[next(iter(self._spent))]


class DecodeScheduler:
    """Runs decoding for one worker: on one decode thread under gevent, inline otherwise."""

    def __init__(self, ledger: DecodeLedger, *, cooperative: bool | None = None) -> None:
        self.ledger = ledger
        self._cooperative = cooperative  # None: decide on first use (after the fork)
        self._pool = None
        self._busy = False
        self._waiting: list[tuple[str, Any]] = []  # (client, gevent Event), greenlets only

    @property
    def cooperative(self) -> bool:
        if self._cooperative is None:
            self._cooperative = gevent_is_patched()
        return self._cooperative

    def run(self, client: str, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` charged to ``client``; 429 first if its share is used up."""
        self.ledger.check(client)
        if not self.cooperative:
            return self._timed(client, function, *args)
        self._wait_turn(client)
        try:
            self.ledger.check(client)  # it may have used its share while it waited
            if self._pool is None:
                from gevent.threadpool import ThreadPool

                self._pool = ThreadPool(1)
            # Charged here, on the loop's thread, so the ledger is only ever touched there.
            return self._timed(client, self._pool.apply, function, args)
        finally:
            self._busy = False
            self._wake_next()

    def _timed(self, client: str, function: Callable[..., T], *args: Any) -> T:
        started = time.perf_counter()
        try:
            return function(*args)
        finally:
            self.ledger.charge(client, time.perf_counter() - started)

    def _wait_turn(self, client: str) -> None:
        """Block this greenlet until the decode thread is ours (queue only touched by
        greenlets, on the event loop's thread: no locks)."""
        if not self._busy and not self._waiting:
            self._busy = True
            return
        from gevent.event import Event

        turn = Event()
        entry = (client, turn)
        self._waiting.append(entry)
        try:
            turn.wait()
        except BaseException:
            if entry in self._waiting:
                self._waiting.remove(entry)
            else:  # the thread was handed to us just as we were stopped: pass it on
                self._busy = False
                self._wake_next()
            raise

    def _wake_next(self) -> None:
        """Hand the thread to the waiting client that has decoded least lately."""
        if self._busy or not self._waiting:
            return
        index = min(range(len(self._waiting)), key=lambda i: self.ledger.used(self._waiting[i][0]))
        _, turn = self._waiting.pop(index)
        self._busy = True
        turn.set()
