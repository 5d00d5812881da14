"""Training recipes as data: architecture + optimiser + schedule + augmentation.

``seed-*`` reproduce the seed systems' Keras training (Adam with Keras' epsilon,
batch 64, EarlyStopping on val_loss with restore-best, ReduceLROnPlateau and
augmentation where the seed used them). ``fast`` is our few-epoch recipe.
Every field can be overridden from the command line. A recipe can also be a JSON
file (``imageclf tune`` writes the best one it found): a built-in base plus changes.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path

from .bundle import MAX_INPUT_SIZE, MIN_INPUT_SIZE
from .data.augment import FLIP_MODES, AugmentConfig
from .data.splits import SPLITS
from .device import PRECISIONS, check_device_name
from .errors import UserInputError

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
SCHEDULES = ("constant", "plateau", "warmup-linear")
LOSS_REDUCTIONS = ("mean", "sum")
# Field annotation -> the Python types a value may have (bool is not an int here), and
# how an error message names them.
_TYPES: dict[str, tuple[tuple[type, ...], str]] = {
    "str": ((str,), "a string"),
    "int": ((int,), "an integer"),
    "float": ((int, float), "a number"),
    "bool": ((bool,), "true or false"),
    "dict": ((dict,), "a JSON object"),
    "int | None": ((int, type(None)), "an integer or null"),
    "str | None": ((str, type(None)), "a string or null"),
    "AugmentConfig": ((AugmentConfig,), "augmentation settings"),
    "list[str]": ((list,), "a list of names"),
}


@dataclass
class TrainConfig:
    recipe: str = "fast"
    architecture: str = "fast"
    arch_kwargs: dict = field(default_factory=dict)
    # optimisation
    optimizer: str = "adam"  # adam, adamw, sgd (nesterov, decoupled-style decay) or muon
    # "muon": sgd, with the conv filters stepped by Muon (orthogonalised momentum). A Muon
    # step has the same size whatever the batch, so fewer, bigger batches need bigger steps
    # to travel as far per epoch: muon_lr is per 256-image batch and scales linearly.
    # airbench's 0.24 at batch 2000 is ~0.03 here; validation picked 0.04 (0.06 was worse).
    muon_lr: float = 0.04  # muon: step size (per 256 images) of a filter of norm sqrt(outputs)
    muon_momentum: float = 0.85
    lr: float = 1e-3
    momentum: float = 0.9
    weight_decay: float = 0.0  # sgd: decay per step for a 1024-image batch, scaled by batch
    adam_eps: float = 1e-7  # Keras' default (PyTorch uses 1e-8)
    bias_lr_scale: float = 1.0  # sgd: BatchNorm biases learn this much faster
    loss_reduction: str = "mean"  # "sum" makes lr per-example (batch-size independent)
    label_smoothing: float = 0.0
    batch_size: int = 64
    epochs: int = 40
    schedule: str = "constant"  # "constant" | "plateau" | "warmup-linear"
    warmup: float = 0.2  # warmup-linear: fraction of steps spent rising from 0.2x to 1x
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1e-5
    early_stopping: int | None = None  # patience in epochs on val_loss; None = off
    restore_best: bool = True
    lookahead: bool = False  # airbench-style lookahead EMA of the weights
    whiten_bias_epochs: int = 0  # fast net: train the whitening bias only this long
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Progressive resizing: the first low_res_fraction of the epochs see the training
    # pictures shrunk to low_res_scale of image_size, for a fraction of the FLOPs (0.75:
    # about half); the last epochs train at full size, the size the model is used at.
    low_res_scale: float = 1.0
    low_res_fraction: float = 0.0
    tta: bool = False  # also report test accuracy with flip/translate TTA
    # transfer learning (finetune.py)
    pretrained: str | None = None  # "efficientnet-lite0": ImageNet weights, new head
    init: str | None = None  # an imageclf bundle to start from (new head if classes differ)
    freeze_backbone: bool = False  # linear probe: fit the head on fixed embeddings only
    freeze_groups: int = 1  # fine-tuning: earliest layer groups kept frozen (0 = train all)
    freeze_bn: bool = True  # --pretrained: keep ImageNet's BatchNorm statistics (small batches)
    class_weights: str | None = None  # "auto": loss weights n / (classes * n_c)
    adapt: bool = True  # adapt batch size, epochs and augmentation to small datasets
    user_set: list[str] = field(default_factory=list)  # fields the user chose explicitly
    # data
    data: str | None = None
    split: str = "auto"
    val_size: int | None = None
    subset: int | None = None
    image_size: int = 32
    seed: int = 0
    # execution
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None
    eval_batch_size: int = 500
    out: str | None = None

    def __post_init__(self) -> None:
        """Checked when built, so a typo fails before any data loads."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            allowed, kind = _TYPES[str(f.type)]
            if not isinstance(value, allowed) or (isinstance(value, bool) and bool not in allowed):
                raise UserInputError(f"{f.name} must be {kind}, got {value!r}")
        _choose("optimizer", self.optimizer, OPTIMIZERS)
        _choose("schedule", self.schedule, SCHEDULES)
        _choose("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        _choose("split", self.split, SPLITS)
        _choose("precision", self.precision, PRECISIONS)
        _choose("augment.flip", self.augment.flip, FLIP_MODES)
        check_device_name(self.device)
        if self.class_weights is not None:
            _choose("class_weights", self.class_weights, ("auto",))
        if self.freeze_backbone and not (self.pretrained or self.init):
            raise UserInputError("--freeze-backbone needs --pretrained NAME or --init MODEL")
        if self.epochs < 1:
            raise UserInputError("--epochs must be at least 1")
        if self.batch_size < 1:
            raise UserInputError("--batch-size must be at least 1")
        if self.lr <= 0:
            raise UserInputError("--lr must be positive")
        if not MIN_INPUT_SIZE <= self.image_size <= MAX_INPUT_SIZE:  # what a bundle may hold
            raise UserInputError(
                f"image_size must be from {MIN_INPUT_SIZE} to {MAX_INPUT_SIZE} pixels"
            )
        if not 0 < self.low_res_scale <= 1:
            raise UserInputError("low_res_scale must be above 0 and at most 1")
        if not 0 <= self.low_res_fraction < 1:
            raise UserInputError("low_res_fraction must be from 0 to below 1")

    @property
    def low_res_epochs(self) -> int:
        """Epochs at the reduced size; at least the last epoch is always at full size."""
        if self.low_res_scale == 1:
            return 0
        return min(self.epochs - 1, round(self.low_res_fraction * self.epochs))

    def image_size_at(self, epoch: int) -> int:
        """The side of the training pictures in ``epoch`` (0-based)."""
        if epoch < self.low_res_epochs:
            return max(MIN_INPUT_SIZE, round(self.low_res_scale * self.image_size))
        return self.image_size

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainConfig:
        """From ``to_dict()`` output (a checkpoint); keys of older versions are ignored."""
        data = dict(data)
        data["augment"] = AugmentConfig(**data.get("augment", {}))
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in known})


def _choose(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise UserInputError(f"unknown {name} {value!r}; choose {', '.join(choices)}")


def check_keys(keys, known, what: str = "setting") -> None:
    """Unknown keys are an error that names the nearest valid one."""
    for key in keys:
        if key not in known:
            prefixes = sorted((k for k in known if key.startswith(k) or k.startswith(key)), key=len)
            close = difflib.get_close_matches(key, known, n=1) or prefixes[-1:]
            hint = f"; did you mean {close[0]!r}?" if close else f"; known: {', '.join(known)}"
            raise UserInputError(f"unknown {what} {key!r}{hint}")


def field_names() -> list[str]:
    return [f.name for f in dataclasses.fields(TrainConfig)]


_SEED_COMMON = dict(optimizer="adam", lr=1e-3, batch_size=64, early_stopping=5, restore_best=True)

RECIPES: dict[str, dict] = {
    # Seed A (assignment): 40 epochs, batch 64, Adam, EarlyStopping; no augmentation;
    # 70/15/15 split of all 60,000 images (seeds A and B both pooled and re-split).
    "seed-a": dict(architecture="seed-a", epochs=40, split="70-15-15", **_SEED_COMMON),
    # Seed B (README): Conv-BN-Pool x3, Dense128, Dropout 0.5; Adam, no augmentation.
    "seed-b": dict(architecture="seed-b", epochs=40, split="70-15-15", **_SEED_COMMON),
    # Seed D (Flask webapp): L2 on the dense layer, rotation/shift/flip augmentation,
    # ReduceLROnPlateau, 10 epochs.
    "seed-d": dict(
        architecture="seed-d",
        epochs=10,
        schedule="plateau",
        plateau_factor=0.5,
        plateau_patience=2,
        augment=AugmentConfig(flip="random", rotate=15.0, shift=0.1),
        **_SEED_COMMON,
    ),
    # fast: the airbench recipe's ideas (arXiv 2404.00498) sized for a 2-core CPU without
    # native bf16: widths 32/64/128 train at ~950 img/s there (64/256/256: ~150), and
    # batch 256 beat 512 in throughput. 11 epochs (0.058 PFLOP on 50k images, inside issue
    # #10's 0.06 budget) beat 9 on validation (+0.7 points with TTA) and on 3 seeds' test
    # (median 87.3% vs 86.6% with TTA); ~5 minutes on 2 AVX-512/bf16 cores, ~10.5 on AVX2.
    # Progressive resizing (the first 6 of 14 epochs at 24 px, the same FLOPs) gained 0.5
    # on validation but only ~0.2 on 3 test seeds, and ran 16% longer at 43% of the GEMM
    # peak instead of 53%: not the default (low_res_scale / low_res_fraction to try it).
    "fast": dict(
        architecture="fast",
        arch_kwargs={"widths": [32, 64, 128]},
        optimizer="sgd",
        # lr and decay for a summed loss: airbench's 11.5 and 0.0153 per 1024 images,
        # divided by 1024 * (1 + 1 / (1 - momentum)).
        lr=11.5 / (1024 * (1 + 1 / (1 - 0.85))),
        momentum=0.85,
        weight_decay=0.0153 * 1024 / (1024 * (1 + 1 / (1 - 0.85))),
        bias_lr_scale=64.0,
        loss_reduction="sum",
        label_smoothing=0.2,
        batch_size=256,
        epochs=11,
        schedule="warmup-linear",
        warmup=0.2,
        lookahead=True,
        whiten_bias_epochs=3,
        augment=AugmentConfig(flip="alternate", translate=2),
        tta=True,
        early_stopping=None,
        restore_best=False,
    ),
}
# finetune: `--pretrained efficientnet-lite0` on a user's folder of a few hundred photos.
# The new head is first fitted on frozen embeddings (finetune.py), then the last layer
# group trains with it at discriminative learning rates. Images are seen at 224 px, the
# weights' own resolution: on 245 real photos (ants/bees) the probe reached 95.4% val at
# 224 and 88.9% at 160, whose only merit is half the compute. The stem and early stages
# stay frozen (freeze_groups=2): they hold generic edges and textures, and their backward
# pass at high resolution is most of a CPU step's cost. Random resized crops + flips are the
# standard photo augmentation; BatchNorm statistics stay ImageNet's; the best epoch on
# val loss is kept, the head fit included, so fine-tuning never ends worse than the probe.
RECIPES["finetune"] = dict(
    architecture="efficientnet-lite0",
    pretrained="efficientnet-lite0",
    image_size=224,
    optimizer="adamw",
    lr=5e-4,
    weight_decay=0.01,
    label_smoothing=0.1,
    batch_size=32,
    epochs=3,
    schedule="warmup-linear",
    warmup=0.1,
    augment=AugmentConfig(flip="random", crop_scale=0.5),
    freeze_groups=2,
    early_stopping=None,
    restore_best=True,
    eval_batch_size=100,  # 224 px activations of 500 images would take gigabytes
)
# balanced: twice fast's compute (0.12 PFLOP on 50k images) spent on width, not epochs:
# on validation (45k/5k, one seed) widths 48/96/192 for 11 epochs beat fast's net for 22
# epochs at the same compute (87.4% vs 86.6%, with TTA 88.5% vs 87.9%). Muon for the conv
# filters then added 0.6 (0.7 with TTA) on validation at the same compute.
RECIPES["balanced"] = {
    **RECIPES["fast"],
    "arch_kwargs": {"widths": [48, 96, 192]},
    "optimizer": "muon",
}
# best: the same recipe at airbench94's width and batch, longer, for more time or a GPU.
RECIPES["best"] = {
    **RECIPES["fast"],
    "arch_kwargs": {"widths": [64, 256, 256]},
    "batch_size": 1024,
    "epochs": 12,
}


RECIPE_FILE_FORMAT = "imageclf-recipe/1"


def read_recipe_file(path: str | os.PathLike) -> dict:
    """``{"format", "name", "base": a built-in recipe, "config": changed fields, ...}``;
    other keys (``space``, ``tuned``) are for ``imageclf tune`` and for people."""
    path = Path(path)
    try:
        doc = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise UserInputError(f"cannot read recipe file {path}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != RECIPE_FILE_FORMAT:
        raise UserInputError(f'{path} is not a recipe file (no "format": {RECIPE_FILE_FORMAT!r})')
    if doc.get("base") not in RECIPES:
        raise UserInputError(f"{path}: base must be one of {', '.join(RECIPES)}")
    config = doc.get("config", {})
    if not isinstance(config, dict):
        raise UserInputError(f"{path}: config must be a JSON object")
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
    from .fileio import write_text_atomic

    doc = {"format": RECIPE_FILE_FORMAT, "name": name, "base": base, "config": config, **extra}
    write_text_atomic(path, json.dumps(doc, indent=2) + "\n")
    return Path(path)


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


# ---------------------------------------------------------------- small data
MIN_STEPS = 300  # from scratch: fewer optimiser steps than this rarely learns anything
MIN_STEPS_TRANSFER = 20  # fine-tuning starts from a fitted head and moves little
MIN_BATCHES_PER_EPOCH = 8
MAX_EPOCHS = 100


def adapt_to_data(cfg: TrainConfig, n_train: int) -> tuple[TrainConfig, list[str]]:
    """Defaults sized for CIFAR's 45,000 training images fail silently on a user's 200:
    batch 256 gives one step per epoch. Adjust what the user did not set explicitly and
    say why (the notes are logged at the start of the run)."""
    if not cfg.adapt:
        return cfg, []
    notes = []
    changes: dict = {}
    batch = cfg.batch_size
    if "batch_size" not in cfg.user_set and n_train < MIN_BATCHES_PER_EPOCH * batch:
        smaller = max(16, 2 ** int(math.log2(max(1, n_train // MIN_BATCHES_PER_EPOCH))))
        if smaller < batch:
            changes["batch_size"] = batch = smaller
            notes.append(
                f"batch size {cfg.batch_size} -> {batch}: {n_train} training images would "
                f"make {math.ceil(n_train / cfg.batch_size)} step(s) per epoch"
            )
    min_steps = MIN_STEPS_TRANSFER if (cfg.pretrained or cfg.init) else MIN_STEPS
    steps = math.ceil(n_train / batch) * cfg.epochs
    if "epochs" not in cfg.user_set and steps < min_steps and not cfg.freeze_backbone:
        epochs = min(MAX_EPOCHS, math.ceil(min_steps / math.ceil(n_train / batch)))
        if epochs > cfg.epochs:
            changes["epochs"] = epochs
            notes.append(
                f"epochs {cfg.epochs} -> {epochs}: at least {min_steps} optimiser steps "
                f"(was {steps})"
            )
    aug = cfg.augment
    if "augment" not in cfg.user_set and aug.translate and cfg.image_size != 32:
        # The recipe's translation is in pixels of a 32x32 image: keep its share.
        pixels = max(1, round(aug.translate * cfg.image_size / 32))
        if pixels != aug.translate:
            changes["augment"] = dataclasses.replace(aug, translate=pixels)
            notes.append(
                f"translate augmentation {aug.translate} -> {pixels} px for "
                f"{cfg.image_size}x{cfg.image_size} images"
            )
    if not changes:
        return cfg, []
    return dataclasses.replace(cfg, **changes), notes
