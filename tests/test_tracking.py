"""--track tensorboard / mlflow, read back by the real things: TensorBoard's own event reader
on the files, and an MLflow tracking server started here (SQLite backend, localhost)
through MLflow's client. Runs are tiny (3 classes, 60 pictures, the fast net)."""

from __future__ import annotations

import contextlib
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from helpers import run_cli, write_image_folder
from realserver import free_port, stop_group

from imageclf.data import load_dataset
from imageclf.errors import MissingExtraError, UserInputError
from imageclf.training.loop import resume, train
from imageclf.training.resolve import resolve
from imageclf.training.tracking import RECORD, Tracking

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import (  # noqa: E402
    EventAccumulator,
)

pytestmark = pytest.mark.usefixtures("keep_torch_threads")


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("track") / "ds", per_class=20)


def _cfg(data: Path, out: Path, epochs: int = 3):
    return resolve("fast", data=str(data), out=str(out), epochs=epochs, batch_size=16,
                   seed=0, threads=1, arch_kwargs={"widths": [8, 16, 16]})  # fmt: skip


@pytest.fixture(scope="module", autouse=True)
def server_process(tmp_path_factory):
    """A real ``mlflow server`` (SQLite, artifacts proxied to a folder), started when the
    module starts so that it boots while the first tests run; stopped after."""
    root = tmp_path_factory.mktemp("mlflow")
    port = free_port()
    command = [
        sys.executable, "-m", "mlflow", "server", "--backend-store-uri",
        f"sqlite:///{root / 'mlflow.db'}", "--artifacts-destination", str(root / "artifacts"),
        "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
    ]  # fmt: skip
    log = open(root / "server.log", "w")  # noqa: SIM115 (open while the server runs)
    # Its own process group: the server's workers stop with it.
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=root,
                            start_new_session=True)  # fmt: skip
    try:
        yield proc, f"http://127.0.0.1:{port}", root / "server.log"
    finally:
        with contextlib.suppress(subprocess.TimeoutExpired):  # a slow exit is not the test
            stop_group(proc, signal.SIGTERM, timeout=20)
        log.close()


@pytest.fixture(scope="module")
def mlflow_server(server_process) -> str:
    """The server's URI, once it answers /health."""
    proc, uri, log = server_process
    deadline = time.monotonic() + 120
    while True:
        try:
            with urllib.request.urlopen(f"{uri}/health", timeout=2) as answer:
                if answer.status == 200:
                    return uri
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError("mlflow server did not start:\n" + log.read_text())
        time.sleep(0.3)


@pytest.fixture
def client(mlflow_server, monkeypatch, request):
    """A client of the test server; each test in an experiment of its own."""
    monkeypatch.setenv("MLFLOW_TRACKING_URI", mlflow_server)
    monkeypatch.setenv("MLFLOW_EXPERIMENT_NAME", request.node.name)
    return mlflow.MlflowClient(mlflow_server)


def _events(folder: Path) -> EventAccumulator:
    acc = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    acc.Reload()
    return acc


def _steps(acc: EventAccumulator, tag: str) -> list[int]:
    return [event.step for event in acc.Scalars(tag)]


# ---------------------------------------------------------------- TensorBoard
@pytest.mark.slow
def test_tensorboard_scalars_per_epoch_config_and_images(data, tmp_path):
    run = train(_cfg(data, tmp_path / "run"), progress=False, track="tensorboard")
    acc = _events(tmp_path / "run" / "tensorboard")
    tags = acc.Tags()
    for tag in ("loss/train", "loss/val", "accuracy/train", "accuracy/val", "lr"):
        assert _steps(acc, tag) == [1, 2, 3], tag
    assert [e.value for e in acc.Scalars("loss/train")] == pytest.approx(
        [h["train_loss"] for h in run.history]
    )
    assert acc.Scalars("final/test_accuracy")[0].value == pytest.approx(
        run.metrics["test"]["accuracy"]
    )
    assert {"curves", "confusion_val", "confusion_test"} <= set(tags["images"])
    picture = acc.Images("confusion_test")[0]
    assert picture.step == 3 and picture.encoded_image_string.startswith(b"\x89PNG")
    config = acc.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()
    assert '"recipe": "fast"' in config and load_dataset(str(data)).fingerprint in config
    assert acc.PluginTagToContent("hparams")  # the HParams tab's three summaries
    assert json.loads((tmp_path / "run" / RECORD).read_text()) == {"names": ["tensorboard"]}


def test_an_unreachable_server_is_one_line(data, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_TIMEOUT", "5")
    code, _, err = run_cli(
        ["train", "--data", str(data), "--epochs", "1", "--out", str(tmp_path / "run"),
         "--track", "mlflow"], capsys,
    )  # fmt: skip
    assert code == 2
    assert err.startswith("imageclf: error: --track mlflow: cannot open a run at http://127.0.0.1:")
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run" / RECORD).exists()


# ---------------------------------------------------------------- without the extras
@pytest.mark.parametrize(
    ("name", "module"), [("tensorboard", "torch.utils.tensorboard"), ("mlflow", "mlflow")]
)
def test_a_missing_extra_is_the_one_message(data, tmp_path, monkeypatch, name, module):
    monkeypatch.setitem(sys.modules, module, None)  # import fails as if not installed
    with pytest.raises(MissingExtraError, match=rf"--track {name} needs the optional {name} "):
        train(_cfg(data, tmp_path / "run", epochs=1), progress=False, track=name)


def test_unknown_trackers_are_refused():
    with pytest.raises(UserInputError, match="unknown tracker 'wandb'; choose tensorboard"):
        Tracking.of(["tensorboard", "wandb"])
    assert Tracking.of(("mlflow", "mlflow")).names == ("mlflow",)


def test_resume_keeps_the_runs_own_trackers(tmp_path, capsys):
    code, _, err = run_cli(["train", "--resume", str(tmp_path), "--track", "mlflow"], capsys)
    assert code == 2 and "--resume keeps the run's own trackers" in err


def test_a_study_records_its_storage_without_the_password():
    from imageclf.training.tracking import _no_password

    assert _no_password("postgresql://bob:s3cret@db:5432/x") == "postgresql://bob:***@db:5432/x"
    assert _no_password("sqlite:///study.db") == "sqlite:///study.db"


# ---------------------------------------------------------------- MLflow
@pytest.mark.slow
def test_resume_continues_the_same_runs_without_repeating_a_step(data, tmp_path, client):
    """Ctrl-C after epoch 2 of 4, then resume: one MLflow run, one TensorBoard step each."""
    out = tmp_path / "run"

    def interrupt(record: dict) -> None:
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_cfg(data, out, epochs=4), progress=False, on_epoch_end=interrupt,
              track=["tensorboard", "mlflow", "mlflow"])  # fmt: skip
    record = json.loads((out / RECORD).read_text())
    assert record["names"] == ["tensorboard", "mlflow"]
    run_id = record["mlflow"]["run_id"]
    assert client.get_run(run_id).info.status == "KILLED"

    finished = resume(out, progress=False)
    assert json.loads((out / RECORD).read_text())["mlflow"]["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED"
    assert len(client.search_runs([run.info.experiment_id])) == 1
    for key in ("train_loss", "val_acc", "lr"):
        history = client.get_metric_history(run_id, key)
        assert sorted(m.step for m in history) == [1, 2, 3, 4], key
    losses = {m.step: m.value for m in client.get_metric_history(run_id, "train_loss")}
    assert [losses[e] for e in (1, 2, 3, 4)] == pytest.approx(
        [h["train_loss"] for h in finished.history]
    )
    recorded = json.loads((out / "config.json").read_text())["config"]
    assert run.data.params["lr"] == str(recorded["lr"])
    assert run.data.params["augment.flip"] and run.data.params["epochs"] == "4"
    assert run.data.tags["imageclf.data.fingerprint"] == load_dataset(str(data)).fingerprint
    assert run.data.tags["imageclf.recipe"] == "fast"
    assert run.data.tags["imageclf.kept_epoch"] == str(finished.metrics["kept_epoch"])
    artifacts = {a.path for a in client.list_artifacts(run_id)}
    assert {"model.safetensors", "metrics.json", "config.json", "curves.png", "plots"} <= artifacts
    plots = {a.path for a in client.list_artifacts(run_id, "plots")}
    assert plots == {"plots/confusion_val.png", "plots/confusion_test.png"}
    metrics_copy = Path(client.download_artifacts(run_id, "metrics.json", str(tmp_path)))
    assert json.loads(metrics_copy.read_text()) == finished.metrics

    acc = _events(out / "tensorboard")
    for tag in ("loss/train", "accuracy/val"):
        assert sorted(_steps(acc, tag)) == [1, 2, 3, 4], tag


@pytest.mark.slow
def test_tune_has_one_parent_run_and_a_child_per_trial(data, tmp_path, client, capsys):
    pytest.importorskip("optuna")
    space = tmp_path / "space.json"
    lr = {"low": 1e-3, "high": 1e-2, "log": True}
    space.write_text(
        json.dumps({"lr": lr, "batch_size": 16, "widths": [8, 16, 16], "translate": 0})
    )
    out = tmp_path / "tune"
    code, stdout, err = run_cli(
        ["-q", "tune", "--data", str(data), "--trials", "2", "--epochs", "2", "--space",
         str(space), "--threads", "1", "--out", str(out), "--track", "mlflow", "--track",
         "tensorboard"], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "View run" not in stdout  # MLflow's own stdout lines become log lines
    parent_id = json.loads((out / RECORD).read_text())["mlflow"]["run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and parent.data.tags["imageclf.kind"] == "study"
    assert parent.data.params["trials"] == "2"
    assert {"best.json", "trials.csv"} <= {a.path for a in client.list_artifacts(parent_id)}
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["trial-0000", "trial-0001"]
    for child in children:
        assert [m.step for m in client.get_metric_history(child.info.run_id, "val_acc")] == [1, 2]
    for trial in ("0000", "0001"):  # TensorBoard: one folder per trial
        assert _steps(_events(out / "trials" / trial / "tensorboard"), "accuracy/val") == [1, 2]

    # A resumed study goes on under the same parent run: one more child, none repeated.
    code, _, err = run_cli(["-q", "tune", "--resume", str(out), "--trials", "3"], capsys)
    assert code == 0, err
    assert json.loads((out / RECORD).read_text())["mlflow"]["run_id"] == parent_id
    children = client.search_runs(
        [parent.info.experiment_id], f"tags.mlflow.parentRunId = '{parent_id}'"
    )
    assert sorted(c.info.run_name for c in children) == ["trial-0000", "trial-0001", "trial-0002"]
    assert len(client.search_runs([parent.info.experiment_id])) == 4  # no second parent
    assert client.get_run(parent_id).info.status == "FINISHED"
    assert _steps(_events(out / "trials" / "0002" / "tensorboard"), "accuracy/val") == [1, 2]
