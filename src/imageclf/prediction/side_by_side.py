"""Two forward passes at once on a CPU: one on the caller's thread, one on a native OS
thread, each with its share of torch's threads.

The bundled model and its ImageNet gate are two small networks run on one picture.
On a 2-core machine, torch's intra-op threads barely speed a one-picture pass of
either (Lite0 at 160 px: 8.4 ms on one thread, 7.0 on two), so running both passes at
once, one thread each, ends sooner than running them one after the other on two
(docs/benchmarks.md, "The gate beside the model"). A big batch splits well across
threads and gains nothing here: callers use this for a few pictures only.

Under gunicorn's gevent worker, ``threading`` is monkey-patched into greenlets that
would take turns on one OS thread; the thread and its lock here are the interpreter's
own (``gevent.monkey.get_original``), so the two passes really overlap there too.
"""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import torch

T = TypeVar("T")


def _original(module: str, name: str) -> Any:
    """``module.name`` as the interpreter made it, even after gevent patched it."""
    try:
        from gevent import monkey
    except ImportError:
        return getattr(importlib.import_module(module), name)
    return monkey.get_original(module, name)


def native_lock() -> Any:
    """A lock between OS threads (the interpreter's own, not a greenlet's)."""
    return _original("_thread", "allocate_lock")()


def shares(threads: int) -> tuple[int, int] | None:
    """(the caller's, the other thread's) torch threads, or None with one thread only."""
    if threads < 2:
        return None
    return threads - threads // 2, threads // 2


@contextlib.contextmanager
def torch_threads(count: int) -> Iterator[None]:
    """This OS thread's torch intra-op threads set to ``count`` for the block (the count
    is each thread's own under OpenMP), then restored."""
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def start(work: Callable[[], T], threads: int) -> Callable[[], T]:
    """Begin ``work()`` on a new native thread with ``threads`` torch threads; the
    returned function waits for it and gives its result (or raises its error)."""
    lock = native_lock()
    lock.acquire()
    box: dict[str, Any] = {}

    def run() -> None:
        try:
            torch.set_num_threads(threads)  # a new thread starts with OpenMP's default
            box["result"] = work()
        except BaseException as exc:  # handed to the caller, raised there
            box["error"] = exc
        finally:
            lock.release()

    _original("_thread", "start_new_thread")(run, ())

    def wait() -> T:
        lock.acquire()
        lock.release()
        if "error" in box:
            raise box["error"]
        return box["result"]

    return wait
