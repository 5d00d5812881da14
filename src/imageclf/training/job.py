"""One training run in progress: what every step after set-up reads, held once.

The driver builds a ``Job`` once the data is loaded and the parts are built, and hands
it to each step (the head fit, an epoch, the end of the run); ``state`` and ``best``
are the only fields that change as epochs pass. Decisions stay pure functions of the
state (``after_epoch``), so they can be tested without a run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..device import Runtime
from .config import TrainConfig
from .eta import Eta
from .parts import Parts
from .runs import RunState
from .start import Start
from .tracking import Trackers
from .train_data import TrainData

EpochHook = Callable[[dict], None]


@dataclass
class Job:
    cfg: TrainConfig
    run_dir: Path
    rt: Runtime
    start: Start
    data: TrainData
    parts: Parts
    show: bool  # progress bars and per-epoch logs (rank 0, when asked)
    started: float  # time.perf_counter() when the run began
    evaluate_test: bool = True  # False: the test split is never touched (tuning)
    on_epoch_end: EpochHook | None = None  # rank 0, after each epoch's checkpoint
    state: RunState = field(default_factory=RunState)
    best: dict[str, torch.Tensor] | None = None  # the best weights so far (on val loss)
    eta: Eta | None = None  # the run's clock, when progress is shown
    tracker: Trackers = field(default_factory=Trackers)  # --track: rank 0, epochs and the end

    @property
    def total_steps(self) -> int:
        return self.data.steps_per_epoch(self.cfg) * self.cfg.epochs
