"""Search spaces for ``imageclf tune``, declared as data and checked before any trial.

A space maps a parameter name to one of:

- ``{"low": a, "high": b}`` with optional ``"log": true`` or ``"step": s``: a range
  (integer parameters take integer bounds);
- ``{"choices": [...]}``: a categorical choice;
- a plain value (a list of ints for ``widths``): fixed, not searched.

Every built-in recipe declares its own space (``SPACES``); a recipe file may carry a
``"space"`` key, and ``imageclf tune --space FILE`` overrides both. This module does not
import Optuna: spaces are validated (and errors reported) without the extra installed.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ..data.augment import FLIP_MODES
from ..errors import UserInputError
from ..fileio import read_json_file
from ..training.config import TrainConfig
from ..training.domains import MAX_BATCH, MAX_EPOCHS, MAX_LR, check_architecture


@dataclass(frozen=True)
class Param:
    """What one tunable name means: its type, allowed values and where it lands."""

    kind: type  # float, int, str, or list (widths)
    ok: Callable[[Any], bool]
    domain: str  # the allowed values, in words, for error messages
    target: str  # "config" (a TrainConfig field), "augment" or "arch"


# The bounds are TrainConfig's (``training.domains``), so every drawn value trains.
MAX_WIDTH, MAX_GROUPS = 4096, 8  # fast's groups halve the picture: 512 px has 9 halvings
MAX_CHOICES = 64
MAX_PROBLEMS = 10  # an error line names this many, then how many more
MAX_STEPS = 1_000_000  # values a stepped range may hold (an lr step of 1e-300: 1e297)
PARAMS: dict[str, Param] = {
    "lr": Param(float, lambda v: 0 < v <= MAX_LR, f"> 0 and <= {MAX_LR:g}", "config"),
    "weight_decay": Param(float, lambda v: 0 <= v <= MAX_LR, f"in [0, {MAX_LR:g}]", "config"),
    "label_smoothing": Param(float, lambda v: 0 <= v < 1, "in [0, 1)", "config"),
    "momentum": Param(float, lambda v: 0 <= v < 1, "in [0, 1)", "config"),
    "epochs": Param(int, lambda v: 1 <= v <= MAX_EPOCHS, f"1..{MAX_EPOCHS}", "config"),
    "batch_size": Param(int, lambda v: 1 <= v <= MAX_BATCH, f"1..{MAX_BATCH}", "config"),
    "widths": Param(
        list,
        lambda v: 0 < len(v) <= MAX_GROUPS and all(1 <= w <= MAX_WIDTH for w in v),
        f"a list of 1 to {MAX_GROUPS} ints from 1 to {MAX_WIDTH}",
        "arch",
    ),
    # augmentation strength, per kind of augmentation
    "translate": Param(int, lambda v: 0 <= v <= 16, "0..16 pixels", "augment"),
    "cutout": Param(int, lambda v: 0 <= v <= 32, "0..32 pixels", "augment"),
    "rotate": Param(float, lambda v: 0 <= v <= 180, "0..180 degrees", "augment"),
    "shift": Param(float, lambda v: 0 <= v < 1, "in [0, 1)", "augment"),
    "flip": Param(str, lambda v: v in FLIP_MODES, "one of " + ", ".join(FLIP_MODES), "augment"),
    # random resized crops keep [crop_scale, 1] of the area: smaller is stronger; 0 = off
    "crop_scale": Param(float, lambda v: 0 <= v < 1, "in [0, 1)", "augment"),
}
SPEC_KEYS = {"low", "high", "log", "step", "choices"}
MAX_SPACE_BYTES = 1024 * 1024  # a space file is a few hundred bytes

# ---------------------------------------------------------------- built-in spaces
# Ranges bracket each recipe's own value (fast: lr 1.5e-3, decay 2e-3, smoothing 0.2,
# batch 256, widths 32/64/128, translate 2) by roughly 3x either way; epochs are capped
# by --epochs (or the recipe's epochs) at tuning time.
_FAST_SPACE = {
    "lr": {"low": 5e-4, "high": 5e-3, "log": True},
    "weight_decay": {"low": 5e-4, "high": 8e-3, "log": True},
    "label_smoothing": {"low": 0.0, "high": 0.3},
    "epochs": {"low": 4, "high": 12},
    "batch_size": {"choices": [128, 256, 512]},
    "widths": {"choices": [[24, 48, 96], [32, 64, 128], [48, 96, 192]]},
    "translate": {"low": 0, "high": 3},
}
# The seeds train with Adam at batch 64: lr around Keras' 1e-3, Adam's L2 decay.
_SEED_SPACE = {
    "lr": {"low": 1e-4, "high": 3e-3, "log": True},
    "weight_decay": {"low": 0.0, "high": 1e-3},
    "label_smoothing": {"low": 0.0, "high": 0.2},
    "epochs": {"low": 5, "high": 40},
    "batch_size": {"choices": [32, 64, 128]},
}
SPACES: dict[str, dict] = {
    "fast": _FAST_SPACE,
    "balanced": {
        **_FAST_SPACE,
        "widths": {"choices": [[32, 64, 128], [48, 96, 192], [64, 128, 256]]},
    },
    "best": {
        **_FAST_SPACE,
        "batch_size": {"choices": [512, 1024]},
        "widths": {"choices": [[64, 128, 256], [64, 256, 256]]},
    },
    "seed-a": {**_SEED_SPACE, "translate": {"low": 0, "high": 3}},
    "seed-b": {**_SEED_SPACE, "translate": {"low": 0, "high": 3}},
    # Fine-tuning a pretrained net: a lower lr band, AdamW's decoupled decay, few epochs.
    "finetune": {
        "lr": {"low": 1e-4, "high": 2e-3, "log": True},
        "weight_decay": {"low": 1e-3, "high": 0.05, "log": True},
        "label_smoothing": {"low": 0.0, "high": 0.2},
        "epochs": {"low": 2, "high": 6},
        "batch_size": {"choices": [16, 32, 64]},
        "crop_scale": {"low": 0.3, "high": 0.9},
    },
    "seed-d": {
        **_SEED_SPACE,
        "rotate": {"low": 0.0, "high": 20.0},
        "shift": {"low": 0.0, "high": 0.15},
    },
}


# ---------------------------------------------------------------- validated space
@dataclass(frozen=True)
class Dim:
    name: str
    kind: str  # "float" | "int" | "categorical" | "fixed"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple = ()
    value: Any = None


def _widths_key(widths: list[int]) -> str:
    """Optuna's categorical values must be scalars: widths travel as '32-64-128'."""
    return "-".join(str(w) for w in widths)


def _widths_value(key: str) -> list[int]:
    return [int(w) for w in key.split("-")]


@dataclass(frozen=True)
class Space:
    dims: tuple[Dim, ...]
    source: dict  # the declaration as given (recorded with the study)

    @property
    def searched(self) -> list[str]:
        return [d.name for d in self.dims if d.kind != "fixed"]

    def suggest(self, trial) -> dict:
        """Draw one configuration from an Optuna trial (fixed values are not drawn)."""
        params = {}
        for d in self.dims:
            if d.kind == "float":
                params[d.name] = trial.suggest_float(d.name, d.low, d.high, log=d.log, step=d.step)
            elif d.kind == "int":
                params[d.name] = trial.suggest_int(
                    d.name, d.low, d.high, step=d.step or 1, log=d.log
                )
            elif d.kind == "categorical":
                params[d.name] = trial.suggest_categorical(d.name, list(d.choices))
        return params

    def current(self, cfg: TrainConfig) -> dict:
        """``cfg``'s own values of the searched parameters that lie inside the space:
        queued as the first trial, so a study always measures the recipe it starts from."""
        values = {}
        for d in self.dims:
            if d.kind == "fixed":
                continue
            target = PARAMS[d.name].target
            if d.name == "widths":
                widths = cfg.arch_kwargs.get("widths")
                value = _widths_key(widths) if widths else None
            elif target == "augment":
                value = getattr(cfg.augment, d.name)
            else:
                value = getattr(cfg, d.name)
            inside = value in d.choices if d.kind == "categorical" else d.low <= value <= d.high
            if value is not None and inside:
                values[d.name] = value
        return values

    def apply(self, cfg: TrainConfig, params: dict) -> TrainConfig:
        """``cfg`` with the fixed values and the drawn ``params`` in place, marked as
        chosen (``user_set``) so training's small-data adaptation leaves them alone."""
        values = {d.name: d.value for d in self.dims if d.kind == "fixed"} | params
        fields, augment, arch = {}, {}, dict(cfg.arch_kwargs)
        targets = {"augment": "augment", "arch": "arch_kwargs"}
        chosen = {targets.get(PARAMS[name].target, name) for name in values}
        for name, value in values.items():
            target = PARAMS[name].target
            if name == "widths":
                arch["widths"] = _widths_value(value) if isinstance(value, str) else list(value)
            elif target == "augment":
                augment[name] = value
            else:
                fields[name] = value
        return dataclasses.replace(
            cfg,
            **fields,
            arch_kwargs=arch,
            augment=dataclasses.replace(cfg.augment, **augment),
            user_set=sorted(set(cfg.user_set) | chosen),
        )


def _is_number(value: Any, kind: type) -> bool:
    if isinstance(value, bool):
        return False
    if kind is int:
        return isinstance(value, int)
    return isinstance(value, int | float) and math.isfinite(value)


def _check_value(name: str, value: Any, problems: list[str], what: str) -> bool:
    param = PARAMS[name]
    if param.kind is list:
        ok_type = isinstance(value, list) and all(_is_number(w, int) for w in value)
        expected = "a list of ints"
    elif param.kind is str:
        ok_type, expected = isinstance(value, str), "a string"
    else:
        ok_type = _is_number(value, param.kind)
        expected = "an integer" if param.kind is int else "a number"
    shown = json.dumps(value)
    shown = shown if len(shown) <= 60 else shown[:57] + "..."
    if not ok_type:
        problems.append(f"{name}: {what} {shown} has the wrong type (expected {expected})")
        return False
    if not param.ok(value):
        problems.append(f"{name}: {what} {shown} must be {param.domain}")
        return False
    return True


def _check_widths(dim: Dim, cfg: TrainConfig, problems: list[str]) -> None:
    """Each widths value built as the trial would build it (``training.domains``): a net
    that cannot take the recipe's pictures, or is too big, fails here, not in a trial."""
    values = [dim.value] if dim.kind == "fixed" else [_widths_value(c) for c in dim.choices]
    for widths in values:
        try:
            check_architecture(
                cfg.architecture, {**cfg.arch_kwargs, "widths": list(widths)}, cfg.image_size
            )
        except UserInputError as exc:
            problems.append(f"widths: {exc}")
            return


def _dim(name: str, spec: Any, epochs_cap: int, problems: list[str]) -> Dim | None:
    param = PARAMS[name]
    cap = (lambda v: min(v, epochs_cap)) if name == "epochs" else (lambda v: v)
    if not isinstance(spec, dict):  # a fixed value
        if _check_value(name, spec, problems, "value"):
            return Dim(name, "fixed", value=cap(spec))
        return None
    unknown = sorted(set(spec) - SPEC_KEYS)
    if unknown:
        problems.append(
            f"{name}: unknown key {', '.join(unknown)} (use low/high with log or step, or choices)"
        )
        return None
    if "choices" in spec:
        if set(spec) != {"choices"}:
            problems.append(f"{name}: give either choices or low/high, not both")
            return None
        choices = spec["choices"]
        if not isinstance(choices, list):
            problems.append(f"{name}: choices must be a list")
            return None
        if not choices:
            problems.append(f"{name}: empty choices")
            return None
        if len(choices) > MAX_CHOICES:
            problems.append(f"{name}: {len(choices)} choices; at most {MAX_CHOICES}")
            return None
        if not all([_check_value(name, c, problems, "choice") for c in choices]):
            return None
        keys = [_widths_key(c) if name == "widths" else cap(c) for c in choices]
        return Dim(name, "categorical", choices=tuple(dict.fromkeys(keys)))
    if param.kind not in (int, float):
        problems.append(f"{name}: takes choices, not a range")
        return None
    if "low" not in spec or "high" not in spec:
        problems.append(f"{name}: a range needs both low and high")
        return None
    low, high = spec["low"], spec["high"]
    if not _check_value(name, low, problems, "low") or not _check_value(
        name, high, problems, "high"
    ):
        return None
    if low > high:
        problems.append(f"{name}: empty range (low {low} > high {high})")
        return None
    log, step = spec.get("log", False), spec.get("step")
    if not isinstance(log, bool):
        problems.append(f"{name}: log must be true or false")
        return None
    if log and low <= 0:
        problems.append(f"{name}: a log range needs low > 0 (got {low})")
        return None
    if step is not None:
        if log:
            problems.append(f"{name}: log and step cannot be combined")
            return None
        if not _is_number(step, param.kind) or step <= 0:
            problems.append(f"{name}: step must be a positive {param.kind.__name__}")
            return None
        if (high - low) / step > MAX_STEPS:
            problems.append(
                f"{name}: step {step:g} makes more than {MAX_STEPS:,} values from {low:g} to "
                f"{high:g}; take a coarser step (or log)"
            )
            return None
    return Dim(name, param.kind.__name__, low=cap(low), high=cap(high), log=log, step=step)


def validate(space: Any, cfg: TrainConfig, epochs_cap: int, source: str = "space") -> Space:
    """Check every entry of ``space`` against ``cfg``'s recipe; all problems in one error.

    ``epochs_cap`` is ``--epochs``: epoch ranges and choices above it are lowered to it.
    """
    if not isinstance(space, dict) or not space:
        raise UserInputError(f"bad search space in {source}: expected a non-empty JSON object")
    problems: list[str] = []
    dims = []
    for name, spec in space.items():
        if name not in PARAMS:
            problems.append(f"unknown parameter {name!r} (known: {', '.join(PARAMS)})")
            continue
        if name == "widths" and cfg.architecture != "fast":
            problems.append(f"widths: the {cfg.architecture} architecture has no widths")
            continue
        dim = _dim(name, spec, epochs_cap, problems)
        if dim is not None and name == "widths":
            _check_widths(dim, cfg, problems)
        if dim is not None:
            dims.append(dim)
    if problems:
        shown = problems[:MAX_PROBLEMS] + [f"and {len(problems) - MAX_PROBLEMS} more"] * (
            len(problems) > MAX_PROBLEMS
        )
        raise UserInputError(f"bad search space in {source}: " + "; ".join(shown))
    return Space(tuple(dims), space)


def read_space_file(path: str | os.PathLike) -> dict:
    return read_json_file(path, "search space", MAX_SPACE_BYTES)
