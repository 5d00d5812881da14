"""Files in and out: atomic writes (a crash or Ctrl-C never leaves a half-written file)
and bounded reads of untrusted paths (a huge file, a FIFO or a symlink loop is a clear
error, never a hang or a MemoryError)."""

from __future__ import annotations

import contextlib
import json
import os
import stat
import tempfile
from collections.abc import Iterator
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
    ``what``: bad syntax, nesting deeper than ``MAX_JSON_DEPTH``, and NaN or Infinity
    (not JSON: they would come back out as invalid JSON in our own answers)."""

    def refuse_constant(name: str) -> float:
        raise error(f"{what} holds {name}, which is not a JSON number")

    try:
        value = json.loads(text, parse_constant=refuse_constant)
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
