"""TrivialAugment (Müller & Hutter 2021, the "wide" space): each picture gets one op drawn
at random with a random magnitude; no search, no per-dataset policy.

Batched: the ops and magnitudes of the whole batch are drawn at once from the run's
generator, then each op runs on the pictures that drew it (a Python loop over the 14 ops,
never over pictures), and every geometric op of the batch goes through one
``grid_sample``. It works on float pictures in [0, 1] (posterize and solarize need the
pixel scale, which a normalised batch has lost), so ``training.step`` applies it to the
uint8 batch before normalising.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

# The wide space's ranges (torchvision's TrivialAugmentWide), with translation as a
# fraction of the side (RandAugment's 150/331) instead of 32 pixels, which would move a
# 32-pixel picture out of its frame.
MAX_SHEAR = 0.99
MAX_TRANSLATE = 150 / 331
MAX_ROTATE = 135.0  # degrees
MAX_ENHANCE = 0.99  # brightness, colour, contrast, sharpness: factor 1 +- this
GEOMETRIC = ("shear_x", "shear_y", "translate_x", "translate_y", "rotate")
PHOTOMETRIC = (
    "brightness", "color", "contrast", "sharpness", "posterize", "solarize",
    "autocontrast", "equalize",
)  # fmt: skip
OPS = ("identity", *GEOMETRIC, *PHOTOMETRIC)
_GRAY = (0.299, 0.587, 0.114)  # ITU-R 601 luma, PIL's "L"


def trivial_augment(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """``x``: float N x 3 x H x W in [0, 1]; the same shape back, each picture changed by
    one op of ``OPS`` (identity included) at a uniform random magnitude."""
    n = x.shape[0]
    op = torch.randint(len(OPS), (n,), generator=gen)
    magnitude = torch.rand(n, generator=gen)
    sign = torch.where(torch.rand(n, generator=gen) < 0.5, -1.0, 1.0)
    out = x.clone()
    geometric = (op >= 1) & (op <= len(GEOMETRIC))
    if geometric.any():
        sel = geometric.nonzero().squeeze(1)
        theta = _theta(op[sel] - 1, magnitude[sel] * sign[sel])
        out[sel.to(x.device)] = _warp(x[sel.to(x.device)], theta)
    first = 1 + len(GEOMETRIC)
    for k, name in enumerate(PHOTOMETRIC):
        sel = (op == first + k).nonzero().squeeze(1)
        if len(sel):
            at = sel.to(x.device)
            strength = (magnitude[sel] * sign[sel]).to(x.device, x.dtype)
            out[at] = _PHOTO[name](x[at], strength)
    return out.clamp_(0, 1)


def _theta(kind: torch.Tensor, signed: torch.Tensor) -> torch.Tensor:
    """Affine matrices (output -> input, grid units) for shear x/y, translate x/y, rotate."""
    k = len(kind)
    theta = torch.zeros(k, 2, 3)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    shear, shift = signed * MAX_SHEAR, signed * MAX_TRANSLATE * 2  # the grid spans [-1, 1]
    angle = signed * math.radians(MAX_ROTATE)
    theta[:, 0, 1] = torch.where(kind == 0, shear, 0.0)
    theta[:, 1, 0] = torch.where(kind == 1, shear, 0.0)
    theta[:, 0, 2] = torch.where(kind == 2, shift, 0.0)
    theta[:, 1, 2] = torch.where(kind == 3, shift, 0.0)
    rot = kind == 4
    cos, sin = torch.cos(angle), torch.sin(angle)
    theta[rot, 0, 0], theta[rot, 0, 1] = cos[rot], -sin[rot]
    theta[rot, 1, 0], theta[rot, 1, 1] = sin[rot], cos[rot]
    return theta


def _warp(x: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """One ``grid_sample`` for all of them; what comes into view is black (PIL's fill)."""
    grid = F.affine_grid(theta.to(x.device, x.dtype), list(x.shape), align_corners=False)
    return F.grid_sample(x, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def _per_image(v: torch.Tensor) -> torch.Tensor:
    return v.view(-1, 1, 1, 1)


def _gray(x: torch.Tensor) -> torch.Tensor:
    w = torch.tensor(_GRAY, device=x.device, dtype=x.dtype).view(1, 3, 1, 1)
    return (x * w).sum(1, keepdim=True)


def _blend(x: torch.Tensor, base: torch.Tensor, strength: torch.Tensor) -> torch.Tensor:
    """PIL's ImageEnhance: base + factor * (x - base), factor = 1 + strength."""
    return base + _per_image(1 + strength * MAX_ENHANCE) * (x - base)


def _brightness(x, s):
    return _blend(x, torch.zeros_like(x), s)


def _color(x, s):
    return _blend(x, _gray(x), s)


def _contrast(x, s):
    return _blend(x, _gray(x).mean((2, 3), keepdim=True), s)


def _sharpness(x, s):
    """Blend with PIL's smoothing filter (centre 5, neighbours 1); the border kept."""
    kernel = torch.ones(3, 1, 3, 3, device=x.device, dtype=x.dtype)
    kernel[:, :, 1, 1] = 5.0
    smooth = F.conv2d(x, kernel / 13.0, padding=1, groups=3)
    smooth[..., 0, :], smooth[..., -1, :] = x[..., 0, :], x[..., -1, :]
    smooth[..., :, 0], smooth[..., :, -1] = x[..., :, 0], x[..., :, -1]
    return _blend(x, smooth, s)


def _posterize(x, s):
    """Keep 8 down to 2 bits of each 8-bit value (the wide space's range)."""
    bits = (8 - (s.abs() * 6).round()).to(x.dtype)
    step = _per_image(2 ** (8 - bits))
    return torch.floor(torch.round(x * 255) / step) * step / 255


def _solarize(x, s):
    """Invert every value at or above a threshold from 1 (nothing) down to 0 (all)."""
    return torch.where(x >= _per_image(1 - s.abs()), 1 - x, x)


def _autocontrast(x, _s):
    low, high = x.amin((2, 3), keepdim=True), x.amax((2, 3), keepdim=True)
    span = high - low
    return torch.where(span > 0, (x - low) / span.clamp_min(1e-6), x)


def _equalize(x, _s):
    """Per-channel histogram equalisation over 256 levels (scatter_add, then a lookup)."""
    n, c, h, w = x.shape
    levels = torch.round(x * 255).long().clamp_(0, 255).reshape(n * c, h * w)
    hist = torch.zeros(n * c, 256, device=x.device, dtype=x.dtype)
    hist.scatter_add_(1, levels, torch.ones_like(levels, dtype=x.dtype))
    cdf = hist.cumsum(1)
    first = torch.where(hist > 0, cdf, torch.full_like(cdf, float(h * w))).amin(1, keepdim=True)
    lut = ((cdf - first) / (h * w - first).clamp_min(1)).clamp_(0, 1)
    flat = lut.gather(1, levels).view(n, c, h, w)
    # A channel of one value has nothing to spread: left as it is (PIL does the same).
    return torch.where((first == h * w).view(n, c, 1, 1), x, flat)


_PHOTO = {
    "brightness": _brightness,
    "color": _color,
    "contrast": _contrast,
    "sharpness": _sharpness,
    "posterize": _posterize,
    "solarize": _solarize,
    "autocontrast": _autocontrast,
    "equalize": _equalize,
}
