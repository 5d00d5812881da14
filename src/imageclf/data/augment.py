"""Batched augmentation on tensors: whole batches at once, no per-image Python work.

Inputs are float NCHW batches (already normalised); every random choice comes
from an explicit ``torch.Generator`` so a run replays exactly.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

from ..errors import UserInputError

FLIP_MODES = ("none", "random", "alternate")
# Each setting's type and range (pixel sizes are checked against the image size by
# TrainConfig, which knows it): a recipe file is untrusted, and "rotate": "15" or a
# translate of -3 used to end in a traceback after the data had loaded.
_LIMITS = {  # name -> (integer?, low, high, high excluded?, in words)
    "translate": (True, 0, 512, False, "an integer from 0 to 512 pixels"),
    "cutout": (True, 0, 512, False, "an integer from 0 to 512 pixels"),
    "rotate": (False, 0, 180, False, "a number from 0 to 180 degrees"),
    "shift": (False, 0, 1, True, "a number from 0 to below 1 (a fraction of the side)"),
    "crop_scale": (False, 0, 1, False, "a number from 0 to 1 (0: off)"),
}


@dataclass(frozen=True)
class AugmentConfig:
    flip: str = "none"  # "random": p=0.5; "alternate": airbench's epoch-alternating flip
    translate: int = 0  # pixels: reflect-pad then random crop back to size
    cutout: int = 0  # side of a random square set to 0 (the normalised mean)
    rotate: float = 0.0  # degrees, uniform in [-rotate, rotate] (Keras rotation_range)
    shift: float = 0.0  # fraction of the side (Keras width/height_shift_range)
    # RandomResizedCrop: a box of [crop_scale, 1] of the area, aspect 3/4..4/3, resized
    # back to full size; 0 = off. The standard augmentation for fine-tuning on photos.
    crop_scale: float = 0.0

    def __post_init__(self) -> None:
        """Types and ranges, checked when built (``_LIMITS``); one line naming the field."""
        if not isinstance(self.flip, str) or self.flip not in FLIP_MODES:
            raise UserInputError(
                f"unknown augment.flip {self.flip!r}; choose {', '.join(FLIP_MODES)}"
            )
        for name, (integer, low, high, open_high, words) in _LIMITS.items():
            value = getattr(self, name)
            kinds = (int,) if integer else (int, float)
            ok = (
                isinstance(value, kinds)
                and not isinstance(value, bool)
                and math.isfinite(value)
                and low <= value
                and (value < high if open_high else value <= high)
            )
            if not ok:
                shown = repr(value) if len(repr(value)) <= 40 else repr(value)[:37] + "..."
                raise UserInputError(f"augment.{name} must be {words}, got {shown}")

    def to_dict(self) -> dict:
        return asdict(self)


def flip_mask(indices: torch.Tensor, epoch: int, mode: str, gen: torch.Generator, seed: int):
    """Which images of the batch to mirror.

    "alternate" flips a fixed random half of the dataset on even epochs and the
    other half on odd ones, so over any two epochs every image is seen both ways
    (less redundancy than independent coin flips; airbench, arXiv 2404.00498).
    """
    if mode == "random":
        return torch.rand(len(indices), generator=gen) < 0.5
    if mode == "alternate":
        # A cheap integer hash of (seed, index) gives each image its fixed parity.
        h = (indices.to(torch.int64) * 2654435761 + seed * 97531) % 4294967296
        return ((h >> 7) % 2).bool() ^ bool(epoch % 2)
    return torch.zeros(len(indices), dtype=torch.bool)


def apply_flip(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return torch.where(mask.to(x.device)[:, None, None, None], x.flip(-1), x)


def translate(x: torch.Tensor, pad: int, gen: torch.Generator) -> torch.Tensor:
    """Random crops of a reflect-padded batch, gathered with one index operation."""
    n, _c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad), mode="reflect")
    # Random numbers come from the CPU generator (replayable); indices then move to x's device.
    dev = x.device
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen).to(dev)
    rows = (dy[:, None] + torch.arange(h, device=dev))[:, None, :, None]  # n,1,h,1
    cols = (dx[:, None] + torch.arange(w, device=dev))[:, None, None, :]  # n,1,1,w
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chans = torch.arange(x.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chans, rows, cols].contiguous(memory_format=torch.channels_last)


def cutout(x: torch.Tensor, size: int, gen: torch.Generator) -> torch.Tensor:
    n, _c, h, w = x.shape
    dev = x.device
    cy = torch.randint(0, h, (n,), generator=gen).to(dev)[:, None, None]
    cx = torch.randint(0, w, (n,), generator=gen).to(dev)[:, None, None]
    ys = torch.arange(h, device=dev)[None, :, None]
    xs = torch.arange(w, device=dev)[None, None, :]
    half = size // 2
    inside = (
        (ys >= cy - half) & (ys < cy - half + size) & (xs >= cx - half) & (xs < cx - half + size)
    )
    return x.masked_fill(inside[:, None], 0.0)


def affine(x: torch.Tensor, degrees: float, shift: float, gen: torch.Generator) -> torch.Tensor:
    """Random rotation and shift, edges filled by repeating border pixels (Keras "nearest")."""
    n = x.shape[0]
    angle = (torch.rand(n, generator=gen) * 2 - 1) * math.radians(degrees)
    tx = (torch.rand(n, generator=gen) * 2 - 1) * shift * 2  # grid units span [-1, 1]
    ty = (torch.rand(n, generator=gen) * 2 - 1) * shift * 2
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta = torch.stack([torch.stack([cos, -sin, tx], 1), torch.stack([sin, cos, ty], 1)], 1)
    theta = theta.to(x.device)
    grid = F.affine_grid(theta.to(x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)


def random_resized_crop(
    x: torch.Tensor, min_scale: float, gen: torch.Generator, ratio=(3 / 4, 4 / 3)
) -> torch.Tensor:
    """Inception-style random crops for a whole batch in one ``grid_sample`` call: each
    image gets a box of random area share in [min_scale, 1] and aspect ratio in ``ratio``
    (clipped to fit), bilinearly resampled to the full size."""
    n = x.shape[0]
    area = min_scale + (1 - min_scale) * torch.rand(n, generator=gen)
    log_r = torch.empty(n).uniform_(math.log(ratio[0]), math.log(ratio[1]), generator=gen)
    aspect = torch.exp(log_r)
    w = torch.sqrt(area * aspect).clamp(max=1.0)  # box sides as fractions of the image
    h = torch.sqrt(area / aspect).clamp(max=1.0)
    cx = (torch.rand(n, generator=gen) * 2 - 1) * (1 - w)  # centres keep the box inside
    cy = (torch.rand(n, generator=gen) * 2 - 1) * (1 - h)
    zero = torch.zeros(n)
    theta = torch.stack([torch.stack([w, zero, cx], 1), torch.stack([zero, h, cy], 1)], 1)
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    out = F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def shrink(x: torch.Tensor, side: int) -> torch.Tensor:
    """The batch at ``side`` x ``side`` (area-averaged, as a camera would see it smaller):
    progressive resizing's early epochs."""
    out = F.interpolate(x, size=(side, side), mode="bilinear", antialias=True, align_corners=False)
    return out.contiguous(memory_format=torch.channels_last)


def augment_batch(
    x: torch.Tensor,
    indices: torch.Tensor,
    epoch: int,
    cfg: AugmentConfig,
    gen: torch.Generator,
    seed: int = 0,
) -> torch.Tensor:
    if cfg.crop_scale:
        x = random_resized_crop(x, cfg.crop_scale, gen)
    if cfg.flip != "none":
        x = apply_flip(x, flip_mask(indices, epoch, cfg.flip, gen, seed))
    if cfg.rotate or cfg.shift:
        x = affine(x, cfg.rotate, cfg.shift, gen)
    if cfg.translate:
        x = translate(x, cfg.translate, gen)
    if cfg.cutout:
        x = cutout(x, cfg.cutout, gen)
    return x
