"""The values each ``TrainConfig`` field may take, checked when the config is built.

A recipe file, ``--set`` or ``--seed`` is untrusted input: a seed of -1, a threads
count of -3, an eval batch of 0 or widths of 30000 used to pass the type checks and end
in a traceback after the data had loaded (or in gigabytes allocated). Every number gets
its range here (``DOMAINS``), and the architecture with its ``arch_kwargs`` is built on
PyTorch's ``meta`` device (shapes only, no memory) and run on a meta batch at the image
size, so junk or absurd kwargs are one line naming the field before anything loads.
``tuning.space`` reads the same bounds, so every space it accepts makes valid configs.
"""

from __future__ import annotations

import functools
import json
import math
import warnings
from dataclasses import dataclass
from typing import Any

from ..errors import UserInputError
from ..models.bundle import MAX_INPUT_SIZE, MIN_INPUT_SIZE

MAX_EPOCHS = 10_000
MAX_BATCH = 65_536  # also the exported ONNX graph's largest batch
MAX_IMAGES = 2**31 - 1  # val_size / subset: image counts an int32 index can hold
MAX_SEED = 2**32 - 1  # NumPy's seeds are unsigned; a bundle records the split's seed
MAX_THREADS = 4096
MAX_LR = 10_000.0  # a search may span 1e-7..1e4 (a diverging trial is part of a study)
# 2.5x the largest built-in model at the largest input size (seed-d at 512 px: 130
# million numbers); fast with widths 30000 would be 8.1 billion (32 GB before training).
MAX_PARAMETERS = 300_000_000
MAX_KWARGS_CHARS = 4096  # the built-in recipes' arch_kwargs are under 30 characters


@dataclass(frozen=True)
class Domain:
    """A closed or half-open range of finite numbers, said in words for errors."""

    low: float
    high: float
    low_open: bool = False  # low itself excluded
    high_open: bool = False  # high itself excluded

    def holds(self, value: Any) -> bool:
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not math.isfinite(value):
            return False
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return above and below

    def words(self) -> str:
        low, high = _show(self.low), _show(self.high)
        if self.low_open:
            return f"above {low} and {'below' if self.high_open else 'at most'} {high}"
        return f"from {low} to {'below ' if self.high_open else ''}{high}"


def _show(number: float) -> str:
    return f"{number:g}" if isinstance(number, float) else str(number)


_UNIT = Domain(0, 1, high_open=True)  # momenta, smoothing: 1 would never forget / learn
DOMAINS: dict[str, Domain] = {
    "muon_lr": Domain(0, MAX_LR, low_open=True),
    "muon_momentum": _UNIT,
    "lr": Domain(0, MAX_LR, low_open=True),
    "momentum": _UNIT,
    "weight_decay": Domain(0, MAX_LR),
    "adam_eps": Domain(0, 1, low_open=True),
    "bias_lr_scale": Domain(0, 10_000, low_open=True),
    "label_smoothing": _UNIT,  # 1 is uniform targets: nothing to learn (a bundle refuses it)
    "batch_size": Domain(1, MAX_BATCH),
    "epochs": Domain(1, MAX_EPOCHS),
    "warmup": Domain(0, 1),
    "plateau_factor": Domain(0, 1, low_open=True),
    "plateau_patience": Domain(0, MAX_EPOCHS),
    "min_lr": Domain(0, MAX_LR),
    "early_stopping": Domain(0, MAX_EPOCHS),
    "whiten_bias_epochs": Domain(0, MAX_EPOCHS),
    "low_res_scale": Domain(0, 1, low_open=True),
    "low_res_fraction": _UNIT,
    "freeze_groups": Domain(0, 100),
    "early_lr_ratio": Domain(0, 1, low_open=True),
    "source_size": Domain(MIN_INPUT_SIZE, MAX_INPUT_SIZE),
    "val_size": Domain(0, MAX_IMAGES),
    "subset": Domain(1, MAX_IMAGES),
    "image_size": Domain(MIN_INPUT_SIZE, MAX_INPUT_SIZE),  # what a bundle may hold
    "seed": Domain(0, MAX_SEED),
    "threads": Domain(1, MAX_THREADS),
    "eval_batch_size": Domain(1, MAX_BATCH),
    "mixup": Domain(0, 100),  # Beta(alpha, alpha): 0 off, 0.2-1 usual, large ~ always 0.5
    "cutmix": Domain(0, 100),
    "erasing": Domain(0, 1),
    "ema": _UNIT,  # 0 off; 1 would never move from the first weights
}


def check_domains(values: dict[str, Any]) -> None:
    """Every number in ``values`` (a config's fields) inside its domain; None passes
    (the optional fields), the types were checked before."""
    for name, domain in DOMAINS.items():
        value = values.get(name)
        if value is not None and not domain.holds(value):
            raise UserInputError(f"{name} must be {domain.words()}, got {short_repr(value)}")


def check_augment_fits(translate: int, cutout: int, smallest: int) -> None:
    """Pixel augmentations against the smallest picture the run trains on."""
    if translate >= smallest:
        raise UserInputError(
            f"augment.translate must be below the image size ({smallest} px), got {translate}"
        )
    if cutout > smallest:
        raise UserInputError(
            f"augment.cutout must be at most the image size ({smallest} px), got {cutout}"
        )


def check_architecture(architecture: str, arch_kwargs: dict, image_size: int) -> None:
    """The architecture built from ``arch_kwargs`` for ``image_size`` and run on a meta
    batch of that size (no memory); at most ``MAX_PARAMETERS`` numbers. (Whether it
    takes progressive resizing's smaller pictures is ``parts``' check, with the model.)"""
    key = json.dumps(arch_kwargs, sort_keys=True, default=repr)
    if len(key) > MAX_KWARGS_CHARS:
        raise UserInputError(
            f"arch_kwargs are {len(key):,} characters of JSON; at most {MAX_KWARGS_CHARS:,}"
        )
    _check_architecture(architecture, key, image_size)


@functools.lru_cache(maxsize=256)
def _check_architecture(architecture: str, kwargs_json: str, image_size: int) -> None:
    import torch

    from ..models.registry import build, names

    if architecture not in names():
        raise UserInputError(f"unknown architecture {architecture!r}; known: {', '.join(names())}")
    arch_kwargs = json.loads(kwargs_json)
    shown = kwargs_json if len(kwargs_json) <= 100 else kwargs_json[:97] + "..."
    _finite_numbers(arch_kwargs, shown)
    size = image_size
    try:
        with torch.device("meta"), torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # zero-element tensors warn before they fail
            model = build(architecture, num_classes=10, input_size=size, **arch_kwargs)
            model(torch.empty(2, 3, size, size))
    except UserInputError:
        raise
    except Exception as exc:  # the constructor's or the forward pass's own complaint
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
        raise UserInputError(
            f"arch_kwargs {shown} do not make a working {architecture} for "
            f"{size}x{size} pictures ({type(exc).__name__}: {first})"
        ) from None
    numbers = sum(p.numel() for p in model.parameters())
    if numbers > MAX_PARAMETERS:
        raise UserInputError(
            f"arch_kwargs {shown} make a {architecture} of {numbers:,} numbers; "
            f"at most {MAX_PARAMETERS:,}"
        )


def _finite_numbers(value: Any, shown: str) -> None:
    """No NaN, infinity or integer beyond a float's range anywhere in ``arch_kwargs``."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
        elif (
            isinstance(item, float | int)
            and not isinstance(item, bool)
            and (abs(item) > 1e12 or not math.isfinite(item))
        ):
            raise UserInputError(f"arch_kwargs {shown} hold {short_repr(item)}, not a sane number")


def short_repr(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."
