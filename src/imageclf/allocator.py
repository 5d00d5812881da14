"""Keep freed tensor memory in the process instead of handing it back to the kernel.

glibc's malloc serves every block over its mmap threshold (at most 32 MiB by default)
with a fresh ``mmap`` and unmaps it on ``free``. PyTorch's CPU tensors come straight from
malloc, so each forward pass over a batch of 96-128 px pictures maps its large
activations anew and the kernel faults them in page by page: EfficientNet-Lite0 scoring
128 px pictures spent 142 of its 486 CPU seconds in the kernel (69 million minor
faults). Raising both thresholds keeps those blocks in the heap for the next batch
(``benchmarks/allocator.py``: Lite0 inference at 96-128 px 1.35-1.46x as fast, training
1.05-1.09x, on a 2-core AVX-512 Xeon).

Only the command line turns this on (``imageclf.cli.entry.main``): it is a setting of the
whole process, which a library must not change behind its host's back. Call
``keep_freed_memory()`` yourself to get the same in your own process.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os
import sys

log = logging.getLogger("imageclf.allocator")

# Blocks below this come from the heap and are reused; a whole dataset (the mirror at
# 128 px is 2.9 GB) still gets its own mapping and goes back to the kernel when freed.
MMAP_THRESHOLD = 256 * 1024**2
# Free memory at the top of the heap that is kept rather than returned.
TRIM_THRESHOLD = 512 * 1024**2
M_TRIM_THRESHOLD, M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
# The user's own malloc settings win; IMAGECLF_KEEP_FREED_MEMORY=0 turns ours off.
USER_SETTINGS = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_", "GLIBC_TUNABLES")
OPT_OUT = "IMAGECLF_KEEP_FREED_MEMORY"

_applied = False


def keep_freed_memory(environ: dict[str, str] | None = None) -> bool:
    """Raise glibc's mmap and trim thresholds for this process (and the processes it
    forks, such as gunicorn's workers). True when the setting is in force; False on other
    C libraries, when the user configured malloc, or when ``IMAGECLF_KEEP_FREED_MEMORY=0``."""
    global _applied
    environ = os.environ if environ is None else environ
    if _applied:
        return True
    if environ.get(OPT_OUT, "1").strip().lower() in ("0", "false", "no", "off"):
        return False
    if any(name in environ for name in USER_SETTINGS):
        return False
    libc = _glibc()
    if libc is None:
        return False
    ok = libc.mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD) and libc.mallopt(
        M_TRIM_THRESHOLD, TRIM_THRESHOLD
    )
    _applied = bool(ok)
    if not ok:
        log.debug("mallopt refused the thresholds; malloc keeps its defaults")
    return _applied


def kept() -> bool:
    """Whether ``keep_freed_memory`` is in force here (benchmarks record it)."""
    return _applied


def _glibc() -> ctypes.CDLL | None:
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        libc.gnu_get_libc_version  # noqa: B018 - musl and others lack it
        libc.mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
        libc.mallopt.restype = ctypes.c_int
    except (OSError, AttributeError):
        return None
    return libc
