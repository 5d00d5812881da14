"""Where the decoded pictures live: in memory when they fit (fastest), else in a
memory-mapped file on disk that training reads through the page cache, so a folder
bigger than RAM still trains at its full size. Chosen once per load, and said."""

from __future__ import annotations

import logging
import os
import re
import shutil
from pathlib import Path

from ..errors import DataError

log = logging.getLogger("imageclf.data")

# Hold pictures in memory only up to this share of the memory available right now: the
# model, its activations and the batches need the rest.
MEMORY_SHARE = 0.8
# IMAGECLF_MEMORY_LIMIT=2G caps what imageclf counts as available (a shared machine,
# a test); below the cgroup limit and MemAvailable, never above them.
LIMIT_ENV = "IMAGECLF_MEMORY_LIMIT"
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
# Space left free on the cache's disk after the pictures are written.
DISK_RESERVE = 1024**3


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_room() -> int | None:
    """What a cgroup v2 memory.max still allows this process (None: no limit)."""
    try:
        base = Path("/sys/fs/cgroup")
        own = Path(Path("/proc/self/cgroup").read_text().strip().split("::", 1)[-1].lstrip("/"))
        limit = (base / own / "memory.max").read_text().strip()
        if limit == "max":
            return None
        return max(0, int(limit) - int((base / own / "memory.current").read_text()))
    except (OSError, ValueError, IndexError):
        return None


def parse_size(text: str) -> int:
    """``"2G"``, ``"512M"``, ``"1500000000"`` -> bytes (binary units)."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if match is None:
        raise DataError(f"{LIMIT_ENV}={text!r} is not a size; use bytes or e.g. 512M, 2G")
    return int(float(match.group(1)) * _UNITS[match.group(2).upper()])


def memory_available() -> int | None:
    """Bytes this process may still fill: MemAvailable, lowered by a cgroup limit and by
    ``IMAGECLF_MEMORY_LIMIT``; None when nothing says."""
    known = [v for v in (_memory_available(), _cgroup_room()) if v is not None]
    if os.environ.get(LIMIT_ENV):
        known.append(parse_size(os.environ[LIMIT_ENV]))
    return min(known) if known else None


def decoded_bytes(n: int, size: int) -> int:
    """N x S x S x 3: every picture as uint8 at the training size."""
    return n * size * size * 3


def fits_in_memory(need: int) -> bool:
    have = memory_available()
    return have is None or need <= MEMORY_SHARE * have


def choose_storage(n: int, size: int, source: str) -> str:
    """``"memory"`` or ``"disk"`` for ``n`` pictures at ``size``, logged with the reason."""
    need = decoded_bytes(n, size)
    have = memory_available()
    where = "memory" if fits_in_memory(need) else "disk"
    room = f"{have / 1e9:.1f} GB of memory available" if have is not None else "memory unknown"
    if where == "memory":
        log.info("%s: %s images at %dx%d (%s) held in memory (%s)",
                 source, f"{n:,}", size, size, _gb(need), room)  # fmt: skip
    else:
        log.info("%s: %s images at %dx%d (%s) do not fit in memory (%s): memory-mapped from "
                 "disk, read through the page cache", source, f"{n:,}", size, size, _gb(need),
                 room)  # fmt: skip
    return where


def check_disk(folder: Path, need: int, source: str) -> None:
    """The disk cache needs ``need`` bytes free (plus a reserve); one clear error if not."""
    folder.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(folder).free
    if need + DISK_RESERVE > free:
        raise DataError(
            f"{source}: the decoded pictures need {_gb(need)} on disk in {folder} and "
            f"{_gb(free)} is free; free some space, set IMAGECLF_HOME to a bigger disk, or "
            "use a smaller --image-size"
        )


def check_memory(n: int, size: int, source: str) -> None:
    """For readers that decode into memory only (CIFAR's batches): N x S x S x 3 bytes
    (150 KB per image at 224, so 50,000 images need 7.5 GB). Refuse clearly rather than
    swap or die."""
    need = decoded_bytes(n, size)
    have = memory_available()
    if have is not None and need > MEMORY_SHARE * have:
        raise DataError(
            f"{source}: {n:,} images at {size}x{size} need {need / 1e9:.1f} GB of memory "
            f"decoded, and {have / 1e9:.1f} GB is available; use a smaller --image-size "
            "or fewer images"
        )


def _gb(n: int) -> str:
    return f"{n / 1e9:.2f} GB" if n < 1e10 else f"{n / 1e9:.0f} GB"
