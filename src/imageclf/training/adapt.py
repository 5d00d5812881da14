"""Small data adapts, and says so: recipes are sized for CIFAR's 45,000 training images;
on a user's 200 the batch shrinks, epochs grow and pixel translations scale, for every
field the user did not set."""

from __future__ import annotations

import dataclasses
import math

from .config import TrainConfig

MIN_BATCHES_PER_EPOCH = 8
MAX_EPOCHS = 100


def adapt_to_data(cfg: TrainConfig, n_train: int, min_steps: int) -> tuple[TrainConfig, list[str]]:
    """Defaults sized for CIFAR's 45,000 training images fail silently on a user's 200:
    batch 256 gives one step per epoch. Adjust what the user did not set explicitly and
    say why (the notes are logged at the start of the run). ``min_steps``: the fewest
    optimiser steps the run's start needs (``Start.min_steps``)."""
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
