"""imageclf tune on a real PostgreSQL server: one study, several machines' workers.

The tests start a throwaway server (tests/postgres_cluster.py: 127.0.0.1, a free port,
removed after) and give each test a database of its own. Without PostgreSQL's server
or the psycopg driver they skip locally; CI installs both, and there a skip fails.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_cli, write_image_folder

optuna = pytest.importorskip("optuna")
pytest.importorskip("psycopg", reason="a PostgreSQL --storage needs psycopg (imageclf[tune])")
pytestmark = pytest.mark.usefixtures("keep_torch_threads")  # trials run with --threads 1

from postgres_cluster import Cluster, cluster, free_port, server_binaries  # noqa: E402
from test_tune import SPACE  # noqa: E402  (test_tune's: batch 16 on 108 images, a tiny net)

from imageclf.tuning import study as tuning_study  # noqa: E402
from imageclf.tuning.tuner import tune  # noqa: E402

ENV = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}


@pytest.fixture(scope="module")
def pg() -> Cluster:
    if server_binaries() is None:
        pytest.skip("needs PostgreSQL's server (apt-get install postgresql)")
    with cluster() as server:
        yield server


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("tune-pg") / "ds", per_class=40)


@pytest.fixture
def space_file(tmp_path) -> Path:
    path = tmp_path / "space.json"
    path.write_text(json.dumps(SPACE))
    return path


def _tune_argv(data: Path, space_file: Path, url: str, study: str, *more: str) -> list[str]:
    return [sys.executable, "-m", "imageclf", "-q", "tune", "--data", str(data), "--space",
            str(space_file), "--threads", "1", "--pruner", "none", "--storage", url,
            "--study", study, *more]  # fmt: skip


def _trial_table(pg: Cluster, database: str, study: str) -> list[tuple[int, str, dict | None]]:
    """(number, state, worker) of every trial, read from optuna's tables directly."""
    with pg.connect(database) as conn:
        rows = conn.execute(
            "SELECT t.number, t.state, a.value_json FROM trials t "
            "JOIN studies s ON s.study_id = t.study_id "
            "LEFT JOIN trial_user_attributes a ON a.trial_id = t.trial_id AND a.key = 'worker' "
            "WHERE s.study_name = %s ORDER BY t.number, t.trial_id",
            (study,),
        ).fetchall()
    return [
        (n, str(state).rsplit(".", 1)[-1], json.loads(w) if w else None) for n, state, w in rows
    ]


@pytest.mark.slow
def test_two_cli_workers_share_one_postgres_study(pg, data, space_file, tmp_path):
    url = pg.create_database("shared")
    argv = _tune_argv(data, space_file, url, "shared", "--epochs", "2", "--trials", "4")
    workers = [
        subprocess.Popen([*argv, "--out", str(tmp_path / f"worker{i}")], env=ENV,
                         stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for i in range(2)
    ]  # fmt: skip
    outputs = [w.communicate(timeout=600)[0] for w in workers]
    assert [w.returncode for w in workers] == [0, 0], outputs

    table = _trial_table(pg, "shared", "shared")
    numbers = [n for n, _, _ in table]
    assert len(numbers) == len(set(numbers)), table
    finished = {n: worker for n, state, worker in table if state in ("COMPLETE", "PRUNED")}
    assert 4 <= len(finished) <= 5, table  # each worker stops once 4 trials have finished
    # Every trial ran in exactly one worker: the one the database names, in its folder.
    which = {w.pid: i for i, w in enumerate(workers)}
    for number, worker in finished.items():
        i = which[worker["pid"]]
        assert (tmp_path / f"worker{i}" / "trials" / f"{number:04d}").is_dir()
        assert not (tmp_path / f"worker{1 - i}" / "trials" / f"{number:04d}").exists()
    ran = sorted(int(p.name) for i in range(2) for p in (tmp_path / f"worker{i}/trials").iterdir())
    assert ran == sorted(finished), (table, outputs)

    study = optuna.load_study(study_name="shared", storage=url)
    assert sum(bool(t.user_attrs.get("baseline")) for t in study.get_trials()) == 1
    for i in range(2):  # both see the whole study in their results
        best = json.loads((tmp_path / f"worker{i}" / "best.json").read_text())
        assert best["tuned"]["trial"] == study.best_trial.number


def _wait_for_first_epoch(pg: Cluster, database: str, worker: subprocess.Popen) -> None:
    """Until trial 0 has reported an epoch and is still running (mid-trial)."""
    import psycopg

    for _ in range(3000):  # a guard against hanging, not a timing check
        assert worker.poll() is None, "the worker ended before its first trial's first epoch"
        try:
            with pg.connect(database) as conn:
                reported = conn.execute(
                    "SELECT count(*) FROM trial_intermediate_values v "
                    "JOIN trials t ON t.trial_id = v.trial_id "
                    "WHERE t.number = 0 AND t.state = 'RUNNING'"
                ).fetchone()[0]
        except psycopg.Error:  # the worker has not created the tables yet
            reported = 0
        if reported:
            return
        time.sleep(0.1)
    pytest.fail("trial 0 never reported an epoch")


@pytest.mark.slow
def test_a_killed_worker_leaves_the_study_usable_and_resume_finishes_it(
    pg, data, space_file, tmp_path, capsys
):
    url = pg.create_database("killed")
    out = tmp_path / "run"
    argv = _tune_argv(data, space_file, url, "k", "--epochs", "4", "--trials", "2")
    worker = subprocess.Popen([*argv, "--out", str(out)], env=ENV,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        _wait_for_first_epoch(pg, "killed", worker)
    finally:
        worker.send_signal(signal.SIGKILL)
        worker.wait()
    table = _trial_table(pg, "killed", "k")
    assert [(n, state) for n, state, _ in table] == [(0, "RUNNING")], table
    assert table[0][2] == {"host": socket.gethostname(), "pid": worker.pid}

    code, stdout, err = run_cli(["tune", "--resume", str(out)], capsys)
    assert code == 0, err
    assert "0 of 2 trials done" in stdout and "trial 0 was interrupted: queued again" in stdout
    study = optuna.load_study(study_name="k", storage=url)
    trials = study.get_trials()
    states = [t.state.name for t in trials]
    # The last trial finishes either way; it was once seen stopped early (PRUNED) in CI,
    # with --pruner none: noted for the next session, not hidden.
    assert states[:2] == ["FAIL", "COMPLETE"] and states[2] in ("COMPLETE", "PRUNED"), states
    assert len(states) == 3
    # The killed trial ran again with its settings, and is still the recipe's baseline.
    again = trials[1]
    assert again.params == trials[0].params and again.user_attrs["requeued_from"] == 0
    assert again.user_attrs["baseline"] and trials[0].user_attrs["baseline"]
    assert json.loads((out / "best.json").read_text())["tuned"]["trial"] == study.best_trial.number

    # Resuming again requeues nothing more: the study is finished.
    code, stdout, err = run_cli(["tune", "--resume", str(out)], capsys)
    assert code == 0 and "2 of 2 trials done" in stdout, err
    assert len(optuna.load_study(study_name="k", storage=url).get_trials()) == 3


@pytest.mark.slow
def test_a_postgres_study_finds_what_the_sqlite_one_finds(pg, data, tmp_path):
    """Same seed and settings, one worker: the same trials, settings and scores."""
    options = dict(data=data, epochs=2, trials=3, space=SPACE, threads=1, pruner="none",
                   seed=7, progress=False)  # fmt: skip
    lite = tune("fast", out=tmp_path / "sqlite", **options)
    url = pg.create_database("same")
    server = tune("fast", out=tmp_path / "postgres", storage=url, **options)

    def trials(result) -> list[tuple]:
        return [(t["trial"], t["state"], t["params"], t["val_acc"], t["baseline"])
                for t in result.trials]  # fmt: skip

    assert len(trials(lite)) == 3 and trials(server) == trials(lite)
    assert (server.best_trial, server.best_value) == (lite.best_trial, lite.best_value)
    best = [
        json.loads((tmp_path / name / "best.json").read_text()) for name in ("sqlite", "postgres")
    ]
    assert best[0]["config"] == best[1]["config"]


@pytest.mark.filterwarnings("ignore:Heartbeat of storage:UserWarning")  # ask() outside optimize
def test_a_lost_worker_s_trial_runs_again_through_heartbeats(pg, monkeypatch):
    """A worker on another machine that stops beating: the next trial any worker starts
    fails its trial and queues the settings again, once."""
    monkeypatch.setattr(tuning_study, "HEARTBEAT_S", 1)
    monkeypatch.setattr(tuning_study, "GRACE_S", 2)
    url = pg.create_database("heartbeat").replace("postgresql://", "postgres://")  # Heroku's
    study, created = tuning_study.open_study(optuna, url, "hb", optuna.pruners.NopPruner())
    assert created
    lr = optuna.distributions.FloatDistribution(1e-4, 1.0, log=True)
    lost = study.ask({"lr": lr})
    lost.set_user_attr("worker", {"host": "another-machine", "pid": os.getpid()})
    study._storage.record_heartbeat(lost._trial_id)
    tuning_study.requeue_interrupted(optuna, study)  # not this machine's: left running
    assert [t.state.name for t in study.get_trials()] == ["RUNNING"]

    time.sleep(3)  # past the grace period: no heartbeat since
    study.optimize(lambda trial: trial.suggest_float("lr", 1e-4, 1.0, log=True), n_trials=1)
    trials = study.get_trials()
    assert [t.state.name for t in trials] == ["FAIL", "COMPLETE"]
    assert trials[1].params == trials[0].params and trials[1].user_attrs["requeued_from"] == 0
    tuning_study.requeue_interrupted(optuna, study)  # already queued again: not twice
    assert len(study.get_trials()) == 2


@pytest.fixture
def silent_server():
    """A port that accepts connections and never answers (a hung or firewalled server)."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        yield listener.getsockname()[1]


@pytest.mark.parametrize(
    ("make_url", "says"),
    [
        (lambda pg, _: pg.url(password="not-the-password"), "password authentication failed"),
        (lambda pg, _: pg.url("no_such_db"), 'database "no_such_db" does not exist'),
        (lambda _, __: f"postgresql://u:pw@127.0.0.1:{free_port()}/x", "Connection refused"),
        (lambda _, port: f"postgresql://u:pw@127.0.0.1:{port}/x", "timeout expired"),
    ],
    ids=["password", "database", "refused", "silent"],
)
def test_an_unusable_server_is_one_line_at_once(
    make_url, says, pg, data, space_file, silent_server, tmp_path, capsys, monkeypatch
):
    waits: list[float] = []
    monkeypatch.setattr(tuning_study.time, "sleep", waits.append)
    url = make_url(pg, silent_server)
    argv = ["-q", "tune", "--data", str(data), "--space", str(space_file), "--storage", url,
            "--out", str(tmp_path / "run")]  # fmt: skip
    code, _, err = run_cli(argv, capsys)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert "cannot open the study storage" in err and says in err
    assert "pw@" not in err and "not-the-password" not in err and ":***@" in err
    assert waits == []  # not retried: another try cannot succeed
