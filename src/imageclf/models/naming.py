"""A model's name (``train --name``), and names from a bundle turned into folder names.

The name travels in the bundle's metadata (``BundleMetadata.name``) and is shown by
``info``, ``evaluate`` and ``predict``; without ``--name`` it says which data and which
recipe made the model (``cifar10-fast``, ``ants-bees-finetune``). Names given on the
command line are refused when they could not be one folder name, so a name can also
name files; names read from a bundle (untrusted) go through ``safe_component`` first.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import UserInputError

MAX_NAME = 64  # characters in a model name given with --name
_ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
_NOT_SLUG = re.compile(r"[\W_]+")  # anything but letters and digits (any script)
_UNSAFE = re.compile(r"[\x00-\x1f\x7f/\\:*?\"<>|]")  # separators, controls, Windows' refusals


def slug(text: str, limit: int = 40) -> str:
    """Lower-case letters and digits (any script) joined by single hyphens ("Ants_Bees v2" ->
    "ants-bees-v2"); empty when nothing is left."""
    return _NOT_SLUG.sub("-", text.lower()).strip("-")[:limit].strip("-")


def data_label(data: str | os.PathLike | None) -> str:
    """What a model's data is called in its default name: the folder or archive name
    without its archive suffix; the official CIFAR-10 (default, or its archive or
    folder) is ``cifar10``."""
    if data is None:
        return "cifar10"
    name = Path(data).expanduser().name or Path(data).expanduser().resolve().name
    for suffix in _ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            name = name[: -len(suffix)]
            break
    label = slug(name)
    if label in ("cifar-10-python", "cifar-10-batches-py"):
        return "cifar10"
    return label or "data"


def default_model_name(data: str | os.PathLike | None, recipe: str) -> str:
    """``<data>-<recipe>``, e.g. ``cifar10-fast``: sensible and safe as a file name."""
    return f"{data_label(data)}-{slug(recipe) or 'recipe'}"


def check_model_name(name: str) -> str:
    """A ``--name``: 1 to ``MAX_NAME`` printable characters that make one folder or file
    name (no path separator, no leading dot or space); ``UserInputError`` saying why."""
    stripped = name.strip()
    if not (0 < len(stripped) <= MAX_NAME and stripped.isprintable()):
        raise UserInputError(f"--name must be 1 to {MAX_NAME} printable characters")
    if _UNSAFE.search(stripped) or stripped.startswith("."):
        raise UserInputError(
            f'--name {stripped!r} cannot be a file name: no / \\ : * ? " < > |, and no leading dot'
        )
    return stripped


def safe_component(text: str, limit: int = 100) -> str:
    """One path component from an untrusted name (a class name or model name read from
    a bundle): separators and control characters become ``_``, a leading dot too (no
    hidden folders, no ``..``), at most ``limit`` characters; never empty."""
    cleaned = _UNSAFE.sub("_", text).strip()[:limit].strip()
    if cleaned.startswith("."):
        cleaned = "_" + cleaned[1:]
    return cleaned or "_"
