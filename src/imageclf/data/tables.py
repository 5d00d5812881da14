"""Labels from a table: ``--data labels.csv`` (or a folder holding ``labels.csv``), a
file column naming pictures relative to the table's folder and a label column (or one
0/1 column per label), with an optional split column; several labels in a row make
the data multi-label (``Dataset.labels`` multi-hot).

The table is untrusted: read capped (``fileio.read_file_capped``), every row checked
(``table_rules``) and every file it names checked before anything is decoded: a path
that leaves the table's folder (``..``, absolute, or a symbolic link out), a missing
file, a file named twice, each one ``DataError`` naming the spreadsheet row. Pictures
are decoded the way folders' are (``folders.decode_file``), unreadable ones skipped and
named. The cache key covers the table's bytes, the options and every named file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm.auto import tqdm

from ..errors import DataError, ImageError, UserInputError
from ..fileio import printable, read_file_capped
from .dataset import TRAIN, Dataset, MemoryPixels, class_counts
from .folders import decode_file
from .layout import check_classes, summarize_names
from .memory import check_memory
from .table_rules import TableOptions, TableRows, check_enough, parse_csv, read_rows

log = logging.getLogger("imageclf.data")

LABELS_CSV = "labels.csv"  # the table a folder given as --data may hold
MAX_TABLE_BYTES = 64 * 1024 * 1024  # about a million rows
TABLE_VERSION = 1  # bump when the same table and files would decode differently
_DRIVE = re.compile(r"^[A-Za-z]:")


def table_file(path: Path) -> Path | None:
    """The table ``path`` names: a .csv file, or a folder's ``labels.csv``; else None.
    Not only regular files: a FIFO or device so named is refused by the capped read."""
    if path.suffix.lower() == ".csv" and path.exists() and not path.is_dir():
        return path
    if path.is_dir() and (path / LABELS_CSV).exists():
        return path / LABELS_CSV
    return None


@dataclass
class Table:
    """A checked table: the pictures it names (real paths inside its folder), their
    labels and partitions; nothing decoded yet."""

    csv: Path
    source: str
    options: TableOptions
    content: bytes
    rows: TableRows
    paths: list[Path]  # the file of each row
    names: list[str]  # each row's file, relative to the table's folder

    @property
    def multi_label(self) -> bool:
        return self.rows.multi_label

    def fingerprint(self, size: int) -> str:
        """Changes with the table's bytes, the options, the decode size or any file."""
        settings = json.dumps(self.options.to_dict(), sort_keys=True)
        digest = hashlib.sha256(f"imageclf-table-v{TABLE_VERSION}|size={size}|{settings}|".encode())
        digest.update(hashlib.sha256(self.content).digest())
        for name, path in zip(self.names, self.paths, strict=True):
            try:
                stat = path.stat()
                digest.update(f"{name}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
            except OSError:  # gone since it was checked: decoding will say so
                digest.update(f"{name}|missing\n".encode())
        return digest.hexdigest()[:32]

    def label_array(self) -> np.ndarray:
        """(N,) class indices, or (N, C) uint8 multi-hot for multi-label data."""
        index = {c: i for i, c in enumerate(self.rows.classes)}
        if not self.multi_label:
            return np.array([index[found[0]] for found in self.rows.labels], np.int64)
        hot = np.zeros((len(self.names), len(index)), np.uint8)
        for i, found in enumerate(self.rows.labels):
            hot[i, [index[x] for x in found]] = 1
        return hot


def table_for(path: Path, options: TableOptions | dict | None) -> Table | None:
    """The checked table ``path`` names, or None for other sources (which take no table
    options: given, they are a mistake worth saying)."""
    if table_file(path) is not None:
        return read_table(path, options)
    if options and (not isinstance(options, TableOptions) or options.to_dict()):
        raise DataError(
            f"{path}: the table options (--file-column, --label-column, ...) are for a .csv "
            f"labels table, or a folder holding {LABELS_CSV}"
        )
    return None


def read_table(path: Path, options: TableOptions | dict | None = None) -> Table:
    """The table at ``path`` (a .csv, or a folder with ``labels.csv``) read and checked,
    rows and files; says single- or multi-label in the log."""
    if not isinstance(options, TableOptions):
        options = TableOptions.from_dict(options)
    csv = table_file(path)
    if csv is None:
        raise DataError(f"{path}: not a table (a .csv file, or a folder with {LABELS_CSV})")
    where = str(csv)
    try:
        content = read_file_capped(csv, MAX_TABLE_BYTES)
    except UserInputError as exc:
        raise DataError(str(exc)) from None
    header, records = parse_csv(content, where)
    rows = read_rows(header, records, options, where)
    check_classes(rows.classes, where)
    if TRAIN not in rows.partition:
        raise DataError(f"{where}: no row's split is train; training needs some")
    paths, names = _check_files(csv.parent, rows, where)
    log.info("%s: %d rows, %d labels, %s", where, len(names), len(rows.classes), rows.why)
    return Table(csv, str(path), options, content, rows, paths, names)


def _check_files(root: Path, rows: TableRows, where: str) -> tuple[list[Path], list[str]]:
    """Each row's file: relative, inside the table's folder (symbolic links included),
    present, a file, named once. The first problem is one error naming its row."""
    home = os.path.realpath(root)
    seen: dict[str, int] = {}
    missing: list[int] = []
    paths, names = [], []
    for number, cell in zip(rows.rows, rows.files, strict=True):
        name = _relative(cell, number, where)
        full = root / name
        real = os.path.realpath(full)
        if not (real == home or real.startswith(home.rstrip(os.sep) + os.sep)):
            raise DataError(
                f"{where} row {number}: {printable(name)} leads out of the table's folder "
                "(a symbolic link); pictures must lie inside it"
            )
        if not os.path.lexists(full) or not os.path.exists(real):
            missing.append(number)
        elif os.path.isdir(real):
            raise DataError(f"{where} row {number}: {printable(name)} is a folder, not a picture")
        if real in seen:
            raise DataError(
                f"{where} row {number}: {printable(name)} is named again (first in row "
                f"{seen[real]}); each picture may appear once"
            )
        seen[real] = number
        paths.append(full)
        names.append(name)
    if missing:
        first = names[rows.rows.index(missing[0])]
        more = f" (and {len(missing) - 1} more rows)" if len(missing) > 1 else ""
        raise DataError(
            f"{where} row {missing[0]}: {printable(first)} not found{more}; files are named "
            "relative to the table's folder"
        )
    return paths, names


def _relative(cell: str, number: int, where: str) -> str:
    """The file cell as a clean relative path ('\\' read as '/', as Windows writes it)."""
    text = cell.strip().replace("\\", "/")
    if not text:
        raise DataError(f"{where} row {number}: no file name")
    if printable(text) != text:
        raise DataError(f"{where} row {number}: the file name {printable(text)} holds control "
                        "characters")  # fmt: skip
    if text.startswith("/") or _DRIVE.match(text):
        raise DataError(
            f"{where} row {number}: {printable(text)} is an absolute path; name files "
            "relative to the table's folder"
        )
    parts = [p for p in PurePosixPath(text).parts if p != "."]
    if ".." in parts:
        raise DataError(
            f"{where} row {number}: {printable(text)} leaves the table's folder (..); "
            "pictures must lie inside it"
        )
    if not parts:
        raise DataError(f"{where} row {number}: {printable(text)} names no file")
    return "/".join(parts)


def decode_table(
    table: Table,
    size: int,
    fingerprint: str,
    progress: bool = True,
    open_sink: Callable | None = None,
) -> Dataset:
    """Every picture the table names decoded at ``size`` into ``open_sink(n, size)``
    (default: memory, refused if it cannot fit); unreadable files skipped and named."""
    n = len(table.names)
    if open_sink is None:
        check_memory(n, size, table.source)
        open_sink = MemoryPixels
    sink = open_sink(n, size)
    kept: list[int] = []
    skipped: list[str] = []
    try:
        for i, path in enumerate(
            tqdm(table.paths, desc=f"decoding {table.csv.name}", unit="img", disable=not progress)
        ):
            try:
                picture = decode_file(path, size)
            except (ImageError, DataError, OSError) as exc:
                reason = getattr(exc, "strerror", None) or str(exc)
                skipped.append(f"{table.names[i]} ({reason})")
                continue
            sink.append(picture)
            kept.append(i)
        pixels = sink.finish()
    except BaseException:
        sink.abort()  # a half-written file on disk is removed, never cached
        raise
    if skipped:
        log.warning("%s: skipped %d unreadable image(s): %s", table.source, len(skipped),
                    summarize_names(skipped))  # fmt: skip
    at = np.array(kept, np.int64)
    labels = table.label_array()[at]
    partition = np.array(table.rows.partition, np.uint8)[at]
    classes = table.rows.classes
    if not (partition == TRAIN).any():
        raise DataError(f"{table.source}: no readable training pictures")
    check_enough(classes, class_counts(labels[partition == TRAIN], len(classes)), table.source)
    names = np.array([table.names[i] for i in kept])
    return Dataset(pixels, labels, partition, classes, table.source, fingerprint, names, skipped)
