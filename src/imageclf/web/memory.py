"""Give a big request's memory back to the operating system when it is done.

glibc serves large blocks (Pillow allocates pictures in blocks of up to 16 MB) with
mmap at first, but raises that threshold each time such a block is freed: later
pictures then come from the heap, which keeps the pages after they are freed. A
worker that decoded a few large uploads stayed gigabytes bigger for good. A fixed
threshold keeps large blocks on mmap (freed at once), and ``malloc_trim`` hands back
the heap pages a request left free. Elsewhere than glibc both are no-ops.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
from functools import cache

log = logging.getLogger("imageclf.web")

M_MMAP_THRESHOLD = -3  # mallopt parameter (malloc.h)
# Blocks from this size up get their own mapping: pictures, not the interpreter's objects.
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024


@cache
def _glibc() -> ctypes.CDLL | None:
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name) if name else None
    except OSError:
        return None
    if libc is None or not hasattr(libc, "malloc_trim") or not hasattr(libc, "mallopt"):
        return None
    return libc


@cache
def keep_large_blocks_on_mmap() -> bool:
    """Fix glibc's mmap threshold for this process (once); False where that is not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    ok = bool(libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES))
    if not ok:
        log.warning("could not set the allocator's mmap threshold")
    return ok


def release_free_memory() -> None:
    """Return the heap's free pages to the system (a few ms; call after big requests)."""
    libc = _glibc()
    if libc is not None:
        libc.malloc_trim(0)
