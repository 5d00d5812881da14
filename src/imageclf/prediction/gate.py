"""The ImageNet gate: a second opinion from the 1,000-class network a model was
fine-tuned from, on the sharp photo.

A model fine-tuned on CIFAR-10 knows ten classes and has only ever seen 32 px
thumbnails: every photo is reduced to 32 px before it looks, and it has no notion of
"something else", so no score computed from it separates photos of other things
(docs/benchmarks.md: about 70% at most). The ImageNet network it started from knows
1,000 classes, most of them other things, and looks at the photo at 160 px. The gate
keeps that network (int8 weights, BatchNorm folded; about 4.7 MB in the bundle) and a map
from ImageNet classes to the model's classes (``groups``). For each photo it gives

- the mass: the share of ImageNet's probability on the model's classes; a photo under
  ``outside_below`` is "not one of its classes";
- a vote per class (that class's mass), multiplied into the model's probabilities and
  renormalised (a product of experts: both must agree for a confident answer). Each vote
  is first divided by the class's share of ImageNet's classes (``imagenet_prior``), the
  mass that network gives the class before it looks: Bayes' rule for two opinions counts
  each prior once. Without it a class ImageNet names 118 times (dog) outvotes one it names
  twice (horse) on every animal it half recognises: a white horse reads as a Saluki.

It judges only pictures large enough to be photos (``sees``): on a thumbnail the
ImageNet network sees no more than the model does, and the model was trained on those.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from PIL import Image

from ..data.cifar import CIFAR10_CLASSES
from ..errors import BundleError, UserInputError
from ..fileio import parse_json, read_json_file
from ..imaging import resize_for_model
from ..models.bundle import load_bundle, save_bundle
from ..models.metadata import GATE_ARCHITECTURE as ARCHITECTURE
from ..models.metadata import GATE_SIDE as SIDE
from ..models.metadata import IMAGENET_CLASSES, check_gate
from .traced import Traced

# ImageNet's preprocessing for these weights: (x - 127) / 128 (efficientnet.NORMALIZATION).
_MEAN, _SCALE = 127.0, 128.0
# A vote (and a prior) never reaches zero: a class ImageNet has no name for keeps the
# model's say unchanged, and one it names but did not see is scaled down, not vetoed.
VOTE_FLOOR = 1e-3
SCALE_SUFFIX = ".scale"
CIFAR10_MAP = "imagenet_to_cifar10.json"  # in imageclf/models, written from class names


@dataclass(frozen=True)
class GateSpec:
    """The bundle's ``gate`` metadata: side, threshold, and ImageNet indices per class."""

    side: int
    outside_below: float
    groups: dict[str, list[int]]

    @classmethod
    def from_metadata(cls, raw: Mapping) -> GateSpec:
        groups = {str(k): [int(j) for j in v] for k, v in raw["groups"].items()}
        return cls(int(raw["side"]), float(raw["outside_below"]), groups)

    def to_metadata(self) -> dict:
        return {
            "architecture": ARCHITECTURE,
            "side": self.side,
            "outside_below": self.outside_below,
            "groups": self.groups,
            "storage": "int8 per output channel, BatchNorm folded",
        }


def quantize(state: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Weights of dimension 2 and up as symmetric int8 with one fp32 scale per output
    channel (``name`` and ``name.scale``); biases stay fp32 (a few KB)."""
    out = {}
    for name, tensor in state.items():
        tensor = tensor.detach().float()
        if tensor.dim() < 2:
            out[name] = tensor.clone()
            continue
        peak = tensor.abs().reshape(len(tensor), -1).amax(dim=1).clamp_min(1e-12)
        scale = peak / 127.0
        shape = (-1,) + (1,) * (tensor.dim() - 1)
        out[name] = (tensor / scale.reshape(shape)).round().clamp(-127, 127).to(torch.int8)
        out[name + SCALE_SUFFIX] = scale
    return out


def dequantize(stored: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``quantize``'s inverse (up to its rounding)."""
    state = {}
    for name, tensor in stored.items():
        if name.endswith(SCALE_SUFFIX):
            continue
        if tensor.dtype == torch.int8:
            scale = stored.get(name + SCALE_SUFFIX)
            if scale is None or scale.numel() != len(tensor):
                raise BundleError(f"gate weight {name} has no matching per-channel scale")
            shape = (-1,) + (1,) * (tensor.dim() - 1)
            state[name] = tensor.float() * scale.float().reshape(shape)
        else:
            state[name] = tensor.float()
    return state


def _network() -> torch.nn.Module:
    """The gate's architecture with BatchNorm already folded away (weights to be loaded)."""
    from ..models.efficientnet import EfficientNetLite
    from .inference import fold_batchnorm

    return fold_batchnorm(EfficientNetLite(IMAGENET_CLASSES, SIDE, variant=ARCHITECTURE))


class Survey(NamedTuple):
    """The gate's pass on one batch: which pictures it sees, and (rows for those only)
    each class's ImageNet mass."""

    seen: np.ndarray
    votes: np.ndarray

    @classmethod
    def joined(cls, parts: Sequence[Survey]) -> Survey:
        """One survey of the pictures of ``parts`` (at least one) in turn."""
        return cls(
            np.concatenate([p.seen for p in parts]), np.concatenate([p.votes for p in parts])
        )


class Gate:
    """A loaded gate: the folded ImageNet network and each model class's ImageNet indices."""

    def __init__(self, spec: GateSpec, stored: Mapping[str, torch.Tensor], classes: Sequence[str]):
        self.spec = spec
        with torch.device("meta"):  # shapes only: the stored weights are assigned below
            self.net = _network()  # (built with real tensors, ~0.3 s more per model load)
        try:
            self.net.load_state_dict(dequantize(stored), strict=True, assign=True)
        except RuntimeError as exc:
            first = str(exc).splitlines()[0]
            raise BundleError(f"the gate's weights do not fit {ARCHITECTURE}: {first}") from None
        # channels_last like the model's own copy (torch_backend): about 1 ms a photo less;
        # a frozen trace on the CPU, as the model's (``traced``).
        self.net = Traced(self.net.eval().to(memory_format=torch.channels_last), spec.side)
        self.columns = [torch.tensor(spec.groups.get(c, []), dtype=torch.long) for c in classes]
        self.prior = imagenet_prior(spec.groups, classes)

    @property
    def min_side(self) -> int:
        """The shortest edge of a picture it judges: half its own side."""
        return (self.spec.side + 1) // 2

    def sees(self, picture: Image.Image) -> bool:
        """A photo, not a thumbnail: at least ``min_side`` on its shorter edge."""
        return min(picture.size) >= self.min_side

    def votes(self, pictures: Sequence[Image.Image]) -> np.ndarray:
        """(N, classes) ImageNet probability mass on each of the model's classes, from
        each decoded picture squashed to the gate's side (the whole frame, as the model
        sees it)."""
        batch = np.stack([resize_for_model(p, self.spec.side) for p in pictures])
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float()
        x = ((x - _MEAN) / _SCALE).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            probs = torch.softmax(self.net(x).float(), dim=1)
        return torch.stack([probs[:, cols].sum(1) for cols in self.columns], dim=1).numpy()

    def brief(self) -> dict:
        """What ``/api/v1/model`` says of it."""
        return {
            "network": ARCHITECTURE,
            "side": self.spec.side,
            "min_side": self.min_side,
            "outside_below": self.spec.outside_below,
            "imagenet_classes": sum(len(v) for v in self.spec.groups.values()),
        }

    def survey(self, pictures: Sequence[Image.Image]) -> Survey:
        """Which pictures it ``sees``, and their votes: its whole pass on one batch."""
        seen = np.array([self.sees(p) for p in pictures], dtype=bool)
        photos = [p for p, s in zip(pictures, seen, strict=True) if s]
        votes = self.votes(photos) if photos else np.zeros((0, len(self.columns)), np.float32)
        return Survey(seen, votes)

    def judge(
        self,
        pictures: Sequence[Image.Image],
        probs: np.ndarray,
        outside: np.ndarray,
        survey: Survey | None = None,
    ) -> np.ndarray:
        """On the photos it ``sees``: its votes (``survey``'s, else its own pass now)
        multiplied into ``probs`` and "outside" from its mass, both in place; returns the
        mass per row (NaN: not judged)."""
        mass = np.full(len(probs), np.nan)
        seen, votes = survey or self.survey(pictures)
        if seen.any():
            probs[seen] = combine(probs[seen], votes, self.prior)
            outside[seen], mass[seen] = self.outside(votes), votes.sum(axis=1)
        return mass

    def outside(self, votes: np.ndarray) -> np.ndarray:
        """Which rows put less than ``outside_below`` of ImageNet's mass on the classes."""
        return votes.sum(axis=1) < self.spec.outside_below


def imagenet_prior(groups: Mapping[str, Sequence[int]], classes: Sequence[str]) -> np.ndarray:
    """Each class's share of ImageNet's classes: the ImageNet network's mass on it before
    it sees anything (it was trained on about as many pictures of every class)."""
    return np.array([len(groups.get(c, [])) for c in classes], np.float64) / IMAGENET_CLASSES


def combine(probs: np.ndarray, votes: np.ndarray, prior: np.ndarray) -> np.ndarray:
    """The model's probabilities times the gate's votes over their ``prior`` (both
    floored), renormalised: the evidence of the photo, not of ImageNet's class list."""
    ratio = (votes + VOTE_FLOOR) / (np.asarray(prior, np.float64) + VOTE_FLOOR)
    weighted = probs.astype(np.float64) * ratio
    return (weighted / weighted.sum(axis=1, keepdims=True)).astype(np.float32)


def read_map(path: Path | None, classes: Sequence[str]) -> dict[str, list[int]]:
    """``--map``'s JSON (``{"classes": {CLASS: {"indices": [...]}}}``), or for CIFAR-10's
    classes the package's own map; each class it names must be one of ``classes``."""
    if path is None:
        if sorted(classes) != sorted(CIFAR10_CLASSES):
            raise UserInputError(
                "this model's classes are not CIFAR-10's: pass --map with the ImageNet "
                "class indices of each of its classes (imagenet_to_cifar10.json shows how)"
            )
        text = (resources.files("imageclf.models") / CIFAR10_MAP).read_text("utf-8")
        where, raw = CIFAR10_MAP, parse_json(text, CIFAR10_MAP)
    else:
        where, raw = str(path), read_json_file(path, "--map")
    entries = raw.get("classes") if isinstance(raw, dict) else None
    if not isinstance(entries, dict) or not all(
        isinstance(e, dict) and isinstance(e.get("indices"), list) for e in entries.values()
    ):
        raise UserInputError(f'{where}: expected {{"classes": {{CLASS: {{"indices": [...]}}}}}}')
    groups = {str(c): e["indices"] for c, e in entries.items()}
    try:
        check_gate(GateSpec(SIDE, 0.5, groups).to_metadata(), list(classes))
    except ValueError as exc:
        raise UserInputError(f"{where}: {exc}") from None
    return groups


def attach_gate(model: Path, out: Path, map_file: Path | None, outside_below: float) -> str:
    """``imageclf gate``: MODEL's weights and metadata, plus the gate; returns a summary."""
    from ..training.finish import command_line  # the command, recorded as training's is

    bundle = load_bundle(model)
    meta = dict(bundle.metadata)
    if bundle.metadata.multi_label:
        raise UserInputError("a multi-label model takes no gate (it never says 'outside')")
    groups = read_map(map_file, bundle.metadata.classes)
    meta["gate"], tensors = make_gate(bundle.metadata.classes, groups, outside_below)
    meta["gate"]["added_by"] = command_line() or "prediction.gate.attach_gate"
    save_bundle(out, bundle.state_dict, meta, tensors)
    named = sum(len(v) for v in groups.values())
    return (
        f"{named} ImageNet classes stand for {len(groups)} of its {len(meta['classes'])} "
        f"classes; {out.stat().st_size / 1e6:.1f} MB"
    )


def remove_gate(model: Path, out: Path) -> str:
    """``imageclf gate --remove``: MODEL's weights and metadata without its gate."""
    bundle = load_bundle(model)
    if not bundle.gate:
        raise UserInputError(f"{model} has no gate to remove")
    meta = {k: v for k, v in bundle.metadata.items() if k != "gate"}
    save_bundle(out, bundle.state_dict, meta)
    return f"the model alone; {out.stat().st_size / 1e6:.1f} MB"


def make_gate(
    classes: Sequence[str], groups: Mapping[str, Sequence[int]], outside_below: float
) -> tuple[dict, dict[str, torch.Tensor]]:
    """The ``gate`` metadata and its tensors (``Bundle.gate``) from the ImageNet weights
    (the ``pretrained`` extra). ``groups``: model class -> ImageNet class indices."""
    from ..models.efficientnet import pretrained
    from .inference import fold_batchnorm

    spec = GateSpec(SIDE, float(outside_below), {c: sorted(set(groups[c])) for c in groups})
    folded = fold_batchnorm(pretrained(IMAGENET_CLASSES, name=ARCHITECTURE))
    stored = quantize(folded.state_dict())
    metadata = spec.to_metadata()
    check_gate(metadata, list(classes))
    return metadata, stored
