"""Per-key request quotas: token buckets that every gunicorn worker shares.

Each key's bucket is two doubles (tokens left, when last updated) in one small
memory mapping of an unlinked temporary file. ``imageclf serve`` makes it in the master
before any worker forks, so every worker (and every replacement worker) maps the same
bytes: a key's quota is one budget for the whole server, not one per worker. A POSIX
record lock on the bucket's bytes (``fcntl.lockf``) makes each update atomic across
processes and is released by the kernel if a worker dies holding it; a per-process
lock covers threads (``serve --debug``), where record locks do not exclude.
"""

from __future__ import annotations

import fcntl
import mmap
import os
import struct
import tempfile
import threading
import time
from dataclasses import dataclass

_SLOT = struct.Struct("=dd")  # tokens, monotonic time of the last update (0: never)


@dataclass(frozen=True)
class Quota:
    """A token bucket: ``burst`` requests at once, refilled at ``rate`` per second."""

    rate: float
    burst: int


def spend(tokens: float, stamp: float, now: float, quota: Quota) -> tuple[float, float]:
    """One request against a bucket holding ``tokens`` at ``stamp``: (tokens left, wait).
    Wait is 0.0 if a token was spent, else the seconds until one will be (none spent)."""
    tokens = min(float(quota.burst), tokens + max(0.0, now - stamp) * quota.rate)
    wait = 0.0 if tokens >= 1.0 else (1.0 - tokens) / quota.rate
    return (tokens - 1.0 if wait == 0.0 else tokens), wait


class SharedBuckets:
    """``slots`` token buckets in memory shared with every process forked after this."""

    def __init__(self, slots: int) -> None:
        fd, name = tempfile.mkstemp(prefix="imageclf-quota-")
        os.unlink(name)  # nothing left behind, whatever way the server ends
        size = max(1, slots) * _SLOT.size
        os.ftruncate(fd, size)
        self._fd = fd
        self._map = mmap.mmap(self._fd, size)  # MAP_SHARED: writes seen by every process
        self._pid = -1
        self._lock = threading.Lock()

    def _process_lock(self) -> threading.Lock:
        if self._pid != os.getpid():  # a forked worker: never inherit a lock's state
            self._pid, self._lock = os.getpid(), threading.Lock()
        return self._lock

    def take(self, slot: int, quota: Quota, now: float | None = None) -> float:
        """Spend one token of bucket ``slot``: 0.0 if there was one, else the seconds
        until there will be (nothing is spent then)."""
        offset = slot * _SLOT.size
        with self._process_lock():
            fcntl.lockf(self._fd, fcntl.LOCK_EX, _SLOT.size, offset)
            try:
                now = time.monotonic() if now is None else now  # one clock for every process
                tokens, stamp = _SLOT.unpack_from(self._map, offset)
                if stamp == 0.0:
                    tokens, stamp = float(quota.burst), now
                tokens, wait = spend(tokens, stamp, now, quota)
                _SLOT.pack_into(self._map, offset, tokens, now)
            finally:
                fcntl.lockf(self._fd, fcntl.LOCK_UN, _SLOT.size, offset)
        return wait
