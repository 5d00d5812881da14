"""Optimiser, learning-rate schedule and lookahead: the numbers the training loop steps by.

Each is a plain function of the config (and the step), so a schedule can be
plotted or tested without training anything.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import TrainConfig

LOOKAHEAD_EVERY = 5  # steps between lookahead syncs
# Newton-Schulz: a quintic whose coefficients maximise the slope at zero; 3 steps map the
# singular values of a normalised matrix into roughly 0.5..1.5 (Muon, K. Jordan 2024).
_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
NS_STEPS = 3
ONE_CYCLE_DIV = 25.0  # one-cycle starts at lr / 25 ...
ONE_CYCLE_FINAL_DIV = 1e4  # ... and ends at lr / 25 / 10,000 (torch's OneCycleLR defaults)


def _norm_biases(model: nn.Module) -> list[nn.Parameter]:
    biases = []
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm) and module.bias is not None:
            biases.append(module.bias)
    return biases


def make_optimizer(
    model: nn.Module, cfg: TrainConfig, matmul_dtype: torch.dtype = torch.float32
) -> torch.optim.Optimizer:
    """Adam (the seeds' Keras set-up), AdamW, nesterov SGD with per-group learning rates,
    or that SGD with Muon for the conv filters (its iteration in ``matmul_dtype``)."""
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        return torch.optim.Adam(params, lr=cfg.lr, eps=cfg.adam_eps, weight_decay=cfg.weight_decay)
    if cfg.optimizer == "adamw":  # decoupled weight decay (the fine-tuning recipe's choice)
        return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    # Decay per step scales with the batch (a bigger batch means fewer steps per epoch).
    decay = cfg.weight_decay * cfg.batch_size / 1024
    bias_ids = {id(p) for p in _norm_biases(model)}
    filters = [p for p in params if p.ndim == 4] if cfg.optimizer == "muon" else []
    filter_ids = {id(p) for p in filters}
    groups = []
    for scale, members in (
        (cfg.bias_lr_scale, [p for p in params if id(p) in bias_ids]),
        (1.0, [p for p in params if id(p) not in bias_ids | filter_ids]),
    ):
        if members:
            lr = cfg.lr * scale
            # torch's SGD multiplies decay by lr; dividing here makes the decay lr-independent.
            groups.append({"params": members, "lr": lr, "weight_decay": decay / lr, "base_lr": lr})
    if not filters:
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    muon_lr = cfg.muon_lr * cfg.batch_size / 256
    muon = {"params": filters, "lr": muon_lr, "base_lr": muon_lr, "muon": True}
    return MuonSGD(
        [*groups, muon],
        lr=cfg.lr,
        momentum=cfg.momentum,
        muon_momentum=cfg.muon_momentum,
        matmul_dtype=matmul_dtype,
    )


def orthogonalize(
    update: torch.Tensor, steps: int = NS_STEPS, dtype: torch.dtype = torch.float32
) -> torch.Tensor:
    """``update`` (rows x columns) with its singular values pushed towards 1: the direction
    of every row space component kept, their sizes equalised (Newton-Schulz iteration).
    The iteration tolerates bf16 (airbench runs it so), where the CPU does bf16 natively."""
    a, b, c = _NS_COEFFICIENTS
    x = (update.float() / (update.norm() + 1e-7)).to(dtype)  # top singular value <= 1
    wide = x.size(0) <= x.size(1)
    if not wide:
        x = x.T
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x if wide else x.T


class MuonSGD(torch.optim.Optimizer):
    """Nesterov SGD, except for groups marked ``muon``: conv filters, whose momentum is
    orthogonalised before the step and whose norm is held fixed (BatchNorm follows every
    filter here, so only its direction matters). One optimiser object, so checkpoints and
    the grad scaler see a single state."""

    def __init__(
        self,
        groups: list[dict],
        lr: float,
        momentum: float,
        muon_momentum: float,
        matmul_dtype: torch.dtype = torch.float32,
    ):
        super().__init__(groups, {"lr": lr, "momentum": momentum, "weight_decay": 0.0})
        self.muon_momentum = muon_momentum
        self.matmul_dtype = matmul_dtype

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            muon = group.get("muon", False)
            momentum = self.muon_momentum if muon else group["momentum"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not muon and group["weight_decay"]:
                    grad = grad.add(p, alpha=group["weight_decay"])
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"].mul_(momentum).add_(grad)
                step = grad.add(buf, alpha=momentum)  # nesterov
                if muon:
                    p.mul_(p.size(0) ** 0.5 / p.norm().clamp_min(1e-12))
                    flat = step.reshape(p.size(0), -1)
                    step = orthogonalize(flat, dtype=self.matmul_dtype).view_as(p).to(p.dtype)
                p.add_(step, alpha=-group["lr"])


def schedule_multiplier(cfg: TrainConfig, step: int, total_steps: int) -> float:
    """The schedule's factor on the base learning rate at ``step`` (0-based)."""
    if cfg.schedule == "warmup-linear":
        peak = max(1, int(cfg.warmup * total_steps))
        if step < peak:
            return 0.2 + 0.8 * step / peak
        return max(0.0, (total_steps - step) / max(1, total_steps - peak))
    if cfg.schedule == "cosine":  # warmup-linear's rise, then half a cosine down to 0
        peak = max(1, int(cfg.warmup * total_steps))
        if step < peak:
            return 0.2 + 0.8 * step / peak
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - peak) / max(1, total_steps - peak))))
    if cfg.schedule == "onecycle":
        return one_cycle(step, total_steps, cfg.warmup)
    return 1.0  # "constant", and "plateau" (whose factor lives in the run state)


def one_cycle(step: int, total_steps: int, rise: float) -> float:
    """Smith's one cycle as fastai's ``fit_one_cycle`` and torch's ``OneCycleLR`` draw it:
    a cosine from 1/25 of the rate up to it over ``rise`` of the steps, then a cosine down
    to 1/25 of 1/10,000 (momentum is not cycled here)."""
    start, end = 1 / ONE_CYCLE_DIV, 1 / (ONE_CYCLE_DIV * ONE_CYCLE_FINAL_DIV)
    peak = max(1, int(rise * total_steps))
    if step < peak:
        return start + (1 - start) * (1 - math.cos(math.pi * step / peak)) / 2
    t = min(1.0, (step - peak) / max(1, total_steps - peak))
    return end + (1 - end) * (1 + math.cos(math.pi * t)) / 2


def set_learning_rate(optimizer: torch.optim.Optimizer, cfg: TrainConfig, multiplier: float):
    for group in optimizer.param_groups:
        group["lr"] = group.get("base_lr", cfg.lr) * multiplier


class Lookahead:
    """A slow copy of the weights that the fast ones are pulled toward every few steps;
    the pull ramps up late in training so the final weights are a smoothed average
    (airbench)."""

    def __init__(self, model: nn.Module) -> None:
        self.model = model
        self.slow = [p.detach().clone() for p in model.parameters()]

    def after_step(self, step: int, total_steps: int) -> None:
        if step % LOOKAHEAD_EVERY == 0:
            self.sync(0.95**LOOKAHEAD_EVERY * (step / total_steps) ** 3)

    @torch.no_grad()
    def sync(self, decay: float) -> None:
        """decay 1.0 sets the model to the slow weights (the end of training)."""
        for buf, p in zip(self.slow, self.model.parameters(), strict=True):
            buf.lerp_(p.detach(), 1 - decay)
            p.copy_(buf)

    def load(self, saved: list[torch.Tensor]) -> None:
        for buf, value in zip(self.slow, saved, strict=True):
            buf.copy_(value)
