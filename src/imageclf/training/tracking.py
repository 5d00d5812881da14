"""Experiment tracking (``--track tensorboard`` / ``--track mlflow``): what a run reports.

A run reports at two points only: after each epoch's checkpoint (every history record
not reported yet: a resumed run starts after its checkpoint's epoch, so no step is ever
written twice) and at the end (the final figures, confusion matrices and curves, the
bundle). What a run tracks is recorded in its folder (``tracking.json``, with the MLflow
run id), so ``resume`` reports to the same MLflow run and the same event files.
A tracker that fails mid-run is dropped with a warning: a lost dashboard must never
lose a training run. The protocol and the trackers themselves (optional extras,
imported lazily) are in ``trackers.py``.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np
import torch

from ..data import Dataset
from ..errors import UserInputError
from ..fileio import write_text_atomic
from . import runs
from .trackers import MlflowTracker, RunEnd, TensorBoardTracker, Tracker

log = logging.getLogger("imageclf.train")

TRACKERS = ("tensorboard", "mlflow")
RECORD = "tracking.json"  # in the run folder: what it tracks, and where (MLflow run id)


@dataclass(frozen=True)
class Tracking:
    """What a run reports to: tracker names, and the MLflow run a tune trial nests under."""

    names: tuple[str, ...] = ()
    mlflow_parent: str | None = None

    @classmethod
    def of(cls, track: Tracking | str | Sequence[str] | None) -> Tracking:
        """``None``, a name, names (repeats ignored) or a ``Tracking``; unknown names refused."""
        if isinstance(track, Tracking):
            return track
        names = [track] if isinstance(track, str) else list(track or ())
        for name in names:
            if name not in TRACKERS:
                raise UserInputError(f"unknown tracker {name!r}; choose {', '.join(TRACKERS)}")
        return cls(tuple(dict.fromkeys(names)))


class Trackers(Tracker):
    """Several trackers as one; reports only epochs after ``reported`` (no repeated step)."""

    def __init__(self, trackers: dict[str, Tracker] | None = None, reported: int = -1) -> None:
        self.trackers = trackers if trackers is not None else {}
        self.reported = reported  # the last epoch reported; -1: none yet

    def history(self, history: list[dict]) -> None:
        """Every record after the last one reported (a transfer run's head fit included)."""
        for record in history:
            if record["epoch"] > self.reported:
                self._each("epoch", record)
                self.reported = record["epoch"]

    def epoch(self, record: dict) -> None:
        self.history([record])

    def finish(self, end: RunEnd) -> None:
        self._each("finish", end)

    def end(
        self, run_dir: Path, history: list[dict], metrics: dict, config: dict,
        classes: Sequence[str], scored: dict[str, tuple[torch.Tensor, torch.Tensor]],
    ) -> None:  # fmt: skip
        """The end of a run: any epochs not reported (a head fit alone), then the final
        figures, images and files, drawn only when something tracks them."""
        self.history(history)
        if not self.trackers:
            return
        step = history[-1]["epoch"] if history else 0
        try:
            end = run_end(run_dir, step, metrics, config, classes, scored)
        except Exception as exc:  # a plotting failure must not lose a finished run
            log.warning("tracking: could not draw the run's images (%s)", exc)
            end = RunEnd(run_dir, step, metrics, config, {}, [])
        self.finish(end)

    def close(self, status: str) -> None:
        self._each("close", status)

    def record(self) -> dict:
        return {name: t.record() for name, t in self.trackers.items() if t.record()}

    def _each(self, method: str, *args) -> None:
        for name, tracker in list(self.trackers.items()):
            try:
                getattr(tracker, method)(*args)
            except Exception as exc:  # a dashboard's failure must not end the training
                log.warning("tracking: %s failed (%s); the run goes on without it", name, exc)
                del self.trackers[name]


# ---------------------------------------------------------------- opening and closing
@contextlib.contextmanager
def opened(
    track: Tracking | str | Sequence[str] | None,
    run_dir: Path,
    config: dict,
    dataset: Dataset,
    resumed_epoch: int | None,
    is_main: bool = True,
) -> Iterator[Trackers]:
    """The run's trackers for the ``with`` block, closed with its outcome.

    A fresh run tracks ``track``; a resumed one (``resumed_epoch``: its checkpoint's
    epoch) tracks what its ``tracking.json`` says, continuing the same MLflow run.
    Only the main process (rank 0 under torchrun) tracks.
    """
    trackers = Trackers({}, reported=-1 if resumed_epoch is None else resumed_epoch)
    if is_main:
        data_record = runs.data_record(dataset)
        track = _what_to_track(Tracking.of(track), run_dir, resumed_epoch is not None)
        for name in track.names:
            try:
                trackers.trackers[name] = _open_one(name, track, run_dir, config, data_record,
                                                    resumed_epoch)  # fmt: skip
            except BaseException:
                trackers.close("FAILED")  # the ones already open
                raise
        if track.names:
            write_record(run_dir, {"names": list(track.names), **trackers.record()})
    with closing(trackers):
        yield trackers


@contextlib.contextmanager
def closing(tracker: Tracker) -> Iterator[None]:
    """Close ``tracker`` with the block's outcome: FINISHED, KILLED (Ctrl-C) or FAILED."""
    try:
        yield
    except Exception:
        tracker.close("FAILED")
        raise
    except BaseException:
        tracker.close("KILLED")
        raise
    tracker.close("FINISHED")


def _what_to_track(track: Tracking, run_dir: Path, resumed: bool) -> Tracking:
    """A resumed run: what its record says. A fresh run in an old run folder forgets the
    old run's record (a later resume must not report to that run's MLflow run)."""
    previous = read_record(run_dir) if resumed else None
    if previous is not None:
        return replace(track, names=tuple(previous.get("names", [])))
    (Path(run_dir) / RECORD).unlink(missing_ok=True)
    return track


def _open_one(
    name: str, track: Tracking, run_dir: Path, config: dict, data_record: dict,
    resumed_epoch: int | None,
) -> Tracker:  # fmt: skip
    Path(run_dir).mkdir(parents=True, exist_ok=True)
    if name == "tensorboard":
        return TensorBoardTracker(run_dir, config, data_record, resumed_epoch)
    was = (read_record(run_dir) or {}).get("mlflow") if resumed_epoch is not None else None
    return MlflowTracker.open(run_dir, config, data_record, parent=track.mlflow_parent, was=was)


def read_record(run_dir: Path) -> dict | None:
    """``tracking.json`` of a run (or tune) folder, or None when it tracked nothing."""
    path = Path(run_dir) / RECORD
    if not path.is_file():
        return None
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise UserInputError(f"cannot read {path}: {exc}") from None
    if not isinstance(record, dict) or not isinstance(record.get("names", []), list):
        raise UserInputError(f"{path} is not a tracking record written by imageclf")
    return record


def write_record(run_dir: Path, record: dict) -> None:
    write_text_atomic(Path(run_dir) / RECORD, json.dumps(record, indent=2))


# ---------------------------------------------------------------- the end of a run
def run_end(
    run_dir: Path,
    step: int,
    metrics: dict,
    config: dict,
    classes: Sequence[str],
    scored: dict[str, tuple[torch.Tensor, torch.Tensor]],
) -> RunEnd:
    """The images and files every tracker reports at the end, drawn once."""
    from ..plots import confusion_heatmap, to_png_bytes

    images: dict[str, bytes] = {}
    curves = run_dir / "curves.png"
    if curves.is_file():
        images["curves"] = curves.read_bytes()
    for split, (logits, labels) in scored.items():
        if logits.ndim != 2 or labels.ndim != 1:  # multi-label runs: no confusion matrix
            continue
        n = len(classes)
        pairs = labels.long().numpy() * n + logits.argmax(1).numpy()
        matrix = np.bincount(pairs, minlength=n * n).reshape(n, n)
        title = f"{split}: {run_dir.name}"
        fig = confusion_heatmap(matrix, classes, normalized=False, title=title)
        images[f"confusion_{split}"] = to_png_bytes(fig)
    names = ("model.safetensors", "metrics.json", "config.json", "history.csv", "curves.png")
    files = [run_dir / n for n in names if (run_dir / n).is_file()]
    return RunEnd(run_dir, step, metrics, config, images, files)


# ---------------------------------------------------------------- tune: the parent run
@contextlib.contextmanager
def parent_run(
    track: Tracking | str | Sequence[str] | None,
    run_dir: Path,
    settings: dict,
    data_record: dict,
    resumed: bool,
) -> Iterator[Tracking]:
    """``imageclf tune``: one MLflow parent run for the study (each trial a child of it);
    yields what each trial tracks. A resumed study continues its parent run."""
    track = Tracking.of(track)
    previous = read_record(run_dir) if resumed else None
    if previous is not None:
        track = Tracking(tuple(previous.get("names", [])))
    parent = None
    if "mlflow" in track.names:
        was = (previous or {}).get("mlflow")
        params = {**settings, "storage": _no_password(settings.get("storage"))}
        parent = MlflowTracker.open(run_dir, params, data_record, was=was, study=True)
        track = replace(track, mlflow_parent=parent.run_id)
    if track.names:
        write_record(run_dir, {"names": list(track.names), **({"mlflow": parent.record()}
                                                              if parent else {})})  # fmt: skip
    with closing(parent or Tracker()):
        yield track
        if parent is not None:
            parent.study_files(run_dir)


def _no_password(url: str | None) -> str | None:
    """A storage URL as a parameter others can read: its password replaced by ***."""
    if not url or "@" not in url:
        return url
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return urlunsplit(parts._replace(netloc=netloc))
