"""The flags that say how a labels table is read (``--data labels.csv``), shared by every
command that reads ``--data``: ``table_flags`` adds them, ``fold_table`` gathers what
was given into one ``table`` setting (``data.table_rules.TableOptions``)."""

from __future__ import annotations

from collections.abc import Callable

import click

FLAGS = ("file_column", "label_column", "split_column", "label_delimiter", "label_columns",
         "multi_label")  # fmt: skip


def _columns(ctx: click.Context, param: click.Parameter, value: str | None) -> list | None:
    if value is None:
        return None
    names = [name.strip() for name in value.split(",") if name.strip()]
    if not names:
        raise click.BadParameter("name the label columns, e.g. cat,dog,bird")
    return names


def table_flags(command: Callable) -> Callable:
    """Add the table flags to a click command (outermost last, so they list together)."""
    flags = [
        click.option("--file-column", default=None, metavar="NAME",
                     help="Table: the column of file paths, relative to the table's folder "
                     "(default: file, filename, path or image)."),
        click.option("--label-column", default=None, metavar="NAME",
                     help="Table: the column of labels (default: label, labels or tags)."),
        click.option("--split-column", default=None, metavar="NAME",
                     help="Table: the column saying train, val or test (default: split, "
                     "if the table has it)."),
        click.option("--label-delimiter", default=None, metavar="TEXT",
                     help="Table: what separates several labels in a cell (default: a "
                     "space; '' keeps the cell whole)."),
        click.option("--label-columns", default=None, metavar="A,B,...", callback=_columns,
                     help="Table: one 0/1 column per label, instead of --label-column."),
        click.option("--multi-label", is_flag=True, default=None,
                     help="Table: several labels per picture, even if no row names two."),
    ]  # fmt: skip
    for flag in reversed(flags):
        command = flag(command)
    return command


def fold_table(options: dict) -> dict:
    """``options`` with the table flags given folded into one ``table`` entry (none
    given: no ``table`` entry, so a recipe's or run's own is kept)."""
    rest = {k: v for k, v in options.items() if k not in FLAGS}
    given = {k: options[k] for k in FLAGS if options.get(k) is not None}
    if given:
        rest["table"] = given
    return rest
