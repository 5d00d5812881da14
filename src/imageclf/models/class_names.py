"""The text a model bundle can carry: its class names, architecture, name and recipe.

One rule, apart from the file format (``bundle``), so that the data readers apply the
same rule before training: a dataset whose class names no bundle can store is refused
up front, not after the last epoch.
"""

from __future__ import annotations

from typing import Any

MAX_CLASSES = 10_000
MAX_TEXT = 200  # characters in a class name, architecture or model name


def check_text(value: Any, what: str, limit: int = MAX_TEXT) -> None:
    """Printable text of 1 to ``limit`` characters (no tab, newline or escape), or a
    ``ValueError`` saying so: it is shown on terminals, web pages and in JSON."""
    if not (isinstance(value, str) and 0 < len(value) <= limit and value.isprintable()):
        raise ValueError(f"{what} must be printable text of 1 to {limit} characters")


def check_class_name(name: Any) -> None:
    """One class name a bundle can store; ``ValueError`` if not."""
    check_text(name, "every class name")


def check_class_names(classes: Any) -> None:
    """The class list a bundle can store: 2 to ``MAX_CLASSES`` unique storable names."""
    if not (isinstance(classes, list) and 2 <= len(classes) <= MAX_CLASSES):
        raise ValueError(f"classes must be a list of 2 to {MAX_CLASSES} names")
    for name in classes:
        check_class_name(name)
    if len(set(classes)) != len(classes):
        raise ValueError("class names must be unique")
