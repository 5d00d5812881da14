"""How long a run will take: one overall estimate a few steps into the first epoch, then
the time left, refined from measured epochs, on every epoch line.

Nothing is assumed about the machine: the first estimate times a few optimiser steps
after the first two (which pay for memory allocation and oneDNN's kernel choice); until a
validation pass has been timed, a forward pass is taken as a third of a training step
(the backward pass costs about twice the forward). Each finished epoch replaces those
guesses with its own train and validation seconds. The times depend on the machine (cores,
native bf16 or not) and on whatever else runs on it, which is why they are measured here.
"""

from __future__ import annotations

import logging
import time

from ..prediction.inference import TTA_VIEWS

log = logging.getLogger("imageclf.train")

WARMUP_STEPS = 2  # not timed: the first steps allocate and choose kernels
TIMED_STEPS = 8
FORWARD_SHARE = 1 / 3  # a forward pass against a training step, until validation is timed


def duration(seconds: float) -> str:
    """``40 s``, ``9 min``, ``2.5 h``: as precise as an estimate deserves."""
    if seconds < 90:
        return f"{max(1, round(seconds))} s"
    if seconds < 90 * 60:
        return f"{round(seconds / 60)} min"
    return f"{seconds / 3600:.1f} h"


class Eta:
    """The run's clock: ``step`` after each optimiser step of the first epoch, ``epoch_done``
    after each epoch. ``started`` is ``time.perf_counter()`` when the run began."""

    def __init__(
        self,
        *,
        started: float,
        epochs: int,
        epochs_done: int,
        steps_per_epoch: int,
        batch_size: int,
        n_val: int,
        n_final: int,
        tta: bool,
    ) -> None:
        self.started, self.epochs, self.epochs_done = started, epochs, epochs_done
        self.steps_per_epoch, self.batch_size, self.n_val = steps_per_epoch, batch_size, n_val
        self.final_views = n_final * ((1 + TTA_VIEWS) if tta else 1)  # images through the net
        self.said = False
        self._timer: float | None = None
        self._epochs: list[tuple[float, float]] = []  # (train, validation) seconds

    def step(self, step_in_epoch: int) -> None:
        """Time steps WARMUP_STEPS..+TIMED_STEPS of the first epoch, then say the estimate."""
        if self.said or step_in_epoch < WARMUP_STEPS:
            return
        if step_in_epoch == WARMUP_STEPS:
            self._timer = time.perf_counter()
        elif step_in_epoch == WARMUP_STEPS + TIMED_STEPS and self._timer is not None:
            per_step = (time.perf_counter() - self._timer) / TIMED_STEPS
            train = per_step * self.steps_per_epoch
            forward = FORWARD_SHARE * per_step / self.batch_size  # seconds per image
            self._say(train, forward * self.n_val, forward, TIMED_STEPS, per_step)

    def epoch_done(self, train_seconds: float, val_seconds: float) -> str:
        """The time left after this epoch (an upper bound under early stopping)."""
        self._epochs.append((train_seconds, val_seconds))
        self.epochs_done += 1
        train = sum(t for t, _ in self._epochs) / len(self._epochs)
        val = sum(v for _, v in self._epochs) / len(self._epochs)
        forward = val / self.n_val if self.n_val else FORWARD_SHARE * train / self._images()
        if not self.said:  # an epoch shorter than the timed steps: say it now, measured
            self._say(train, val, forward, None, None)
        left = (self.epochs - self.epochs_done) * (train + val) + forward * self.final_views
        return f"~{duration(left)} left"

    def _images(self) -> int:
        return max(1, self.steps_per_epoch * self.batch_size)

    def _say(self, train, val, forward, steps, per_step) -> None:
        """One overall estimate, logged once: from now to the bundle written."""
        self.said = True
        elapsed = time.perf_counter() - self.started
        left = (self.epochs - self.epochs_done) * (train + val) + forward * self.final_views
        basis = (
            f"{steps} steps timed, {per_step:.2f} s each"
            if per_step is not None
            else "the first epoch timed"
        )
        log.info(
            "estimate: about %s in all for %d epochs on this machine (%s so far; %s; "
            "the time left is updated after each epoch)",
            duration(elapsed + left), self.epochs, duration(elapsed), basis,
        )  # fmt: skip
