"""imageclf tune: tiny real studies on a synthetic image folder (3 learnable classes).

Trials are steered with Optuna's own ``enqueue_trial`` so that pruning is
deterministic: two good learning rates finish, then a hopeless one (1e-7) falls
below their median at epoch 2 and is pruned.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import write_image_folder

import imageclf
from imageclf.cli import main
from imageclf.errors import UserInputError

optuna = pytest.importorskip("optuna")
pytestmark = pytest.mark.usefixtures("keep_torch_threads")  # trials run with --threads 1

from imageclf.tuning import study as tuning_study  # noqa: E402 (needs the optuna skip above to be meaningful)
from imageclf.tuning.tuner import tune  # noqa: E402

# Small and fast: batch 16 on 108 training images is 7 steps per epoch.
SPACE = {
    "lr": {"low": 1e-7, "high": 1e4, "log": True},
    "batch_size": 16,
    "widths": [8, 16, 16],
    "translate": 0,
}
GOOD, ALSO_GOOD, HOPELESS, DIVERGES = 3e-3, 5e-3, 1e-7, 1e4
RECIPES_FAST_LR = imageclf.RECIPES["fast"]["lr"]


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tune") / "ds", per_class=40)


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _queue(storage: str, study: str, *lrs: float) -> None:
    s = optuna.create_study(storage=storage, study_name=study, direction="maximize")
    for lr in lrs:
        s.enqueue_trial({"lr": lr})


def _history(run_dir: Path, trial: int) -> list[dict]:
    return json.loads((run_dir / "trials" / f"{trial:04d}" / "history.json").read_text())


def test_study_prunes_resumes_and_writes_a_recipe(data, space_file, tmp_path, capsys, monkeypatch):
    # Trials in bf16 on every CPU, as on one with native bf16: there lr 1e4 overflows
    # within 3 epochs, while fp32 (an AVX2 CPU's "auto") can absorb it into BatchNorm.
    monkeypatch.setattr("imageclf.device.cpu_has_fast_bf16", lambda: True)
    out = tmp_path / "study"
    out.mkdir()
    _queue(f"sqlite:///{out / 'study.db'}", "tune-fast", GOOD, ALSO_GOOD, HOPELESS, DIVERGES)
    common = ["--data", str(data), "--epochs", "3", "--threads", "1", "--space", str(space_file)]
    code, stdout, err = run(["tune", *common, "--trials", "2", "--out", str(out)], capsys)
    assert code == 0, err
    assert "trial  state" in stdout and "best recipe:" in stdout

    # Resume: only the missing trials run (2 more), and the hopeless one is pruned.
    code, stdout, err = run(["tune", "--resume", str(out), "--trials", "4"], capsys)
    assert code == 0, err
    assert "2 of 4 trials done" in stdout
    rows = {int(line.split()[0]): line.split()[1] for line in stdout.splitlines()
            if line.strip()[:1].isdigit()}  # fmt: skip
    assert rows == {2: "pruned", 3: "diverged"}
    assert len(_history(out, 2)) == 2  # pruned after epoch 2 of 3
    study = optuna.load_study(study_name="tune-fast", storage=f"sqlite:///{out / 'study.db'}")
    states = [t.state.name for t in study.get_trials()]
    assert states == ["COMPLETE", "COMPLETE", "PRUNED", "PRUNED"]

    # Nothing touched the test split: no trial reports a test metric.
    for trial_dir in (out / "trials").iterdir():
        metrics = trial_dir / "metrics.json"
        if metrics.exists():
            assert not any(k.startswith("test") for k in json.loads(metrics.read_text()))

    # The best recipe holds the winning settings and trains as a recipe file.
    best = json.loads((out / "best.json").read_text())
    winner = study.best_trial
    assert best["base"] == "fast" and best["tuned"]["trial"] == winner.number
    assert best["config"]["lr"] == winner.params["lr"] and best["config"]["batch_size"] == 16
    assert best["config"]["arch_kwargs"] == {"widths": [8, 16, 16]}
    assert "tta" not in best["config"]  # trials skip TTA; the recipe keeps the base's
    assert (out / "history.png").stat().st_size > 0
    assert (out / "trials.csv").read_text().count("\n") == 5
    argv = ["-q", "train", "--recipe", str(out / "best.json"), "--data", str(data),
            "--epochs", "1", "--threads", "1", "--out", str(tmp_path / "final")]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    config = json.loads((tmp_path / "final" / "config.json").read_text())["config"]
    assert (config["recipe"], config["lr"], config["tta"]) == (
        "fast-tuned",
        winner.params["lr"],
        True,
    )

    # A finished study has nothing left to run.
    code, stdout, _ = run(["tune", "--resume", str(out), "--trials", "4"], capsys)
    assert code == 0 and "4 of 4 trials done" in stdout and not (out / "trials" / "0004").exists()


def test_interrupted_trial_runs_again_on_resume(data, tmp_path, monkeypatch):
    train_module = importlib.import_module("imageclf.tuning.tuner")  # where trials find train()
    real_train, calls = train_module.train, []

    def train_then_ctrl_c(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real_train(*args, **kwargs)

    monkeypatch.setattr(train_module, "train", train_then_ctrl_c)
    options = dict(data=data, epochs=2, space=SPACE, threads=1, progress=False)
    with pytest.raises(KeyboardInterrupt):
        tune("fast", trials=2, out=tmp_path / "run", **options)
    result = tune(resume=tmp_path / "run")
    states = [t["state"] for t in result.trials]
    assert states == ["complete", "fail", "complete"]
    assert result.trials[2]["params"] == result.trials[1]["params"]  # the same settings again
    assert result.best_recipe is not None and len(calls) == 3
    # A fresh study first measures the recipe's own settings (fast's lr is inside SPACE).
    assert result.trials[0]["baseline"] and result.trials[0]["params"] == {"lr": RECIPES_FAST_LR}
    assert result.baseline_value == result.trials[0]["val_acc"]


def test_two_processes_share_one_sqlite_study(data, space_file, tmp_path):
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    argv = [sys.executable, "-m", "imageclf", "-q", "tune", "--data", str(data), "--space",
            str(space_file), "--epochs", "2", "--trials", "4", "--threads", "1", "--pruner",
            "none", "--storage", storage, "--study", "shared"]  # fmt: skip
    workers = [
        subprocess.Popen(
            [*argv, "--out", str(tmp_path / f"worker{i}")],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(2)
    ]
    outputs = [w.communicate(timeout=300)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs
    study = optuna.load_study(study_name="shared", storage=storage)
    listing = [(t.number, t.state.name, t.user_attrs) for t in study.get_trials()]
    # A sampled learning rate can diverge on this tiny data: that trial is pruned, not
    # failed, and counts as finished like a completed one.
    finished = {t.number: t for t in study.get_trials() if t.state.name in ("COMPLETE", "PRUNED")}
    assert all(t.state.name == "COMPLETE" or "diverged" in t.user_attrs for t in finished.values())
    numbers = sorted(finished)
    assert 4 <= len(numbers) <= 5, listing  # each worker stops once 4 trials have finished
    ran = sorted(int(p.name) for i in range(2) for p in (tmp_path / f"worker{i}/trials").iterdir())
    assert ran == numbers, (listing, outputs)  # every trial ran in exactly one worker
    drawn = [t.params["lr"] for t in finished.values() if not t.user_attrs.get("baseline")]
    assert len(set(drawn)) == len(drawn), listing  # each worker draws settings of its own
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.get_trials()) == 1, listing
    for i in range(2):  # both see the whole study in their results
        best = json.loads((tmp_path / f"worker{i}" / "best.json").read_text())
        assert best["tuned"]["trial"] == study.best_trial.number

    # A worker with another space cannot join the same study.
    with pytest.raises(UserInputError, match="created with a different space"):
        tune("fast", data=data, space={**SPACE, "batch_size": 32}, storage=storage,
             study="shared", epochs=2, out=tmp_path / "intruder", progress=False)  # fmt: skip


# Takes queued trials as fast as it can through imageclf's storage; prints their numbers.
_TAKE_QUEUED = """
import json, sys, optuna
from imageclf.tuning.study import open_study
optuna.logging.set_verbosity(optuna.logging.ERROR)
study, _ = open_study(optuna, sys.argv[1], "queue", optuna.pruners.NopPruner())
taken = []
while True:
    trial = study.ask()
    if "queued" not in trial.user_attrs:  # the queue is empty: a fresh trial
        study.tell(trial, state=optuna.trial.TrialState.FAIL)
        break
    taken.append(trial.number)
    study.tell(trial, 1.0)
print(json.dumps(taken))
"""


def test_two_workers_never_take_the_same_queued_trial(tmp_path):
    """SQLite ignores optuna's row lock: without imageclf's IMMEDIATE transactions both
    workers read a queued trial as waiting, both run it, and the second to finish crashes
    ("Cannot tell a COMPLETE trial"); seen in CI with the baseline trial."""
    storage = f"sqlite:///{tmp_path / 'queue.db'}"
    study = optuna.create_study(storage=storage, study_name="queue", direction="maximize")
    for i in range(60):
        study.enqueue_trial({"x": i}, user_attrs={"queued": True})
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    workers = [
        subprocess.Popen(
            [sys.executable, "-c", _TAKE_QUEUED, storage],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    results = [w.communicate(timeout=120) for w in workers]
    assert [w.returncode for w in workers] == [0, 0], [err[-600:] for _, err in results]
    first, second = (json.loads(out) for out, _ in results)
    assert not set(first) & set(second)
    assert sorted(first + second) == list(range(60))


@pytest.mark.parametrize(
    ("url", "says"),
    [
        ("sqlite:::", "Could not parse"),
        ("bogus://x", "bogus"),
        ("sqlite:////nonexistent-imageclf/x.db", "folder /nonexistent-imageclf does not exist"),
    ],
)
def test_a_storage_that_cannot_work_is_refused_without_retrying(url, says, monkeypatch):
    waits: list[float] = []
    monkeypatch.setattr(tuning_study.time, "sleep", waits.append)
    with pytest.raises(UserInputError, match=f"cannot open the study storage .*{says}"):
        tuning_study.open_study(optuna, url, "s", optuna.pruners.NopPruner())
    assert waits == []  # another try cannot succeed: the error comes at once


def test_a_busy_new_database_is_retried_and_a_memory_one_works(monkeypatch):
    """Two workers creating one new database race on its tables: that is retried."""
    from sqlalchemy.exc import OperationalError

    waits: list[float] = []
    monkeypatch.setattr(tuning_study.time, "sleep", waits.append)
    real = optuna.create_study
    failures = iter([OperationalError("CREATE TABLE", {}, Exception("already exists"))] * 2)

    def racing_create(**kwargs):
        for failure in failures:
            raise failure
        return real(**kwargs)

    monkeypatch.setattr(optuna, "create_study", racing_create)
    for url in ("sqlite://", "sqlite:///:memory:"):  # one process: no lock to take
        study, created = tuning_study.open_study(optuna, url, "s", optuna.pruners.NopPruner())
        assert created
        study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
        assert len(study.trials) == 2
    assert waits == [0.5, 1.0]


def test_one_worker_creates_the_study_and_a_joiner_waits_for_its_record(tmp_path, monkeypatch):
    """Workers starting together: exactly one creates the study and writes its record; one
    that joins before the record is written waits for it, then is checked against it."""
    import threading

    storage = f"sqlite:///{tmp_path / 's.db'}"
    pruner = optuna.pruners.NopPruner()
    creator, created = tuning_study.open_study(optuna, storage, "s", pruner)
    joiner, joined_created = tuning_study.open_study(optuna, storage, "s", pruner)
    assert (created, joined_created) == (True, False)

    record = {"base": "fast", "config": {}, "space": {"lr": 1}, "epochs_cap": 2,
              "data": {"fingerprint": "abc"}, "split": "holdout"}  # fmt: skip
    writer = threading.Timer(0.3, tuning_study.check_same_study, (creator, record, True))
    writer.start()
    with pytest.raises(UserInputError, match="created with a different space"):
        tuning_study.check_same_study(joiner, {**record, "space": {"lr": 2}}, False)
    writer.join()
    assert tuning_study.check_same_study(joiner, record, False) is False  # same: joins

    # A study made with optuna itself (trials, no record): adopted at once, no waiting.
    outside = optuna.create_study(storage=storage, study_name="outside")
    outside.enqueue_trial({"lr": 1e-3})
    waits: list[float] = []
    monkeypatch.setattr(tuning_study.time, "sleep", waits.append)
    study, created = tuning_study.open_study(optuna, storage, "outside", pruner)
    assert tuning_study.check_same_study(study, record, created) is True and waits == []
    assert study.user_attrs["imageclf"] == record


def _fake_study(values: list[float]):
    """An in-memory study of finished trials: plots without training anything."""
    study = optuna.create_study(direction="maximize")
    dists = {
        "lr": optuna.distributions.FloatDistribution(1e-4, 1e-2, log=True),
        "batch_size": optuna.distributions.CategoricalDistribution([64, 128]),
    }
    for i, value in enumerate(values):
        params = {"lr": 1e-4 * (1.5**i), "batch_size": [64, 128][i % 2]}
        study.add_trial(optuna.trial.create_trial(params=params, distributions=dists, value=value))
    pruned = optuna.trial.create_trial(
        params={"lr": 1e-3, "batch_size": 64},
        distributions=dists,
        state=optuna.trial.TrialState.PRUNED,
        intermediate_values={1: 0.2, 2: 0.25},
        user_attrs={"epochs_run": 2},
    )
    study.add_trial(pruned)
    return study


def test_plots_history_and_importances(tmp_path):
    from imageclf.tuning.results import trial_rows
    from imageclf.tuning.results import write_plots as _write_plots

    study = _fake_study([0.5, 0.6, 0.55, 0.7, 0.65])
    rows = trial_rows(study)
    assert [r["best"] for r in rows] == [0.5, 0.6, 0.6, 0.7, 0.7, 0.7]
    assert rows[-1]["state"] == "pruned" and rows[-1]["epochs_run"] == 2
    plots = _write_plots(optuna, study, rows, tmp_path)
    assert [p.name for p in plots] == ["history.png", "importances.png"]
    assert all(p.read_bytes().startswith(b"\x89PNG") for p in plots)

    # Every completed trial scored the same: no importances to speak of, and no crash.
    same = _fake_study([0.5, 0.5, 0.5])
    plots = _write_plots(optuna, same, trial_rows(same), tmp_path / "same")
    assert [p.name for p in plots] == ["history.png"]


def test_bad_space_fails_before_any_trial(data, tmp_path, capsys):
    space = tmp_path / "bad.json"
    space.write_text(json.dumps({"lr": {"low": 0.1, "high": 0.01}, "dropout": 0.5}))
    out = tmp_path / "run"
    code, _, err = run(
        ["tune", "--data", str(data), "--space", str(space), "--out", str(out)], capsys
    )
    assert code == 2 and len(err.strip().splitlines()) == 1
    assert "lr: empty range" in err and "unknown parameter 'dropout'" in err
    assert not out.exists()


@pytest.mark.parametrize(
    "argv,needle",
    [
        (["tune", "--resume", "."], "nothing to resume"),
        (["tune", "--resume", ".", "--data", "x"], "drop --data"),
        (["tune", "--recipe", "nope"], "unknown recipe"),
        (["tune", "--data", "/no/such/dataset"], "dataset not found"),
    ],
)
def test_tune_user_errors(argv, needle, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, _, err = run(argv, capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_tuning_needs_a_validation_set(data, tmp_path):
    with pytest.raises(UserInputError, match="needs a validation set"):
        tune("fast", data=data, val_size=0, out=tmp_path / "run", progress=False)


def test_existing_study_folder_needs_resume(data, tmp_path):
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "tune.json").write_text("{}")
    with pytest.raises(UserInputError, match="--resume"):
        tune("fast", data=data, out=tmp_path / "run", progress=False)


def test_trials_report_at_their_schedule_position():
    from imageclf.tuning.tuner import schedule_step

    # Epoch 2 of 4 is as far through its (stretched) schedule as epoch 4 of 8.
    assert schedule_step(2, 4, 8) == schedule_step(4, 8, 8) == 4
    assert schedule_step(3, 3, 8) == schedule_step(8, 8, 8) == 8  # last epochs line up
    for epochs in range(1, 9):  # every epoch of a trial reports at its own step
        steps = [schedule_step(e, epochs, 8) for e in range(1, epochs + 1)]
        assert len(set(steps)) == epochs and max(steps) == 8


def test_pruner_choices():
    from imageclf.tuning.study import make_pruner as _make_pruner

    assert isinstance(_make_pruner(optuna, "median", 12), optuna.pruners.MedianPruner)
    halving = _make_pruner(optuna, "halving", 12)
    assert isinstance(halving, optuna.pruners.SuccessiveHalvingPruner)
    assert isinstance(_make_pruner(optuna, "none", 12), optuna.pruners.NopPruner)
    with pytest.raises(UserInputError, match="unknown pruner 'sometimes'"):
        _make_pruner(optuna, "sometimes", 12)
