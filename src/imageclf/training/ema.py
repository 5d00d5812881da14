"""An exponential moving average of the weights (``--ema DECAY``): validation, the kept
epoch and the bundle use the average, which is smoother than the last step's weights.

Everything in the model's ``state_dict`` is averaged, BatchNorm's running statistics
included (timm's ModelEmaV2 does the same: statistics gathered under weights that kept
changing match the averaged weights better than the last batch's); integer buffers (BN's
batch counter) are copied. The decay ramps up as ``min(decay, (1 + n) / (10 + n))`` after
``n`` updates (TensorFlow's ``ExponentialMovingAverage`` with ``num_updates``), so a short
run is not dominated by its random start. The average starts at the first update, so a
head fitted before fine-tuning is in it from the beginning. Its state (the average and
the update count) goes into ``last.pt``: a resumed run continues it exactly.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn


def ema_decay(decay: float, updates: int) -> float:
    """The decay used for update number ``updates`` (0-based)."""
    return min(decay, (1 + updates) / (10 + updates))


class WeightAverage:
    """The averaged copy of a model's weights and buffers, updated after each step."""

    def __init__(self, model: nn.Module, decay: float) -> None:
        self.model = model
        self.decay = decay
        self.updates = 0
        self.average: list[torch.Tensor] = []  # empty until the first update

    def _live(self) -> list[torch.Tensor]:
        return list(self.model.state_dict().values())

    @torch.no_grad()
    def update(self) -> None:
        live = self._live()
        if not self.average:
            self.average = [t.detach().clone() for t in live]
        else:
            d = ema_decay(self.decay, self.updates)
            floats = [
                (a, t) for a, t in zip(self.average, live, strict=True) if a.is_floating_point()
            ]
            if floats:
                torch._foreach_lerp_([a for a, _ in floats], [t for _, t in floats], 1 - d)
            for a, t in zip(self.average, live, strict=True):
                if not a.is_floating_point():
                    a.copy_(t)
        self.updates += 1

    @torch.no_grad()
    def copy_to_model(self) -> None:
        """The model's weights become the average (the end of training); nothing before
        the first update."""
        if self.average:
            for t, a in zip(self._live(), self.average, strict=True):
                t.copy_(a)

    @contextmanager
    def applied(self) -> Iterator[None]:
        """The model holds the average inside the block and its own weights after it."""
        if not self.average:
            yield
            return
        saved = [t.detach().clone() for t in self._live()]
        self.copy_to_model()
        try:
            yield
        finally:
            with torch.no_grad():
                for t, s in zip(self._live(), saved, strict=True):
                    t.copy_(s)

    def averaged_state(self) -> dict[str, torch.Tensor]:
        """A ``state_dict`` of the average (what ``best.pt`` keeps); the model's own before
        the first update."""
        names = list(self.model.state_dict())
        values = self.average or self._live()
        return {k: v.detach().clone() for k, v in zip(names, values, strict=True)}

    def state_dict(self) -> dict:
        return {"updates": self.updates, "average": [a.clone() for a in self.average]}

    def load_state_dict(self, saved: dict) -> None:
        self.updates = int(saved.get("updates", 0))
        average = saved.get("average", [])
        self.average = (
            [a.to(t.device, t.dtype).clone() for a, t in zip(average, self._live(), strict=True)]
            if average
            else []
        )
