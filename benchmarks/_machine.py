"""What every benchmark records about the machine it ran on."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from imageclf.device import machine as describe


def loadavg() -> float:
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def write_result(out: str | os.PathLike, rows: list[dict], load_before: float, **extra) -> dict:
    """The JSON every benchmark leaves: machine, date, load before and after, its rows."""
    result = {
        "machine": describe(),
        "date": time.strftime("%Y-%m-%d"),
        "load_before": load_before,
        "load_after": loadavg(),
        **extra,
        "rows": rows,
    }
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2))
    return result
