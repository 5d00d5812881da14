"""The trackers behind ``--track``: the protocol (no-op defaults), TensorBoard, MLflow.

Each is an optional extra, imported only when a run asks for it (one MissingExtraError
line otherwise). ``tracking.py`` decides what they are told and when; these only say
it each in their own format. Step numbers are epochs (0: a transfer run's head fit).
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import UserInputError, import_extra
from ..version import __version__

log = logging.getLogger("imageclf.train")  # the training logger: the tuner quiets it

EPOCH_FIELDS = ("train_loss", "train_acc", "val_loss", "val_acc", "val_map", "lr", "seconds")
# TensorBoard groups tags by their first part: train and val side by side in one card.
TB_TAGS = {
    "train_loss": "loss/train",
    "val_loss": "loss/val",
    "train_acc": "accuracy/train",
    "val_acc": "accuracy/val",
    "val_map": "map/val",  # multi-label runs
    "lr": "lr",
    "seconds": "seconds_per_epoch",
}
MLFLOW_BATCH = 100  # params or tags per log_batch call: the tracking server's limit
MLFLOW_PARAM_CHARS = 6000  # the longest parameter value a tracking server stores


def flat_params(config: dict, prefix: str = "") -> dict[str, str | int | float | bool]:
    """``augment.flip`` for nested settings; lists as JSON, None as "None"."""
    out: dict[str, str | int | float | bool] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict) and value and key != "arch_kwargs":
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, bool | int | float | str):
            out[name] = value
        else:
            out[name] = "None" if value is None else json.dumps(value)
    return out


def _tags(data_record: dict, config: dict, run_dir: Path) -> dict[str, str]:
    return {
        "imageclf.data.fingerprint": str(data_record.get("fingerprint")),
        "imageclf.data.source": str(data_record.get("source")),
        "imageclf.recipe": str(config.get("recipe")),
        "imageclf.architecture": str(config.get("architecture", "")),
        "imageclf.run_dir": str(Path(run_dir).resolve()),
        "imageclf.version": __version__,
    }


# ---------------------------------------------------------------- the protocol
class Tracker:
    """The protocol, with no-op defaults: a run that tracks nothing calls these freely."""

    def epoch(self, record: dict) -> None:
        """One history record (its ``epoch`` is the step)."""

    def finish(self, end: RunEnd) -> None:
        """The end of the run: final figures, images, files."""

    def close(self, status: str) -> None:
        """``FINISHED``, ``FAILED`` or ``KILLED`` (MLflow's words)."""

    def record(self) -> dict:
        """What ``tracking.json`` keeps for a resume (an MLflow run id)."""
        return {}


@dataclass
class RunEnd:
    """What a finished run hands its trackers, computed once for all of them."""

    run_dir: Path
    step: int  # the last epoch: the final figures' step
    metrics: dict  # metrics.json
    config: dict  # the TrainConfig as a dict
    images: dict[str, bytes]  # name -> PNG: the curves, a confusion matrix per split
    files: list[Path]  # the bundle, metrics.json...: MLflow artifacts

    def final_scalars(self) -> dict[str, float]:
        """``final/val_accuracy``, ``final/test_loss``...: each split's figures in metrics.json."""
        out = {}
        for split in ("val", "test", "val_tta", "test_tta"):
            for key in ("accuracy", "loss", "map"):  # map: multi-label runs
                value = self.metrics.get(split, {}).get(key)
                if isinstance(value, int | float):
                    out[f"final/{split}_{key}"] = float(value)
        return out


# ---------------------------------------------------------------- TensorBoard
class TensorBoardTracker(Tracker):
    """Event files in ``<run>/tensorboard``: scalars per epoch, the config as text, at the
    end the final figures, the curves and confusion matrices as images, and hparams."""

    def __init__(
        self, run_dir: Path, config: dict, data_record: dict, resumed_epoch: int | None
    ) -> None:
        tensorboard = import_extra("torch.utils.tensorboard", "tensorboard", "--track tensorboard")
        self.config = config
        # Resumed: events at or after the next epoch (written after the checkpoint the run
        # resumes from) are hidden, so every step appears once.
        purge = None if resumed_epoch is None else resumed_epoch + 1
        self.writer = tensorboard.SummaryWriter(
            str(Path(run_dir) / "tensorboard"), purge_step=purge
        )
        if resumed_epoch is None:
            text = json.dumps({"config": config, "data": data_record}, indent=2)
            self.writer.add_text("config", "```\n" + text + "\n```", 0)
            self.writer.flush()

    def epoch(self, record: dict) -> None:
        for field, tag in TB_TAGS.items():
            if record.get(field) is not None:
                self.writer.add_scalar(tag, record[field], record["epoch"])
        self.writer.flush()  # a killed run keeps every epoch it checkpointed

    def finish(self, end: RunEnd) -> None:
        from PIL import Image
        from torch.utils.tensorboard.summary import hparams

        scalars = end.final_scalars()
        for tag, value in scalars.items():
            self.writer.add_scalar(tag, value, end.step)
        for name, png in end.images.items():
            picture = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
            self.writer.add_image(name, picture, end.step, dataformats="HWC")
        # The HParams tab compares runs (a study's trials) by their settings and figures.
        for summary in hparams(flat_params(self.config), scalars):
            self.writer.file_writer.add_summary(summary, end.step)
        self.writer.flush()

    def close(self, status: str) -> None:
        self.writer.close()


# ---------------------------------------------------------------- MLflow
class MlflowTracker(Tracker):
    """One MLflow run: params, per-epoch metrics (step = epoch), tags with the data's
    fingerprint and the recipe, and at the end the bundle and metrics.json as artifacts.
    The tracking server is the one ``MLFLOW_TRACKING_URI`` names, read by MLflow itself."""

    def __init__(self, client, run_id: str) -> None:
        self.client, self.run_id = client, run_id

    @classmethod
    def open(
        cls,
        run_dir: Path,
        config: dict,
        data_record: dict,
        *,
        parent: str | None = None,
        was: dict | None = None,
        study: bool = False,
    ) -> MlflowTracker:
        """A new run (a child of ``parent`` for a tune trial), or the run ``was`` records
        (a resumed run) marked running again."""
        mlflow = import_extra("mlflow", "mlflow", "--track mlflow")
        client = mlflow.MlflowClient()
        uri = mlflow.get_tracking_uri()
        run_id = None if was is None else was.get("run_id")
        if was is not None and not isinstance(run_id, str):
            raise UserInputError(f"{run_dir}/tracking.json names no MLflow run to continue")
        try:
            if run_id is not None:
                client.get_run(run_id)
                client.update_run(run_id, status="RUNNING")
                return cls(client, run_id)
            tags = _tags(data_record, config, run_dir)
            tags["imageclf.kind"] = "study" if study else "training run"
            if parent is not None:
                tags["mlflow.parentRunId"] = parent
            name = f"trial-{Path(run_dir).name}" if parent else Path(run_dir).name
            run = client.create_run(_experiment_id(client), tags=tags, run_name=name)
            tracker = cls(client, run.info.run_id)
            tracker._params(flat_params(config))
            return tracker
        except Exception as exc:  # the server's or the client's own words, on one line
            why = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            where = f"run {run_id} at" if run_id is not None else "a run at"
            raise UserInputError(f"--track mlflow: cannot open {where} {uri}: {why}") from None

    def record(self) -> dict:
        return {"run_id": self.run_id}

    def _params(self, params: dict) -> None:
        from mlflow.entities import Param

        items = [Param(k, str(v)[:MLFLOW_PARAM_CHARS]) for k, v in params.items()]
        for start in range(0, len(items), MLFLOW_BATCH):
            self.client.log_batch(self.run_id, params=items[start : start + MLFLOW_BATCH])

    def _metrics(self, values: dict[str, float], step: int) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, step) for k, v in values.items()]
        if metrics:
            self.client.log_batch(self.run_id, metrics=metrics)

    def epoch(self, record: dict) -> None:
        values = {k: record[k] for k in EPOCH_FIELDS if record.get(k) is not None}
        self._metrics(values, record["epoch"])

    def finish(self, end: RunEnd) -> None:
        self._metrics(end.final_scalars(), end.step)
        if "kept_epoch" in end.metrics:
            self.client.set_tag(self.run_id, "imageclf.kept_epoch", str(end.metrics["kept_epoch"]))
        for path in end.files:
            self.client.log_artifact(self.run_id, str(path))
        with tempfile.TemporaryDirectory() as folder:
            for name, png in end.images.items():
                if name != "curves":  # curves.png is among the files already
                    (Path(folder) / f"{name}.png").write_bytes(png)
            self.client.log_artifacts(self.run_id, folder, "plots")

    def study_files(self, run_dir: Path) -> None:
        """A study's own results: best.json, trials.csv, tune.json and its plots."""
        for path in sorted(Path(run_dir).iterdir()):
            if path.is_file() and path.suffix in (".json", ".csv", ".png"):
                self.client.log_artifact(self.run_id, str(path))

    def close(self, status: str) -> None:
        # MLflow writes the run's address to stdout itself: a log line here instead, which
        # --quiet, the tuner and --log-format json treat like every other.
        with contextlib.redirect_stdout(io.StringIO()) as said:
            self.client.set_terminated(self.run_id, status)
        for line in said.getvalue().splitlines():
            log.info("mlflow: %s", line.lstrip("\N{RUNNER}\N{TEST TUBE} "))


def _experiment_id(client) -> str:
    """MLflow's own variables choose the experiment (MLFLOW_EXPERIMENT_ID or _NAME);
    otherwise one named "imageclf", created on first use."""
    from mlflow.environment_variables import MLFLOW_EXPERIMENT_ID, MLFLOW_EXPERIMENT_NAME

    if MLFLOW_EXPERIMENT_ID.get():
        return MLFLOW_EXPERIMENT_ID.get()
    name = MLFLOW_EXPERIMENT_NAME.get() or "imageclf"
    found = client.get_experiment_by_name(name)
    if found is not None:
        return found.experiment_id
    try:
        return client.create_experiment(name)
    except Exception:  # another worker created it first
        found = client.get_experiment_by_name(name)
        if found is None:
            raise
        return found.experiment_id
