"""MixUp, CutMix and random erasing: whole batches at once, every draw from the run's
generator so a resumed run replays them.

MixUp (Zhang et al. 2018) blends each picture with a partner from the same batch and its
label in the same proportion; CutMix (Yun et al. 2019) pastes a box of the partner in and
mixes the labels by the box's share of the area. Both make soft targets (N x classes,
each row summing to 1), which ``F.cross_entropy`` takes as they are, with label smoothing
and class weights applied as they are to hard labels. With both on, each picture gets one
or the other at even odds (timm's "elem" switch). Each picture draws its own mixing
weight from Beta(alpha, alpha). Random erasing (Zhong et al. 2020) replaces a random box
of a random share of pictures with noise, on the normalised batch (timm's "pixel" mode).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

ERASE_AREA = (0.02, 1 / 3)  # share of the picture a box covers (the paper's and timm's)
ERASE_ASPECT = (0.3, 1 / 0.3)


def as_targets(y: torch.Tensor, classes: int) -> torch.Tensor:
    """Hard labels as one-hot rows; soft or multi-hot rows (N x classes) as they are."""
    if y.ndim == 2:
        return y.float()
    return F.one_hot(y.long(), classes).float()


def _beta(alpha: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n draws from Beta(alpha, alpha), seeded from ``gen`` (torch's Beta takes no
    generator; NumPy's, seeded from it, replays as the generator does)."""
    seed = int(torch.randint(0, 2**62, (1,), generator=gen))
    return torch.from_numpy(np.random.default_rng(seed).beta(alpha, alpha, n)).float()


def _boxes(
    n: int, h: int, w: int, area: torch.Tensor, aspect: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Boxes (top, left, height, width) of ``area`` share and ``aspect`` (w/h), centred
    uniformly, clipped to the picture."""
    bh = torch.sqrt(area / aspect) * h
    bw = torch.sqrt(area * aspect) * w
    cy = torch.rand(n, generator=gen) * h
    cx = torch.rand(n, generator=gen) * w
    top = (cy - bh / 2).round().clamp(0, h).long()
    left = (cx - bw / 2).round().clamp(0, w).long()
    bottom = (cy + bh / 2).round().clamp(0, h).long()
    right = (cx + bw / 2).round().clamp(0, w).long()
    return top, left, bottom, right


def _inside(top, left, bottom, right, h: int, w: int, device) -> torch.Tensor:
    """N x 1 x H x W mask of each picture's box."""
    ys = torch.arange(h, device=device)[None, :, None]
    xs = torch.arange(w, device=device)[None, None, :]
    t, lf, b, r = (v.to(device)[:, None, None] for v in (top, left, bottom, right))
    return ((ys >= t) & (ys < b) & (xs >= lf) & (xs < r))[:, None]


def mix_batch(
    x: torch.Tensor,
    targets: torch.Tensor,
    mixup: float,
    cutmix: float,
    gen: torch.Generator,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(pictures, targets) mixed: MixUp with Beta(``mixup``) weights, CutMix with
    Beta(``cutmix``) box shares (0 turns either off; both 0 returns the inputs)."""
    if not (mixup or cutmix):
        return x, targets
    n, _c, h, w = x.shape
    perm = torch.randperm(n, generator=gen)
    use_cut = torch.rand(n, generator=gen) < 0.5 if mixup and cutmix else None
    if use_cut is None:
        use_cut = torch.full((n,), bool(cutmix))
    lam = torch.where(use_cut, _beta(cutmix or 1.0, n, gen), _beta(mixup or 1.0, n, gen))
    top, left, bottom, right = _boxes(n, h, w, 1 - lam, torch.ones(n), gen)
    # The share the box really took once clipped: that is what the labels must say.
    cut_share = ((bottom - top) * (right - left)).float() / (h * w)
    lam = torch.where(use_cut, 1 - cut_share, lam)
    partner = x[perm.to(x.device)]
    box = _inside(top, left, bottom, right, h, w, x.device) & use_cut.to(x.device).view(-1, 1, 1, 1)
    blend = _per_image(torch.where(use_cut, 1.0, lam).to(x.device, x.dtype))
    mixed = torch.where(box, partner, blend * x + (1 - blend) * partner)
    weight = lam.to(targets.device, targets.dtype)[:, None]
    mixed_targets = weight * targets + (1 - weight) * targets[perm.to(targets.device)]
    return mixed.contiguous(memory_format=torch.channels_last), mixed_targets


def random_erasing(x: torch.Tensor, p: float, gen: torch.Generator) -> torch.Tensor:
    """Each picture, with probability ``p``, gets a box of 2-33% of its area and aspect
    0.3-3.3 replaced by N(0, 1) noise (random pixels on the normalised scale)."""
    if not p:
        return x
    n, c, h, w = x.shape
    chosen = torch.rand(n, generator=gen) < p
    area = torch.empty(n).uniform_(*ERASE_AREA, generator=gen)
    log_aspect = torch.empty(n).uniform_(*map(math.log, ERASE_ASPECT), generator=gen)
    top, left, bottom, right = _boxes(n, h, w, area, torch.exp(log_aspect), gen)
    box = _inside(top, left, bottom, right, h, w, x.device) & chosen.to(x.device).view(-1, 1, 1, 1)
    noise = torch.randn(n, c, h, w, generator=gen).to(x.device, x.dtype)
    return torch.where(box, noise, x).contiguous(memory_format=torch.channels_last)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)
