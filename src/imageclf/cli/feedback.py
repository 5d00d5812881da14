"""``imageclf feedback summary DIR``: where the served model is wrong most, from the log
that ``serve --feedback-dir DIR`` keeps (``web/feedback.py``)."""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import click

from ..errors import DataError, UserInputError
from ..fileio import printable

_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")
COLUMNS = 7  # web.feedback.LOG_HEADER


@dataclass
class FeedbackSummary:
    """Counts from the log: answers, confusions (predicted -> corrected), per class."""

    answers: int = 0
    versions: Counter = field(default_factory=Counter)
    confusions: Counter = field(default_factory=Counter)  # (predicted, corrected), wrong only
    per_class: dict[str, Counter] = field(default_factory=dict)  # predicted -> right/wrong


def _cell(text: str) -> str:
    """A cell as it was before ``fileio.csv_cell`` guarded it against spreadsheets."""
    return text[1:] if text.startswith("'") and text[1:].startswith(_FORMULA_START) else text


def summarize(root: str | os.PathLike) -> FeedbackSummary:
    """Read ``root/feedback.csv``; a ``UserInputError``/``DataError`` line if it cannot be."""
    from ..web.feedback import LOG_HEADER, LOG_NAME  # the web app's names, loaded on use

    root = Path(root)
    if not root.is_dir():
        what = "it is not a folder" if root.exists() else "no such folder"
        raise UserInputError(f"{printable(str(root))} is not a feedback folder: {what}")
    log = root / LOG_NAME
    if not log.is_file():
        raise UserInputError(
            f"{root} holds no {LOG_NAME}: no feedback yet, or not a folder made by "
            "'imageclf serve --feedback-dir'"
        )
    summary = FeedbackSummary()
    with open(log, encoding="utf-8", errors="replace", newline="") as handle:
        try:
            rows = csv.reader(handle)
            header = next(rows, None)
            if header != LOG_HEADER:
                raise DataError(f"{log}: not a feedback log (its header is not {LOG_HEADER})")
            for number, row in enumerate(rows, start=2):
                _count(summary, row, f"{log}, line {number}")
        except csv.Error as exc:
            raise DataError(f"{log}: not readable as CSV ({exc})") from None
    return summary


def _count(summary: FeedbackSummary, row: list[str], where: str) -> None:
    if len(row) != COLUMNS:
        raise DataError(f"{where}: expected {COLUMNS} cells, found {len(row)}")
    _, version, predicted, _, corrected, _, _ = (_cell(cell) for cell in row)
    summary.answers += 1
    summary.versions[version] += 1
    counts = summary.per_class.setdefault(predicted, Counter())
    if predicted == corrected:
        counts["right"] += 1
    else:
        counts["wrong"] += 1
        summary.confusions[(predicted, corrected)] += 1


def render(summary: FeedbackSummary, root: str, top: int) -> str:
    """The summary as text: totals, the most common confusions, then each class."""
    wrong = sum(summary.confusions.values())
    lines = [
        f"{printable(root)}: {summary.answers} answers, {summary.answers - wrong} right, "
        f"{wrong} wrong, from {len(summary.versions)} model version(s)"
    ]
    if summary.confusions:
        lines += ["", "most common mistakes (the model said -> it is):"]
        for (said, actual), count in summary.confusions.most_common(top):
            lines.append(f"  {count:6d}  {printable(said)} -> {printable(actual)}")
    if summary.per_class:
        width = max(12, *(len(printable(name)) for name in summary.per_class))
        lines += ["", f"  {'model said':<{width}}  answers  right  wrong  right %"]
        by_wrong = sorted(summary.per_class.items(), key=lambda kv: (-kv[1]["wrong"], kv[0]))
        for name, counts in by_wrong:
            total = counts["right"] + counts["wrong"]
            lines.append(
                f"  {printable(name):<{width}}  {total:7d}  {counts['right']:5d}  "
                f"{counts['wrong']:5d}  {100.0 * counts['right'] / total:6.1f}%"
            )
    return "\n".join(lines)


@click.group("feedback")
def feedback_command() -> None:
    """What users answered about the served model ('serve --feedback-dir DIR')."""


@feedback_command.command("summary")
@click.argument("folder", type=click.Path())
@click.option(
    "--top",
    type=click.IntRange(min=1),
    default=10,
    show_default=True,
    help="How many of the most common mistakes to list.",
)
def summary_command(folder: str, top: int) -> None:
    """Where the model is wrong most: (said -> is) pairs, most common first, and each
    class's answers ('none of these': a picture of none of its classes)."""
    click.echo(render(summarize(folder), folder, top))
