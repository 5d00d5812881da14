"""TrainConfig: every setting of a training run, as one dataclass checked when built.

Types, choices and ranges (``domains``: every number's range, the architecture built
from its kwargs on the meta device) are checked in ``__post_init__``, so a typo or a bad
value fails before any data loads; unknown keys name the nearest valid field
(``check_keys``).
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass, field

from ..data.augment import FLIP_MODES, AugmentConfig
from ..data.splits import SPLITS
from ..data.table_rules import TableOptions
from ..device import PRECISIONS, check_device_name
from ..errors import UserInputError
from ..models.bundle import MIN_INPUT_SIZE
from ..models.class_names import MAX_TEXT
from ..models.efficientnet import VARIANTS
from ..models.naming import check_model_name
from .domains import check_architecture, check_augment_fits, check_domains, short_repr

OPTIMIZERS = ("adam", "adamw", "sgd", "muon")
SCHEDULES = ("constant", "plateau", "warmup-linear", "cosine", "onecycle")
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
    name: str | None = None  # the model's name (--name); None: <data>-<recipe> (models.naming)
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
    schedule: str = "constant"  # "constant" | "plateau" | "warmup-linear" | "cosine" | "onecycle"
    warmup: float = 0.2  # warmup-linear, cosine, onecycle: the share of steps spent rising
    plateau_factor: float = 0.5
    plateau_patience: int = 2
    min_lr: float = 1e-5
    early_stopping: int | None = None  # patience in epochs on val_loss; None = off
    restore_best: bool = True
    lookahead: bool = False  # airbench-style lookahead EMA of the weights
    whiten_bias_epochs: int = 0  # fast net: train the whitening bias only this long
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    # Stronger regularisers, all off by default (docs/benchmarks.md, "What helped"):
    trivial_augment: bool = False  # one random op at a random strength per picture
    mixup: float = 0.0  # MixUp's Beta(alpha, alpha); 0 = off (labels become soft targets)
    cutmix: float = 0.0  # CutMix's Beta(alpha, alpha); 0 = off; with mixup: one each, 50/50
    erasing: float = 0.0  # random erasing: the share of pictures given a box of noise
    ema: float = 0.0  # decay of an average of the weights used for validation and the bundle
    # Progressive resizing: the first low_res_fraction of the epochs see the training
    # pictures shrunk to low_res_scale of image_size, for a fraction of the FLOPs (0.75:
    # about half); the last epochs train at full size, the size the model is used at.
    low_res_scale: float = 1.0
    low_res_fraction: float = 0.0
    tta: bool = False  # also report test accuracy with flip/translate TTA
    # transfer learning: where a run starts (start.py) and how it fine-tunes (finetune.py)
    pretrained: str | None = None  # "efficientnet-lite0"/1/2: ImageNet weights, new head
    init: str | None = None  # an imageclf bundle to start from (new head if classes differ)
    freeze_backbone: bool = False  # linear probe: fit the head on fixed embeddings only
    freeze_groups: int = 1  # fine-tuning: earliest layer groups kept frozen (0 = train all)
    freeze_bn: bool = True  # --pretrained: keep ImageNet's BatchNorm statistics (small batches)
    # fine-tuning: the first layer group's lr as a fraction of lr, rising geometrically to
    # the head's (fastai's slice(lr/100, lr)); 1 = one lr for all (a large domain shift)
    early_lr_ratio: float = 0.01
    class_weights: str | None = None  # "auto": loss weights n / (classes * n_c)
    adapt: bool = True  # adapt batch size, epochs and augmentation to small datasets
    user_set: list[str] = field(default_factory=list)  # fields the user chose explicitly
    # data
    data: str | None = None
    split: str = "auto"
    val_size: int | None = None
    subset: int | None = None
    dedupe: bool = False  # drop training pictures with a twin in val/test (data.duplicates)
    # a labels table's options (data.table_rules.TableOptions: columns, delimiter, ...)
    table: dict = field(default_factory=dict)
    image_size: int = 32
    # The side the pictures were made at when smaller than image_size (CIFAR: 32): the
    # bundle records it, and served pictures are reduced to it before being enlarged.
    source_size: int | None = None
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
                raise UserInputError(f"{f.name} must be {kind}, got {short_repr(value)}")
        _choose("optimizer", self.optimizer, OPTIMIZERS)
        _choose("schedule", self.schedule, SCHEDULES)
        _choose("loss_reduction", self.loss_reduction, LOSS_REDUCTIONS)
        _choose("split", self.split, SPLITS)
        TableOptions.from_dict(self.table)  # a bad table option fails before data loads
        _choose("precision", self.precision, PRECISIONS)
        _choose("augment.flip", self.augment.flip, FLIP_MODES)
        check_device_name(self.device)
        if self.class_weights is not None:
            _choose("class_weights", self.class_weights, ("auto",))
        if self.freeze_backbone and not (self.pretrained or self.init):
            raise UserInputError("--freeze-backbone needs --pretrained NAME or --init MODEL")
        if not (0 < len(self.recipe) <= MAX_TEXT and self.recipe.isprintable()):
            raise UserInputError(f"recipe must be a printable name of 1 to {MAX_TEXT} characters")
        if self.name is not None:
            self.name = check_model_name(self.name)
        check_domains(vars(self))
        if self.user_set and not all(isinstance(name, str) for name in self.user_set):
            raise UserInputError("user_set must be a list of field names")
        smallest = self.image_size_at(0)
        check_augment_fits(self.augment.translate, self.augment.cutout, smallest)
        check_architecture(self.architecture, self.arch_kwargs, self.image_size)

    @property
    def depthwise(self) -> bool:
        """An EfficientNet: depthwise convolutions, which ``--precision auto`` trains in fp32
        on a CPU (``device.resolve_precision``)."""
        return self.architecture in VARIANTS

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
