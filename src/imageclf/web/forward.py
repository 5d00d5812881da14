"""Where a server worker runs its model: one OS thread beside the event loop, with the
predictions that arrive while it is busy merged into one batch.

Under gunicorn's gevent worker every request is a greenlet on one OS thread. A forward
pass run there stops every other connection for its whole length (reading bodies,
parsing, answering ``/healthz``), and the model sees one picture at a time. Here the
model runs on its own thread (torch releases the GIL), so the event loop keeps parsing
the next requests meanwhile, and every prediction waiting when the thread comes free
goes through the model as one batch, which costs less per picture than one at a time
(the bundled model on one thread: 136 pictures/s in batches, ~87/s singly).

Grad-CAM runs on the same thread, so nothing touches the model while it holds hooks.
A request alone in its worker (one open connection) runs its pass inline: with nobody
to read or parse for, the hand-off to the model thread and back would only add its two
wake-ups (~1-1.5 ms on a 2-core VM, docs/benchmarks.md). Connections, not requests,
are counted: while a pass runs inline nothing else is read, so a count of requests
would always say "alone".
Outside gevent (the Flask debug server, tests) everything runs in the caller, as before.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
from PIL import Image

from ..prediction.predictor import Predictor, Verdict

T = TypeVar("T")

# The most pictures one merged pass takes (a request with more still goes whole, alone):
# past this a CPU gains little throughput and the requests in it wait for all of it.
MAX_BATCH_ROWS = 32


class _Connections:
    """Client connections this worker holds (``worker.DeadlineGeventWorker`` counts them)."""

    open = 0


connections = _Connections()


def gevent_is_patched() -> bool:
    """True in a gevent worker (``threading`` monkey-patched): greenlets share one thread."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return bool(monkey.is_module_patched("threading"))


@dataclass
class _Waiting:
    predictor: Predictor
    batch: np.ndarray
    result: Any  # gevent.event.AsyncResult


class ForwardRunner:
    """Runs model work for one worker: inline, or (under gevent) on one model thread."""

    def __init__(
        self,
        *,
        on_pass: Callable[[int], None] | None = None,
        cooperative: bool | None = None,
        max_rows: int = MAX_BATCH_ROWS,
        wait_s: float = 0.0,
    ) -> None:
        self.on_pass = on_pass  # called with the pictures in each pass (the metrics)
        self.max_rows = max_rows
        # How long a pass that is not yet full waits for more requests to join it
        # (``serve --batch-wait-ms``); 0: it goes at once with what is waiting.
        self.wait_s = wait_s
        self._cooperative = cooperative  # None: decide on first use (after the fork)
        self._pool = None
        self._waiting: list[_Waiting] = []
        self._draining = False

    @property
    def cooperative(self) -> bool:
        if self._cooperative is None:
            self._cooperative = gevent_is_patched()
        return self._cooperative

    def _thread(self):
        if self._pool is None:
            from gevent.threadpool import ThreadPool

            self._pool = ThreadPool(1)  # one thread: passes never overlap on the model
        return self._pool

    def call(self, function: Callable[..., T], *args: Any) -> T:
        """``function(*args)`` on the model thread (inline outside gevent); for work such as
        Grad-CAM that must not overlap a forward pass and is not merged with others."""
        if not self.cooperative:
            return function(*args)
        return self._thread().apply(function, args)

    def _inline(self) -> bool:
        """Run a pass in the caller: outside gevent, or alone in this worker."""
        return not self.cooperative or (connections.open <= 1 and not self._draining)

    def verdict(
        self, predictor: Predictor, batch: np.ndarray, pictures: Sequence[Image.Image]
    ) -> Verdict:
        """``predictor.judged``: alone inline (one picture: the fused traces, the sooner
        answer); else the model's pass merged (``logits``), then the verdict (a gate's
        pass on the decoded photos) on the model thread."""
        if self._inline():
            self._count(len(batch))
            return predictor.judged(batch, pictures)
        return self.call(predictor.verdict, self.logits(predictor, batch), pictures)

    def logits(self, predictor: Predictor, batch: np.ndarray) -> np.ndarray:
        """``predictor.calibrated_logits(batch)``, merged with whatever else is waiting."""
        if self._inline():
            self._count(len(batch))
            return predictor.calibrated_logits(batch)
        from gevent import spawn
        from gevent.event import AsyncResult

        waiting = _Waiting(predictor, batch, AsyncResult())
        self._waiting.append(waiting)
        if not self._draining:
            self._draining = True
            spawn(self._drain)
        return waiting.result.get()

    def _drain(self) -> None:
        """One greenlet feeds the model thread while anything waits (no locks needed: the
        queue is only touched by greenlets, on the event loop's own thread)."""
        try:
            while self._waiting:
                self._gather()
                group = self._next_group()
                merged = np.concatenate([w.batch for w in group])
                try:
                    probs = self.call(group[0].predictor.calibrated_logits, merged)
                except BaseException as exc:  # each request answers its own error
                    for waiting in group:
                        waiting.result.set_exception(exc)
                    if not isinstance(exc, Exception):
                        raise
                    continue
                self._count(len(merged))
                start = 0
                for waiting in group:
                    waiting.result.set(probs[start : start + len(waiting.batch)])
                    start += len(waiting.batch)
        finally:
            self._draining = False

    def _gather(self) -> None:
        """Give a pass that is not full ``wait_s`` for more requests to join it."""
        if self.wait_s <= 0 or sum(len(w.batch) for w in self._waiting) >= self.max_rows:
            return
        from gevent import sleep

        sleep(self.wait_s)

    def _next_group(self) -> list[_Waiting]:
        """The oldest waiting request and those after it that fit, for the same model."""
        first = self._waiting.pop(0)
        group, rows = [first], len(first.batch)
        while self._waiting:
            candidate = self._waiting[0]
            if candidate.predictor is not first.predictor:
                break
            if rows + len(candidate.batch) > self.max_rows:
                break
            group.append(self._waiting.pop(0))
            rows += len(candidate.batch)
        return group

    def _count(self, rows: int) -> None:
        if self.on_pass:
            self.on_pass(rows)
