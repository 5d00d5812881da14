"""From a recipe (a built-in name or a recipe file) and the user's overrides to one
``TrainConfig``, remembering which fields the user set (small-data adaptation leaves
those alone)."""

from __future__ import annotations

from pathlib import Path

from ..data.augment import AugmentConfig
from ..errors import UserInputError
from .config import TrainConfig, check_keys, field_names
from .recipe_files import read_recipe_file
from .recipes import RECIPES


def recipe_values(recipe: str) -> dict:
    """A built-in recipe's fields, or a recipe file's base with its changes applied."""
    if recipe in RECIPES:
        return {"recipe": recipe, **RECIPES[recipe]}
    if recipe.endswith(".json") or Path(recipe).is_file():
        doc = read_recipe_file(recipe)
        values = {"recipe": doc["name"], **RECIPES[doc["base"]], **doc["config"]}
        if isinstance(values["augment"], dict):
            values["augment"] = AugmentConfig(**values["augment"])
        return values
    raise UserInputError(
        f"unknown recipe {recipe!r}; choose one of {', '.join(RECIPES)} or a recipe .json file"
    )


def resolve(recipe: str = "fast", **overrides) -> TrainConfig:
    """The recipe's config with ``overrides`` (None values mean 'keep the recipe's').

    ``recipe`` is a built-in name or a recipe file; ``augment`` may be an
    ``AugmentConfig`` or a dict of its fields.
    """
    values = recipe_values(recipe)
    check_keys(overrides, field_names())
    aug = overrides.pop("augment", None)
    chosen = {k: v for k, v in overrides.items() if v is not None}
    values.update(chosen)
    if isinstance(aug, dict):
        check_keys(aug, list(AugmentConfig.__dataclass_fields__), "augment setting")
        aug = AugmentConfig(**aug)
    if aug is not None:
        values["augment"] = chosen["augment"] = aug
    if chosen.get("init"):
        if chosen.get("pretrained"):
            raise UserInputError("choose one of --pretrained and --init, not both")
        values["pretrained"] = None  # a bundle is the starting point, not the recipe's
    values["user_set"] = sorted(set(chosen) - {"data", "out"})
    return TrainConfig(**values)
