"""The rules of a labels table, read from its text alone (no picture opened): which
columns hold what, each row's labels and split, single- or multi-label.

A table is untrusted input typed by a person in a spreadsheet, so every problem is one
``DataError`` naming the row as the spreadsheet shows it (the header is row 1) and,
for a missing column, the nearest column the table has. ``tables`` checks the files the
rows name and decodes them.
"""

from __future__ import annotations

import csv
import dataclasses
import difflib
import io
import re
from dataclasses import dataclass

from ..errors import DataError, UserInputError
from ..fileio import printable
from .dataset import TRAIN
from .layout import PARTITIONS

# Column names tried, in order, when no --file-column / --label-column is given.
FILE_COLUMNS = ("file", "filename", "file_name", "path", "image", "fname")
LABEL_COLUMNS = ("label", "labels", "tags", "class")
SPLIT_COLUMN = "split"
_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 (surrogateescape)
MAX_OPTION_TEXT = 200


@dataclass(frozen=True)
class TableOptions:
    """How a labels table is read (each a CLI flag; recorded in the run's config so
    ``evaluate`` reads the table the same way). ``None`` columns: the defaults above,
    and no split column when the table has no ``split`` column."""

    file_column: str | None = None
    label_column: str | None = None
    split_column: str | None = None
    label_delimiter: str = " "  # as fastai; "" = the whole cell is one label
    label_columns: tuple[str, ...] = ()  # one 0/1 column per label instead of label_column
    multi_label: bool = False  # even if no row names two labels

    @classmethod
    def from_dict(cls, values: dict | None) -> TableOptions:
        """From a config's ``table`` (only the options set); bad keys or types are one
        ``UserInputError`` naming the option."""
        values = dict(values or {})
        known = {f.name: f for f in dataclasses.fields(cls)}
        for key, value in values.items():
            if key not in known:
                close = difflib.get_close_matches(key, list(known), n=1)
                hint = f"; did you mean {close[0]!r}?" if close else ""
                raise UserInputError(f"unknown table option {key!r}{hint}")
            _check_option(key, value)
        if "label_columns" in values:
            values["label_columns"] = tuple(values["label_columns"])
        return cls(**values)

    def to_dict(self) -> dict:
        """Only the options that differ from the defaults (what the config records)."""
        default = TableOptions()
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != getattr(default, f.name)
        }


def _check_option(key: str, value: object) -> None:
    if key == "multi_label":
        ok = isinstance(value, bool)
    elif key == "label_columns":
        ok = isinstance(value, list | tuple) and all(_name_ok(v) for v in value)
        ok = ok and len(set(value)) == len(value)
    elif key == "label_delimiter":
        ok = isinstance(value, str) and len(value) <= 8 and "\n" not in value
    else:
        ok = value is None or _name_ok(value)
    if not ok:
        raise UserInputError(f"bad table option {key}: {printable(repr(value)[:80])}")


def _name_ok(value: object) -> bool:
    return isinstance(value, str) and 0 < len(value) <= MAX_OPTION_TEXT and value.isprintable()


@dataclass
class TableRows:
    """What the rows say: the file cell, labels and partition of each data row."""

    rows: list[int]  # the spreadsheet row of each entry (header = 1)
    files: list[str]  # the file cell as written
    labels: list[list[str]]  # each row's labels (one for single-label data)
    partition: list[int]  # TRAIN, VAL or TEST
    classes: list[str]
    multi_label: bool
    why: str  # why single- or multi-label, for the log


def parse_csv(data: bytes, where: str) -> tuple[list[str], list[tuple[int, list[str]]]]:
    """The header and the non-blank rows with their row numbers. UTF-8 (a byte-order
    mark is fine); anything else is one error naming the first row that is not."""
    text = data.decode("utf-8", errors="surrogateescape").removeprefix("\ufeff")
    reader = csv.reader(io.StringIO(text, newline=""))
    records: list[tuple[int, list[str]]] = []
    number = 0
    try:
        for number, record in enumerate(reader, start=1):
            if _SURROGATE.search("\x00".join(record)):
                raise DataError(
                    f"{where} row {number}: not UTF-8 text; save the table as UTF-8 (CSV UTF-8)"
                )
            if any(cell.strip() for cell in record):
                records.append((number, record))
    except csv.Error as exc:
        raise DataError(f"{where} row {number + 1}: not a readable CSV row ({exc})") from None
    if not records or records[0][0] != 1:
        raise DataError(f"{where}: the first row must name the columns (file, label, ...)")
    header = [name.strip() for name in records[0][1]]
    for name in header:
        if header.count(name) > 1:
            raise DataError(f"{where} row 1: the column {printable(name)!r} appears twice")
    return header, records[1:]


def find_column(
    header: list[str], chosen: str | None, defaults: tuple[str, ...], flag: str, where: str
) -> int | None:
    """The index of the chosen column (or the first default present); ``None`` when no
    default is present and none was chosen. A chosen column the table lacks is an error
    naming the nearest column."""
    lowered = [name.lower() for name in header]
    for name in (chosen,) if chosen is not None else defaults:
        if name in header:
            return header.index(name)
        if lowered.count(name.lower()) == 1:
            return lowered.index(name.lower())
    if chosen is None:
        return None
    raise DataError(missing_column(header, chosen, flag, where))


def missing_column(header: list[str], name: str, flag: str, where: str) -> str:
    """The error for a column the table lacks: the nearest one, and the flag to choose."""
    close = difflib.get_close_matches(name, header, n=1, cutoff=0.5)
    hint = f"; did you mean {printable(close[0])!r}?" if close else ""
    shown = ", ".join(printable(h) for h in header[:20]) + (" ..." if len(header) > 20 else "")
    odd = next((sep for sep in (";", "\t", "|") if len(header) == 1 and sep in header[0]), None)
    if odd:
        hint += f" (the table seems separated by {odd!r}: save it comma-separated)"
    return (
        f"{where}: no column {printable(name)!r}{hint}; the columns are: {shown} "
        f"(choose with {flag})"
    )


def read_rows(
    header: list[str], records: list[tuple[int, list[str]]], options: TableOptions, where: str
) -> TableRows:
    """Every row's file cell, labels and split, checked; classes sorted (or in the order
    of ``label_columns``); multi-label when a row names two labels or asked for."""
    if not records:
        raise DataError(f"{where}: the table has a header but no rows")
    file_at = find_column(header, options.file_column, FILE_COLUMNS, "--file-column", where)
    if file_at is None:
        raise DataError(missing_column(header, FILE_COLUMNS[0], "--file-column", where))
    split_at = find_column(header, options.split_column, (SPLIT_COLUMN,), "--split-column", where)
    if options.label_columns:
        if options.label_column is not None:
            raise UserInputError("choose --label-column or --label-columns, not both")
        label_at = [_exact(header, c, "--label-columns", where) for c in options.label_columns]
    else:
        one = find_column(header, options.label_column, LABEL_COLUMNS, "--label-column", where)
        if one is None:
            raise DataError(missing_column(header, LABEL_COLUMNS[0], "--label-column", where))
        label_at = [one]
    files, labels, partition, rows = [], [], [], []
    for number, record in records:
        record = _fit(record, len(header), number, where)
        files.append(record[file_at])
        if options.label_columns:
            labels.append(_one_hot(record, label_at, options.label_columns, number, where))
        else:
            labels.append(split_labels(record[label_at[0]], options.label_delimiter))
        partition.append(_partition(record[split_at], number, where) if split_at is not None
                         else TRAIN)  # fmt: skip
        rows.append(number)
    return _decide(rows, files, labels, partition, options, where)


def _exact(header: list[str], name: str, flag: str, where: str) -> int:
    if name not in header:
        raise DataError(missing_column(header, name, flag, where))
    return header.index(name)


def _fit(record: list[str], width: int, number: int, where: str) -> list[str]:
    """The row as wide as the header: empty cells a spreadsheet adds at the end dropped."""
    while len(record) > width and not record[-1].strip():
        record = record[:-1]
    if len(record) != width:
        raise DataError(f"{where} row {number}: {len(record)} cells, but the header has {width}")
    return record


def split_labels(cell: str, delimiter: str) -> list[str]:
    """A cell's labels: split at ``delimiter`` (" ": any whitespace; "": not split),
    stripped, empty pieces and repeats dropped."""
    pieces = cell.split() if delimiter == " " else cell.split(delimiter) if delimiter else [cell]
    out: list[str] = []
    for piece in (p.strip() for p in pieces):
        if piece and piece not in out:
            out.append(piece)
    return out


def _one_hot(
    record: list[str], at: list[int], names: tuple[str, ...], number: int, where: str
) -> list[str]:
    out = []
    for index, name in zip(at, names, strict=True):
        value = record[index].strip()
        if value not in ("0", "1"):
            raise DataError(
                f"{where} row {number}: column {printable(name)!r} holds "
                f"{printable(value[:20])!r}; label columns hold 0 or 1"
            )
        if value == "1":
            out.append(name)
    return out


def _partition(value: str, number: int, where: str) -> int:
    key = value.strip().lower()
    if key not in PARTITIONS:
        raise DataError(
            f"{where} row {number}: unknown split {printable(value.strip()[:40])!r}; "
            "use train, val or test"
        )
    return PARTITIONS[key]


def _decide(rows, files, labels, partition, options: TableOptions, where: str) -> TableRows:
    """Single- or multi-label (and why), rows without a label refused in single-label
    data, the classes."""
    several = next((i for i, found in enumerate(labels) if len(found) > 1), None)
    if several is not None:
        shown = " ".join(printable(x) for x in labels[several][:4])
        why = f"multi-label: row {rows[several]} names {len(labels[several])} labels ({shown})"
        if options.label_delimiter == " " and not options.label_columns:
            why += "; labels are split at spaces (--label-delimiter '' keeps a cell whole)"
    elif options.multi_label:
        why = "multi-label, as asked (--multi-label)"
    else:
        why = "single-label: one label per row"
    multi = several is not None or options.multi_label
    empty = [rows[i] for i, found in enumerate(labels) if not found]
    if empty and not multi:
        raise DataError(
            f"{where} row {empty[0]}: no label"
            + (f" (and {len(empty) - 1} more rows)" if len(empty) > 1 else "")
            + "; every picture needs one (several labels make the table multi-label)"
        )
    if empty:
        why += f"; {len(empty)} row(s) with no label (pictures of none of the labels)"
    if options.label_columns:
        classes = list(options.label_columns)
    else:
        classes = sorted({x for found in labels for x in found})
    return TableRows(rows, files, labels, partition, classes, multi, why)


def check_enough(classes: list[str], counts, source: str) -> None:
    """Every label needs 2 training pictures: one to learn from, one to hold out."""
    few = [f"{printable(c)} ({int(n)})" for c, n in zip(classes, counts, strict=True) if n < 2]
    if few:
        raise DataError(
            f"{source}: every label needs at least 2 training pictures; too few in: "
            f"{', '.join(few[:10])}" + (f" and {len(few) - 10} more" if len(few) > 10 else "")
        )
