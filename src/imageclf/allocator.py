"""How glibc's malloc treats large blocks: two policies, for two kinds of process.

**Batch work** (``keep_freed_memory``: training, evaluation, prediction from the command
line). glibc serves every block over its mmap threshold (at most 32 MiB by default) with
a fresh ``mmap`` and unmaps it on ``free``. PyTorch's CPU tensors come straight from
malloc, so each forward pass over a batch of 96-128 px pictures maps its large
activations anew and the kernel faults them in page by page: evaluating a 128 px
EfficientNet-Lite0 took 142 s of kernel time beside 486 s of its own (69 million minor
faults). Raising both thresholds keeps those blocks in the heap for the next batch
(``benchmarks/allocator.py``: Lite0 inference at 96-128 px 1.35-1.46x as fast, training
1.05-1.09x, on a 2-core AVX-512 Xeon). Only the command line turns this on
(``imageclf.cli.entry.main``): it is a setting of the whole process, which a library
must not change behind its host's back; call it yourself to get the same.

**The web server** (``keep_large_blocks_on_mmap`` and ``release_free_memory``, from
``create_app``). Left alone, glibc raises its threshold each time a large block is freed:
later pictures then come from the heap, which keeps the pages after they are freed, and
a worker that decoded a few large uploads stayed gigabytes bigger for good. A fixed 4 MB
threshold keeps pictures on mmap (freed at once), and ``malloc_trim`` hands back the
heap pages a request left free. It replaces the batch policy in a server's workers.

Elsewhere than glibc all of these are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys
from functools import cache

log = logging.getLogger("imageclf.allocator")

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # mallopt parameters (malloc.h)
# Batch work: blocks below this come from the heap and are reused; a whole dataset (the
# mirror at 128 px is 2.9 GB) still gets its own mapping, returned when it is freed.
BATCH_MMAP_THRESHOLD = 256 * 1024**2
BATCH_TRIM_THRESHOLD = 512 * 1024**2  # free memory at the heap's top that is kept
# The server: blocks from this size up get their own mapping (pictures, not the
# interpreter's objects), and the heap's top is trimmed as glibc does by default.
SERVER_MMAP_THRESHOLD = 4 * 1024**2
SERVER_TRIM_THRESHOLD = 128 * 1024
# The user's own malloc settings win over the batch policy; IMAGECLF_KEEP_FREED_MEMORY=0
# turns it off.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
OPT_OUT = "IMAGECLF_KEEP_FREED_MEMORY"

_policy: str | None = None  # "batch" or "server" once one is in force


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """The batch policy, for this process and the processes it forks. True when it is in
    force; False on other C libraries, when the user configured malloc, when
    ``IMAGECLF_KEEP_FREED_MEMORY=0``, or in a server (whose policy stays)."""
    global _policy
    environ = os.environ if environ is None else environ
    if _policy is not None:
        return _policy == "batch"
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in environ for name in USER_SETTINGS):
        return False
    if _set_thresholds(BATCH_MMAP_THRESHOLD, BATCH_TRIM_THRESHOLD):
        _policy = "batch"
    return _policy == "batch"


def keep_large_blocks_on_mmap() -> bool:
    """The server policy (replacing the batch one); False where that is not glibc."""
    global _policy
    if _policy == "server":
        return True
    if _glibc() is None:
        return False
    if not _set_thresholds(SERVER_MMAP_THRESHOLD, SERVER_TRIM_THRESHOLD):
        log.warning("could not set the allocator's mmap threshold")
        return False
    _policy = "server"
    return True


def release_free_memory() -> None:
    """Return the heap's free pages to the system (a few ms; call after big requests)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)


def kept() -> bool:
    """Whether the batch policy is in force here (benchmarks and bundles record it)."""
    return _policy == "batch"


def _set_thresholds(mmap_bytes: int, trim_bytes: int) -> bool:
    libc = _glibc()
    if libc is None:
        return False
    return bool(libc.mallopt(M_MMAP_THRESHOLD, mmap_bytes)) and bool(
        libc.mallopt(M_TRIM_THRESHOLD, trim_bytes)
    )


@cache
def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
    except OSError:
        return None
    if not all(hasattr(libc, f) for f in ("gnu_get_libc_version", "mallopt", "malloc_trim")):
        return None  # musl and others
    libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    libc.mallopt.restype = ctypes.c_int
    return libc
