"""Log lines for the terminal (or JSON lines for machines) that do not tear progress bars."""

from __future__ import annotations

import json
import logging
import sys

from ..fileio import printable

_FORMATTER = logging.Formatter()


class _TqdmHandler(logging.Handler):
    """Log lines that do not tear through progress bars."""

    def __init__(self, json_lines: bool) -> None:
        super().__init__()
        self.json_lines = json_lines

    def emit(self, record: logging.LogRecord) -> None:
        from tqdm.auto import tqdm

        # A logged exception keeps its traceback: without it a server's 500 is undebuggable.
        trace = _FORMATTER.formatException(record.exc_info) if record.exc_info else None
        if self.json_lines:
            entry = {
                "time": round(record.created, 3),
                "level": record.levelname.lower(),
                "logger": record.name,
                "message": record.getMessage(),
            }
            if trace:
                entry["traceback"] = trace
            text = json.dumps(entry)
        else:
            # Messages carry names from the data: printed safe (no terminal escapes).
            text = printable(record.getMessage()) + (f"\n{trace}" if trace else "")
        tqdm.write(text, file=sys.stdout)


def configure_logging(quiet: bool, log_format: str) -> None:
    root = logging.getLogger("imageclf")
    root.handlers[:] = [_TqdmHandler(log_format == "json")]
    root.setLevel(logging.WARNING if quiet else logging.INFO)
    root.propagate = False
