"""Will a dataset fit? Every image is held decoded at the training size, so a source
that would not fit in memory is refused up front, as one clear error, rather than
swapping or being killed halfway through decoding."""

from __future__ import annotations

from ..errors import DataError

# Refuse to decode into more than this share of the memory available right now.
MEMORY_SHARE = 0.8


def _memory_available() -> int | None:
    try:
        with open("/proc/meminfo") as handle:
            for line in handle:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def check_memory(n: int, size: int, source: str) -> None:
    """Every image is held decoded at the training size: N x S x S x 3 bytes (150 KB per
    image at 224, so 50,000 images need 7.5 GB). Refuse clearly rather than swap or die."""
    need = n * size * size * 3
    have = _memory_available()
    if have is not None and need > MEMORY_SHARE * have:
        raise DataError(
            f"{source}: {n:,} images at {size}x{size} need {need / 1e9:.1f} GB of memory "
            f"decoded, and {have / 1e9:.1f} GB is available; use a smaller --image-size "
            "or fewer images"
        )
