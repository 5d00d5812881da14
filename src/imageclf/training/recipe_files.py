"""Recipe files: a built-in recipe plus changes, as JSON (``imageclf tune`` writes the
best one it found; ``--recipe FILE.json`` reads it)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ..data.augment import AugmentConfig
from ..errors import UserInputError
from ..fileio import read_json_file, write_text_atomic
from .config import check_keys, field_names
from .recipes import RECIPES

RECIPE_FILE_FORMAT = "imageclf-recipe/1"
MAX_RECIPE_BYTES = 1024 * 1024  # a recipe file is a few hundred bytes


def read_recipe_file(path: str | os.PathLike) -> dict:
    """``{"format", "name", "base": a built-in recipe, "config": changed fields, ...}``;
    other keys (``space``, ``tuned``) are for ``imageclf tune`` and for people."""
    path = Path(path)
    doc = read_json_file(path, "recipe file", MAX_RECIPE_BYTES)
    if not isinstance(doc, dict) or doc.get("format") != RECIPE_FILE_FORMAT:
        raise UserInputError(f'{path} is not a recipe file (no "format": {RECIPE_FILE_FORMAT!r})')
    if doc.get("base") not in RECIPES:
        raise UserInputError(f"{path}: base must be one of {', '.join(RECIPES)}")
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise UserInputError(f"{path}: config must be a JSON object")
    if not isinstance(config.get("augment", {}), dict):
        raise UserInputError(f"{path}: config.augment must be a JSON object of settings")
    try:
        check_keys(config, [f for f in field_names() if f != "recipe"])
        check_keys(
            config.get("augment", {}), list(AugmentConfig.__dataclass_fields__), "augment setting"
        )
    except UserInputError as exc:
        raise UserInputError(f"{path}: {exc}") from None
    return {**doc, "name": str(doc.get("name") or path.stem), "config": config}


def write_recipe_file(path: str | os.PathLike, name: str, base: str, config: dict, **extra) -> Path:
    """The inverse of ``read_recipe_file``; ``extra`` keys are stored alongside."""

    doc = {"format": RECIPE_FILE_FORMAT, "name": name, "base": base, "config": config, **extra}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return Path(path)
