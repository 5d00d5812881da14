"""Transfer learning's mechanics: the new head fitted first, then discriminative rates.

fastai's ``fine_tune``, made exact and cheap: the head alone on a frozen backbone,
fitted by full-batch L-BFGS on embeddings computed once (a multinomial logistic
regression: seconds, where an epoch of SGD would only approximate it), then, for
``epochs`` epochs, the top layer groups with discriminative learning rates (early layers
learn slower, they hold the most general features). ``--freeze-backbone`` stops after
the head: a linear probe.
"""

from __future__ import annotations

import logging
import math
import time

import torch
import torch.nn.functional as F
from torch import nn

from ..device import autocast
from ..errors import UserInputError
from ..prediction.inference import Normalizer, loss_and_accuracy, predict_logits
from .multilabel import bce_per_example
from .runs import history_record

log = logging.getLogger("imageclf.train")

# L2 penalty of the head fit, on standardised embeddings (per mean example loss).
HEAD_L2 = 1e-2
# A few hundred photos overfit 1280 features at any fixed penalty one could pick, so for
# small training sets the penalty is chosen by cross-validation on the training images
# (never on val): the grid value with the lowest held-out log loss. Above
# HEAD_CV_MAX_IMAGES the penalty matters little and the fits would take long: HEAD_L2.
HEAD_L2_GRID = (1e-3, 1e-2, 3e-2, 1e-1, 3e-1, 1.0)
HEAD_CV_FOLDS = 5
HEAD_CV_MAX_IMAGES = 2000


# ---------------------------------------------------------------- layer groups
def last_linear(model: nn.Module) -> str:
    """The name of the model's last linear layer: the head a transfer run replaces."""
    names = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    if not names:
        raise UserInputError("--init needs a model whose last layer is a linear classifier")
    return names[-1]


def layer_groups(model: nn.Module) -> list[list[nn.Parameter]]:
    """Parameters from input to output in a few groups, the head last."""
    head = list(head_module(model).parameters())
    if hasattr(model, "backbone_groups"):
        groups = [list(g.parameters()) for g in model.backbone_groups()]
    else:
        head_ids = {id(p) for p in head}
        body = [p for p in model.parameters() if id(p) not in head_ids]
        third = math.ceil(len(body) / 3)
        groups = [body[i : i + third] for i in range(0, len(body), third)]
    return [*groups, head]


def discriminative_optimizer(model: nn.Module, cfg) -> torch.optim.Optimizer:
    """AdamW with discriminative learning rates: geometric from ``lr * cfg.early_lr_ratio``
    for the first layer group to ``lr`` for the head; the first ``cfg.freeze_groups``
    groups are frozen."""
    groups = layer_groups(model)
    frozen = min(cfg.freeze_groups, len(groups) - 1)
    for group in groups[:frozen]:
        for p in group:
            p.requires_grad_(False)  # no gradient, and backward stops before these layers
    params = []
    for k, group in enumerate(groups):
        members = [p for p in group if p.requires_grad]
        if not members:
            continue
        ratio = cfg.early_lr_ratio ** (1 - k / (len(groups) - 1))
        lr = cfg.lr * ratio
        params.append({"params": members, "lr": lr, "base_lr": lr})
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)


# ---------------------------------------------------------------- head fit
@torch.inference_mode()
def embed(
    model: nn.Module,
    images_u8: torch.Tensor,
    normalizer: Normalizer,
    *,
    batch_size: int = 64,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> torch.Tensor:
    """Pooled backbone features (N, D) of uint8 NHWC images, in eval mode."""
    from tqdm.auto import tqdm

    model.eval()
    device = torch.device(device)
    out = []
    starts = range(0, len(images_u8), batch_size)
    for start in tqdm(starts, desc="embedding", unit="batch", leave=False, disable=not progress):
        x = normalizer(images_u8[start : start + batch_size], device)
        with autocast(device, amp_dtype):
            out.append(_features(model, x).float().cpu())
    return torch.cat(out) if out else torch.empty(0, 0)


def _features(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    if hasattr(model, "forward_features"):
        return model.forward_features(x)
    # Any other architecture: the input of its last linear layer, caught by a hook.
    head = dict(model.named_modules())[last_linear(model)]
    seen = []
    handle = head.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    try:
        model(x)
    finally:
        handle.remove()
    return seen[-1]


def fit_linear(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    bias: bool = True,
    weight: torch.Tensor | None = None,
    l2: float = HEAD_L2,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Multinomial logistic regression by full-batch L-BFGS (for (N, C) multi-hot
    ``labels`` one logistic regression per label, ``weight`` their positive weights):
    deterministic, and exact where a few SGD epochs on a frozen backbone are only
    approximate. Features are
    standardised for conditioning; the returned (W, b) act on raw features (b is zero
    when ``bias`` is False: a head without a bias, like the fast net's)."""
    mean = features.mean(0) if bias else torch.zeros(features.shape[1])
    std = features.std(0).clamp_min(1e-6)
    z = (features - mean) / std
    w = torch.zeros(n_classes, z.shape[1], requires_grad=True)
    b = torch.zeros(n_classes, requires_grad=bias)
    opt = torch.optim.LBFGS(
        [w, b] if bias else [w], lr=1.0, max_iter=500, history_size=20,
        line_search_fn="strong_wolfe",
    )  # fmt: skip

    def closure():
        opt.zero_grad()
        loss = head_loss(z @ w.T + b, labels, weight, label_smoothing)
        loss = loss + 0.5 * l2 * (w**2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = (w / std).detach()
    return w_raw, (b - w_raw @ mean).detach()


def head_loss(
    logits: torch.Tensor,
    labels: torch.Tensor,
    weight: torch.Tensor | None = None,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Mean loss of a head: cross-entropy, or for multi-hot labels the binary
    cross-entropy summed over labels (the loss training steps with)."""
    if labels.ndim == 2:
        return bce_per_example(logits, labels, weight, label_smoothing).mean()
    return F.cross_entropy(logits, labels, weight=weight, label_smoothing=label_smoothing)


def choose_head_l2(
    features: torch.Tensor,
    labels: torch.Tensor,
    n_classes: int,
    *,
    bias: bool = True,
    weight: torch.Tensor | None = None,
) -> float:
    """The head's L2 penalty: HEAD_L2_GRID's best by seeded k-fold cross-validation on
    these (training) embeddings, or HEAD_L2 for large or tiny sets."""
    n = len(labels)
    if n > HEAD_CV_MAX_IMAGES or n < 2 * HEAD_CV_FOLDS:
        return HEAD_L2
    folds = torch.randperm(n, generator=torch.Generator().manual_seed(0)).chunk(HEAD_CV_FOLDS)

    def held_out_loss(l2: float) -> float:
        total = 0.0
        for k, held in enumerate(folds):
            rest = torch.cat([f for j, f in enumerate(folds) if j != k])
            w, b = fit_linear(
                features[rest], labels[rest], n_classes, bias=bias, weight=weight, l2=l2
            )
            logits = features[held] @ w.T + b
            if labels.ndim == 2:  # multi-label: binary cross-entropy summed over labels
                total += bce_per_example(logits, labels[held], weight).sum().item()
            else:
                total += F.cross_entropy(
                    logits, labels[held], weight=weight, reduction="sum"
                ).item()
        return total / n

    return min(HEAD_L2_GRID, key=held_out_loss)


def head_module(model: nn.Module) -> nn.Linear:
    if hasattr(model, "classifier") and isinstance(model.classifier, nn.Linear):
        return model.classifier
    return dict(model.named_modules())[last_linear(model)]


def fit_head(
    model: nn.Module,
    normalizer: Normalizer,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_val: torch.Tensor,
    y_val: torch.Tensor,
    n_classes: int,
    *,
    weight: torch.Tensor | None = None,
    device: torch.device | str = "cpu",
    amp_dtype: torch.dtype | None = None,
    progress: bool = False,
) -> dict:
    """Fit the head on embeddings computed once; returns a history record (epoch 0)."""
    started = time.perf_counter()
    feats = embed(model, x_train, normalizer, device=device, amp_dtype=amp_dtype, progress=progress)
    head = head_module(model)
    # No label smoothing here: the cross-validated L2 penalty already regularises, and on
    # a few hundred photos smoothing on top of it cost the probe 2 points of val accuracy.
    options = dict(bias=head.bias is not None, weight=weight)
    l2 = choose_head_l2(feats, y_train, n_classes, **options)
    w, b = fit_linear(feats, y_train, n_classes, l2=l2, **options)
    scale = getattr(model, "head_scale", 1.0)  # the fast net multiplies its head's output
    with torch.no_grad():
        head.weight.copy_(w / scale)
        if head.bias is not None:
            head.bias.copy_(b / scale)
    val = None
    if len(x_val):  # through the model, as every later epoch and the final scoring are
        logits = predict_logits(model, x_val, normalizer, device=device, amp_dtype=amp_dtype)
        val = loss_and_accuracy(logits, y_val)
    train = loss_and_accuracy(feats @ w.T + b, y_train)
    record = history_record(0, train["loss"], train["accuracy"], val, None, started)
    if progress:
        log.info(
            "head fitted on frozen features (L2 %g): train acc %.4f  val acc %s  %.1fs",
            l2, record["train_acc"], record["val_acc"], record["seconds"],
        )  # fmt: skip
    return record
