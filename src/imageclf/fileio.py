"""Files in and out: atomic writes (a crash or Ctrl-C never leaves a half-written file),
bounded reads of untrusted paths (a huge file, a FIFO or a symlink loop is a clear
error, never a hang or a MemoryError), and untrusted names made safe to print."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import stat
import tempfile
import unicodedata
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

from .errors import UserInputError

MB = 1024 * 1024
# Nesting deeper than this in a metadata, recipe, space or settings file is no real
# document: Python's parser recurses, so 100,000 levels were a RecursionError traceback.
MAX_JSON_DEPTH = 64


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike, mode: str = "wb") -> Iterator[IO]:
    """Write to a temporary file beside ``path``, then rename it into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".part")
    try:
        with os.fdopen(fd, mode) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_write(path, "w") as handle:
        handle.write(text)


# What a path is when it is not a regular file, for messages that say the truth.
_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
)


def _kind(mode: int) -> str:
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


def _os_reason(exc: OSError) -> str:
    if isinstance(exc, FileNotFoundError):
        return "no such file or folder"
    return (exc.strerror or str(exc)).lower()


def unreadable_reason(path: str | os.PathLike) -> str:
    """Why ``path`` cannot be read as a file, in words: missing, a symlink loop, a FIFO..."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        return _os_reason(exc)
    if stat.S_ISREG(mode):
        return "is a file but cannot be read"
    return f"is {_kind(mode)}, not a regular file"


def size_text(n: int) -> str:
    """A byte count for a message: whole MB from 1 MB up, bytes below."""
    return f"{n / MB:,.0f} MB" if n >= MB else f"{n:,} bytes"


def read_file_capped(path: str | os.PathLike, max_bytes: int) -> bytes:
    """The bytes of a regular file of at most ``max_bytes``, or ``UserInputError`` saying why not.

    The size is checked before anything is read (a 30 GB sparse file costs nothing), and
    the read stops at the cap even if the file grows meanwhile. FIFOs and devices are
    refused without blocking: opening with O_NONBLOCK never waits for a writer.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UserInputError(f"cannot read {path}: {_os_reason(exc)}") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise UserInputError(f"cannot read {path}: it is {_kind(info.st_mode)}")
        if info.st_size > max_bytes:
            raise UserInputError(
                f"{path} is {info.st_size / MB:,.0f} MB; files may be at most {max_bytes // MB} MB"
            )
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as handle:  # buffered: reads until n or EOF
            data = handle.read(max_bytes + 1)
    except OSError as exc:
        raise UserInputError(f"cannot read {path}: {_os_reason(exc)}") from None
    finally:
        os.close(fd)
    if len(data) > max_bytes:
        raise UserInputError(f"{path} is larger than {max_bytes // MB} MB")
    return data


# Characters a name we did not choose must not carry to a terminal raw: C0 and C1
# controls and DEL (ANSI/OSC escape sequences, carriage returns, newlines), line and
# paragraph separators, and the bidi controls that reorder what is shown.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def _unsafe(ch: str) -> bool:
    return ch in _BIDI or unicodedata.category(ch) in ("Cc", "Zl", "Zp")


def printable(text: object) -> str:
    """``text`` safe to print on one terminal line: every control character escaped as
    Python writes it (``\\x1b``, ``\\n``, ``\\u202e``), everything else as it is. File and
    folder names come from whoever made the data: printed raw, an escape sequence in one
    could rewrite the terminal (its title, the clipboard, the lines above)."""
    text = str(text)
    if text.isprintable():  # the common case: nothing to escape
        return text
    return "".join(repr(ch)[1:-1] if _unsafe(ch) else ch for ch in text)


class RunLock:
    """An exclusive lock on a run folder for as long as one process trains into it.

    ``flock`` on ``.lock`` inside the folder: the kernel drops it when the process dies
    (even by SIGKILL), so a crashed run never leaves a stale lock behind, and a later
    ``--resume`` just works. A second process gets a one-line error naming the holder.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        import fcntl

        from .errors import UserInputError

        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self._handle = open(run_dir / ".lock", "a+")  # noqa: SIM115 (held until release)
        try:
            fcntl.flock(self._handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            self._handle.seek(0)
            holder = self._handle.read().strip() or "another process"
            self._handle.close()
            raise UserInputError(
                f"{run_dir} is in use: {holder} is training into it; wait for it to finish "
                "or choose another --out"
            ) from None
        self._handle.seek(0)
        self._handle.truncate()
        self._handle.write(f"imageclf pid {os.getpid()}")
        self._handle.flush()

    def release(self) -> None:
        if not self._handle.closed:
            import fcntl

            fcntl.flock(self._handle, fcntl.LOCK_UN)
            self._handle.close()


# ---------------------------------------------------------------- untrusted JSON
def parse_json(text: str | bytes, what: str, error: type[UserInputError] = UserInputError) -> Any:
    """JSON from a file we did not write ourselves, or one line of ``error`` naming
    ``what``: bad syntax, nesting deeper than ``MAX_JSON_DEPTH``, and NaN or Infinity,
    spelled out or as a number too large for a float (``1e999``): not JSON, they would
    come back out as invalid JSON in our own answers."""

    def refuse_constant(name: str) -> float:
        raise error(f"{what} holds {name}, which is not a JSON number")

    def finite_float(digits: str) -> float:
        number = float(digits)
        if not math.isfinite(number):
            raise error(f"{what} holds {digits[:40]}, too large for a number")
        return number

    try:
        value = json.loads(text, parse_constant=refuse_constant, parse_float=finite_float)
    except RecursionError:
        raise error(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise error(f"{what} is not valid JSON ({exc})") from None
    if _depth(value) > MAX_JSON_DEPTH:
        raise error(f"{what} is nested too deeply (more than {MAX_JSON_DEPTH} levels)")
    return value


def read_json_file(path: str | os.PathLike, what: str, max_bytes: int = MB) -> Any:
    """A JSON file we did not write (a recipe, a search space, a study's settings): read
    capped (``read_file_capped``), parsed by ``parse_json``; any failure is one line,
    ``cannot read {what} {path}: why``."""
    try:
        return parse_json(read_file_capped(path, max_bytes), "the file")
    except UserInputError as exc:
        raise UserInputError(f"cannot read {what} {path}: {exc}") from None


def _depth(value: Any) -> int:
    """Nesting depth of parsed JSON, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if isinstance(item, dict | list):
            deepest = max(deepest, depth)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, depth + 1) for child in children)
    return deepest


# ---------------------------------------------------------------- CSV for spreadsheets
# A cell that starts with one of these is a formula to Excel, LibreOffice and Sheets
# (OWASP "CSV injection"): a class or file name "=HYPERLINK(...)" would run when a
# report is opened. Such a cell gets a leading single quote, which shows it as text.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
_PLAIN_NUMBER = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?")


def csv_cell(value: Any) -> Any:
    """``value`` safe to open in a spreadsheet: text that a spreadsheet would read as a
    formula gets a leading ``'``; numbers, and text that is a plain number (``-0.5``),
    are left alone so numeric columns stay numeric."""
    if (
        isinstance(value, str)
        and value.startswith(_FORMULA_START)
        and not _PLAIN_NUMBER.fullmatch(value)
    ):
        return "'" + value
    return value


def csv_text(rows: Iterable[Sequence[Any]]) -> str:
    """Rows as CSV text (``\\n`` line ends), every cell through ``csv_cell``. A row with a
    carriage return in a cell (a file name can hold one) is quoted whole: the csv module
    quotes only the line terminator's characters, and a bare CR breaks readers."""
    buffer = io.StringIO()
    plain = csv.writer(buffer, lineterminator="\n")
    quoted = csv.writer(buffer, lineterminator="\n", quoting=csv.QUOTE_ALL)
    for row in rows:
        cells = [csv_cell(c) for c in row]
        has_cr = any(isinstance(c, str) and "\r" in c for c in cells)
        (quoted if has_cr else plain).writerow(cells)
    return buffer.getvalue()
