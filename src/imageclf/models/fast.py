"""The ``fast`` network: a small VGG/ResNet-style CNN tuned for few-epoch training.

Ideas from the CIFAR-10 speed-run literature (airbench, arXiv 2404.00498),
implemented here from their description:
- a frozen first layer that whitens 2x2 patches (PCA of the training data), so
  the first trainable layer sees decorrelated inputs and learns faster;
- conv layers initialised as identity (dirac) on their first channels, so the
  fresh network passes the whitened signal through;
- BatchNorm without a learnable scale and with fast-moving statistics;
- GELU, max-pooling, a global max at the end and a down-scaled linear head.
"""

from __future__ import annotations

import torch
from torch import nn

from .protocol import TrainingHooks
from .registry import register


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm whose scale stays 1: only the shift is learned (fewer, better-conditioned
    parameters for a short schedule)."""

    def __init__(self, channels: int, momentum: float = 0.6, eps: float = 1e-12):
        super().__init__(channels, eps=eps, momentum=1 - momentum)
        self.weight.requires_grad_(False)


class ConvGroup(nn.Module):
    """conv -> pool -> BN -> GELU -> conv -> BN -> GELU (halves the resolution)."""

    def __init__(self, c_in: int, c_out: int, bn_momentum: float):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, padding=1, bias=False)
        self.pool = nn.MaxPool2d(2)
        self.norm1 = _BatchNorm(c_out, bn_momentum)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.norm2 = _BatchNorm(c_out, bn_momentum)
        self.act = nn.GELU()
        for conv in (self.conv1, self.conv2):
            # Identity on the first channels: the untrained net already passes signal through.
            w = conv.weight.data
            nn.init.dirac_(w[: min(w.size(0), w.size(1))])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.norm1(self.pool(self.conv1(x))))
        return self.act(self.norm2(self.conv2(x)))


class FastNet(nn.Module, TrainingHooks):
    def __init__(
        self,
        num_classes: int = 10,
        input_size: int = 32,
        widths: tuple[int, ...] = (64, 256, 256),
        whiten_kernel: int = 2,
        bn_momentum: float = 0.6,
        head_scale: float = 1 / 9,
    ):
        super().__init__()
        self.input_size = input_size
        whiten_width = 2 * 3 * whiten_kernel**2
        self.whiten = nn.Conv2d(3, whiten_width, whiten_kernel, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        groups, c_in = [], whiten_width
        for width in widths:
            groups.append(ConvGroup(c_in, width, bn_momentum))
            c_in = width
        self.groups = nn.Sequential(*groups)
        self.head = nn.Linear(c_in, num_classes, bias=False)
        self.head_scale = head_scale
        self.act = nn.GELU()

    @torch.no_grad()
    def init_whitening(self, images: torch.Tensor, eps: float = 5e-4) -> None:
        """Set the frozen first layer to +/- the PCA-whitening filters of image patches."""
        k = self.whiten.kernel_size[0]
        patches = images.float().unfold(2, k, 1).unfold(3, k, 1)  # N,C,H',W',k,k
        patches = patches.transpose(1, 3).reshape(-1, 3 * k * k)
        patches = patches - patches.mean(0, keepdim=True)
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov.double())
        filters = (eigenvectors.T / torch.sqrt(eigenvalues[:, None] + eps)).float()
        filters = filters.reshape(-1, 3, k, k)  # patches were flattened as (C, kh, kw)
        self.whiten.weight.copy_(torch.cat([filters, -filters]))

    def whitening_bias(self) -> nn.Parameter:
        """Trained for the first few epochs only, then frozen with the whitening weights."""
        return self.whiten.bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act(self.whiten(x))
        x = self.groups(x)
        x = torch.amax(x, dim=(2, 3))
        return self.head(x) * self.head_scale


@register("fast")
def fast(
    num_classes: int = 10,
    input_size: int = 32,
    widths: tuple[int, ...] | list[int] = (64, 256, 256),
    **kwargs,
) -> nn.Module:
    return FastNet(num_classes, input_size, tuple(widths), **kwargs)
