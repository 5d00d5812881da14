"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import os

from imageclf.device import machine as describe  # noqa: F401 (the benchmarks' name)


def loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")
