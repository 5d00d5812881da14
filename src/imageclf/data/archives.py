"""Archives of a dataset: ``.tar``, ``.tar.gz``/``.tgz`` and ``.zip``, read in memory.

An archive is listed as (member path, bytes) entries, the same shape a folder is
listed in (``folders.walk_folder``), so one set of layout rules reads both. A damaged
or unreadable archive is one ``DataError``.
"""

from __future__ import annotations

import tarfile
import zipfile
import zlib
from collections.abc import Iterator
from pathlib import Path

from ..errors import DataError

ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".zip")


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
    kind = archive_kind(path)
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                for info in archive.infolist():
                    yield info.filename, None if info.is_dir() else archive.read(info)
        else:
            with tarfile.open(path, "r:*") as archive:
                for member in archive:
                    if member.isdir():
                        yield member.name, None
                    elif member.isfile():
                        handle = archive.extractfile(member)
                        yield member.name, handle.read() if handle else b""
    except (tarfile.TarError, zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
        raise DataError(f"{path} is not a readable archive or is corrupt ({exc})") from None
