"""How a run starts: from scratch, from pretrained weights, or from a bundle.

``start_for(cfg)`` chooses once; the driver then asks the ``Start`` everything that
differs between the three: the config the starting point implies, the model and the
normalisation its inputs get, the optimiser, whether the head is fitted first, the
fewest optimiser steps small data adapts to, and the bundle's ``start`` record.

- ``Scratch``: the recipe's architecture, freshly initialised; inputs standardised by
  the training images' own statistics; PCA whitening (where the model has it) from them.
- ``Pretrained`` (``--pretrained efficientnet-lite0|1|2``): ImageNet-1k weights (optional
  extra), a new head, inputs normalised the way those weights were trained, and the
  weights' own resolution unless the user chose --image-size.
- ``FromBundle`` (``--init MODEL.safetensors``): any imageclf bundle, with a new last
  layer when the classes differ.

Both transfer starts follow fastai's ``fine_tune`` (``finetune.py``): the head alone
first, fitted on the frozen backbone's embeddings, then everything but the earliest
layer groups at discriminative learning rates.
"""

from __future__ import annotations

import dataclasses
from abc import ABC, abstractmethod

import torch
from torch import nn

from ..device import Runtime
from ..errors import UserInputError
from ..models import build, training_hooks
from ..models import efficientnet as effnet
from ..models.bundle import build_model, load_bundle
from . import finetune
from .config import TrainConfig
from .optim import make_optimizer
from .train_data import TrainData

PRETRAINED = tuple(effnet.VARIANTS)
WHITENING_IMAGES = 5000  # a deterministic, cheap estimate of the patch covariance
# ... of at most this many pixels (5,000 at 32 px, 102 at 224): the patches are float
# (12 values a pixel), and 600 pictures at 224 px held 4 GB while it was estimated.
WHITENING_PIXELS = WHITENING_IMAGES * 32 * 32


class Start(ABC):
    """What differs between the ways a run starts; one object per run, from ``start_for``."""

    fits_head_first = False  # fit the new head on frozen embeddings before any epoch
    min_steps = 300  # small data: fewer optimiser steps than this rarely learns anything

    def prepare(self, cfg: TrainConfig) -> TrainConfig:
        """The config with what the starting point decides filled in."""
        return cfg

    @abstractmethod
    def model(self, cfg: TrainConfig, data: TrainData) -> tuple[nn.Module, dict]:
        """The model to train, and the normalisation (mean, std) its inputs get."""

    @abstractmethod
    def optimizer(self, model: nn.Module, cfg: TrainConfig, rt: Runtime) -> torch.optim.Optimizer:
        """The optimiser over the parameters that train."""

    def origin(self, cfg: TrainConfig, classes: list[str]) -> dict | None:
        """What the run started from, for the bundle's metadata (None: from scratch)."""
        return None


class Scratch(Start):
    def model(self, cfg: TrainConfig, data: TrainData) -> tuple[nn.Module, dict]:
        classes = len(data.dataset.classes)
        model = build(cfg.architecture, classes, cfg.image_size, **cfg.arch_kwargs)
        n = min(WHITENING_IMAGES, max(1, WHITENING_PIXELS // cfg.image_size**2))
        training_hooks(model).init_whitening(data.normalizer(data.x_train[:n]))
        return model, {"mean": data.mean, "std": data.std}

    def optimizer(self, model: nn.Module, cfg: TrainConfig, rt: Runtime) -> torch.optim.Optimizer:
        # Muon's iteration runs in bf16 where training does (about half the fp32 time).
        bf16 = rt.amp_dtype == torch.bfloat16
        return make_optimizer(model, cfg, torch.bfloat16 if bf16 else torch.float32)


class _Transfer(Start):
    """Learned weights: the head first, then discriminative learning rates."""

    fits_head_first = True
    min_steps = 20  # fine-tuning starts from a fitted head and moves little

    def optimizer(self, model: nn.Module, cfg: TrainConfig, rt: Runtime) -> torch.optim.Optimizer:
        return finetune.discriminative_optimizer(model, cfg)


class Pretrained(_Transfer):
    def prepare(self, cfg: TrainConfig) -> TrainConfig:
        if cfg.pretrained not in PRETRAINED:
            raise UserInputError(
                f"unknown pretrained model {cfg.pretrained!r}; choose {', '.join(PRETRAINED)}"
            )
        effnet.weights_path(cfg.pretrained)  # fail now, not after decoding the data
        size = cfg.image_size
        # The finetune recipe's 224 is "the weights' own resolution" (Lite0's); Lite1/2
        # were trained at 240/260. A size the user (or a recipe file) chose stays.
        if "image_size" not in cfg.user_set and size == effnet.INPUT_SIZE:
            size = effnet.VARIANTS[cfg.pretrained].input_size
        return dataclasses.replace(cfg, architecture=cfg.pretrained, image_size=size)

    def model(self, cfg: TrainConfig, data: TrainData) -> tuple[nn.Module, dict]:
        classes = len(data.dataset.classes)
        model = build(cfg.pretrained, classes, cfg.image_size, **cfg.arch_kwargs)
        effnet.load_imagenet_weights(model)
        model.bn_frozen = cfg.freeze_bn
        return model, effnet.VARIANTS[cfg.pretrained].normalization

    def origin(self, cfg: TrainConfig, classes: list[str]) -> dict | None:
        variant = effnet.VARIANTS[cfg.pretrained]
        return {
            "pretrained": f"{cfg.pretrained} ImageNet-1k ({effnet.weights_source(cfg.pretrained)})",
            # what the weights were made for, beside the input_size this model was trained at
            "pretrained_input_size": variant.input_size,
            "pretrained_normalization": variant.normalization,
        }


class FromBundle(_Transfer):
    def prepare(self, cfg: TrainConfig) -> TrainConfig:
        """The bundle's architecture, and its input size (its weights were learned at it)."""
        meta = load_bundle(cfg.init).metadata
        size = meta.input_size
        if "image_size" in cfg.user_set and cfg.image_size != size:
            raise UserInputError(
                f"--init {cfg.init} was trained on {size}x{size} images; drop --image-size "
                f"{cfg.image_size} or train from scratch"
            )
        return dataclasses.replace(
            cfg, architecture=meta.architecture, arch_kwargs=dict(meta.arch_kwargs),
            image_size=size,
        )  # fmt: skip

    def model(self, cfg: TrainConfig, data: TrainData) -> tuple[nn.Module, dict]:
        classes = data.dataset.classes
        bundle = load_bundle(cfg.init)
        meta = bundle.metadata
        norm = {"mean": meta.mean, "std": meta.std}
        if meta.classes == list(classes):
            return build_model(bundle), norm
        # Same body, new head: every tensor but the last linear layer's is loaded, and the
        # check below makes that exact (strict, apart from the named head).
        model = build(meta.architecture, len(classes), meta.input_size, **meta.arch_kwargs)
        head = finetune.last_linear(model)
        state = {k: v for k, v in bundle.state_dict.items() if not k.startswith(head + ".")}
        result = model.load_state_dict(state, strict=False)
        stray = [k for k in result.missing_keys if not k.startswith(head + ".")]
        if stray or result.unexpected_keys:
            raise UserInputError(
                f"{cfg.init}: weights do not fit architecture {meta.architecture} "
                f"(missing {stray[:3]}, unexpected {result.unexpected_keys[:3]})"
            )
        return model, norm

    def origin(self, cfg: TrainConfig, classes: list[str]) -> dict | None:
        init_classes = load_bundle(cfg.init).metadata.classes
        start = {"init": str(cfg.init), "init_classes": init_classes}
        if init_classes != list(classes):
            start["new_head"] = finetune.last_linear(
                build(cfg.architecture, len(classes), cfg.image_size, **cfg.arch_kwargs)
            )
        return start


def start_for(cfg: TrainConfig) -> Start:
    """The run's one start: ``--pretrained`` weights, an ``--init`` bundle, or scratch."""
    if cfg.pretrained:
        return Pretrained()
    if cfg.init:
        return FromBundle()
    return Scratch()
