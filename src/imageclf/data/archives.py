"""Archives of a dataset: ``.tar``, ``.tar.gz``/``.tgz`` (or bz2, xz) and ``.zip``, read
in memory within budgets.

An archive is listed as (member path, bytes) entries, the same shape a folder is
listed in (``folders.walk_folder``), so one set of layout rules reads both. Every
member is held in memory until it is decoded, so an archive is read member by member
within budgets: each member at most ``MAX_MEMBER_BYTES`` (the rule for one file in a
folder), all of it at most ``MAX_ARCHIVE_BYTES`` decompressed, and, past
``RATIO_FLOOR_BYTES``, at most ``MAX_RATIO`` times its compressed size (a 2 MB zip of
2 GB of zeros is refused from its directory, before anything is decompressed). A damaged
or unreadable archive, or one over a budget, is one ``DataError`` naming the member.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import tarfile
import zipfile
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

from ..errors import DataError
from ..fileio import MB, printable, size_text
from ..imaging import MAX_FILE_BYTES

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")
# One member: the same cap as one file in a folder (or one file given to predict).
MAX_MEMBER_BYTES = MAX_FILE_BYTES
# Everything decompressed: all members are held in memory until decoded; 4 GiB is the
# most a zip without ZIP64 can hold. Bigger datasets are better extracted: a folder is
# read one file at a time.
MAX_ARCHIVE_BYTES = 4 * 1024**3
# Pictures are compressed already, so an archive of them barely shrinks; past the floor,
# decompressing to more than MAX_RATIO times the compressed size is a bomb, not pictures.
MAX_RATIO = 100
RATIO_FLOOR_BYTES = 64 * MB
# How compressed tar streams start (tarfile's "r:*" guesses the same way).
_MAGIC: tuple[tuple[bytes, Callable[[BinaryIO], BinaryIO]], ...] = (
    (b"\x1f\x8b", lambda raw: gzip.GzipFile(fileobj=raw, mode="rb")),
    (b"BZh", bz2.BZ2File),
    (b"\xfd7zXZ\x00", lzma.LZMAFile),
)


def archive_kind(path: Path) -> str | None:
    """``"zip"``, ``"tar"`` (compressed or not), or None for any other file name."""
    name = path.name.lower()
    if name.endswith(".zip"):
        return "zip"
    if name.endswith((".tar", ".tar.gz", ".tgz")):
        return "tar"
    return None


def iter_archive(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """Yield (member path, bytes) for files and (dir path, None) for folders."""
    try:
        if archive_kind(path) == "zip":
            yield from _iter_zip(path)
        else:
            yield from _iter_tar(path)
    except (
        tarfile.TarError, zipfile.BadZipFile, zlib.error, lzma.LZMAError, EOFError, OSError,
        RuntimeError, NotImplementedError,  # zip: encrypted, or an unknown compression
    ) as exc:  # fmt: skip
        raise DataError(f"{path} is not a readable archive or is corrupt ({exc})") from None


def _over(path: Path, member: str, what: str) -> DataError:
    """The one error for a budget: which archive, which member, which limit."""
    return DataError(f"{path}: member {printable(member)} {what}")


def _check(path: Path, member: str, size: int, total: int, packed: int | None) -> None:
    """The budgets, given a member's size, the bytes decompressed so far including it,
    and the compressed bytes they came from (None: not known yet, ratio not checked)."""
    if size > MAX_MEMBER_BYTES:
        raise _over(path, member, f"is {size_text(size)}; a member may be at most "
                    f"{size_text(MAX_MEMBER_BYTES)}")  # fmt: skip
    if total > MAX_ARCHIVE_BYTES:
        raise _over(path, member, f"takes the archive past {size_text(MAX_ARCHIVE_BYTES)} "
                    "decompressed; extract it and use the folder")  # fmt: skip
    if packed is not None and total > RATIO_FLOOR_BYTES and total > MAX_RATIO * max(packed, 1):
        raise _over(path, member, f"takes the archive to {total / max(packed, 1):,.0f} times "
                    f"its compressed size (at most {MAX_RATIO}): a decompression bomb")  # fmt: skip


def _iter_zip(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """The directory's declared sizes are checked for every member before anything is
    decompressed; zipfile never gives more than a member's declared size (a member that
    holds more fails its CRC), so the declared sizes bound what is read."""
    on_disk = path.stat().st_size  # members that share their data cannot claim it twice
    with zipfile.ZipFile(path) as archive:
        infos = archive.infolist()
        total = packed = 0
        for info in infos:
            total += info.file_size
            packed += info.compress_size
            _check(path, info.filename, info.file_size, total, min(packed, on_disk))
        for info in infos:
            yield info.filename, None if info.is_dir() else archive.read(info)


class _Budgeted:
    """A decompressed tar stream that keeps the budgets as tarfile reads it: headers
    (a pax or long-name header is read whole by tarfile) and skipped data count too."""

    def __init__(self, stream: BinaryIO, raw: BinaryIO, path: Path) -> None:
        self.stream, self.raw, self.path = stream, raw, path
        self.member = "(the first header)"  # what is being read, for the error

    def read(self, size: int = -1) -> bytes:
        # tarfile reads a member's data within its checked size, and a pax or long-name
        # header whole: one bigger than a member may be is refused before it is read.
        if size is None or size < 0 or size > MAX_MEMBER_BYTES + tarfile.BLOCKSIZE:
            shown = "all the rest" if size is None or size < 0 else size_text(size)
            raise _over(self.path, self.member, f"needs a read of {shown}; a member may be "
                        f"at most {size_text(MAX_MEMBER_BYTES)}")  # fmt: skip
        data = self.stream.read(size)
        self._account()
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        position = self.stream.seek(offset, whence)
        self._account()
        return position

    def tell(self) -> int:
        return self.stream.tell()

    def _account(self) -> None:
        _check(self.path, self.member, 0, self.stream.tell(), self.raw.tell())


def _iter_tar(path: Path) -> Iterator[tuple[str, bytes | None]]:
    """Members one at a time from a stream decompressed here (so its position is known):
    a member's size is checked from its header before its data is read."""
    with open(path, "rb") as raw:
        magic = raw.read(6)
        raw.seek(0)
        opener = next((o for m, o in _MAGIC if magic.startswith(m)), None)
        stream = opener(raw) if opener else raw
        budgeted = _Budgeted(stream, raw, path)
        with tarfile.open(fileobj=budgeted, mode="r:") as archive:
            for member in archive:
                budgeted.member = member.name
                # Every member, read or skipped (skipping decompresses too); the ratio is
                # checked as the data is read.
                _check(path, member.name, member.size, member.offset_data + member.size, None)
                if member.isdir():
                    yield member.name, None
                elif member.isfile():
                    handle = archive.extractfile(member)
                    yield member.name, handle.read() if handle else b""
                budgeted.member = f"(the header after {member.name})"
