import dataclasses
import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from helpers import write_image_folder

import imageclf
from imageclf import Predictor, recipes
from imageclf.errors import UserInputError
from imageclf.runs import RunState
from imageclf.training import after_epoch, resume, train

COMPARED = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("syn") / "ds", per_class=40)


def _cfg(data, out, recipe="seed-a", **kw):
    base = dict(data=str(data), out=str(out), epochs=3, batch_size=16, seed=0)
    base.update(kw)
    return recipes.resolve(recipe, **base)


def test_run_folder_contents_and_bundle(synthetic, tmp_path):
    result = train(_cfg(synthetic, tmp_path / "run"), progress=False)
    run = result.run_dir
    for name in [
        "config.json",
        "history.json",
        "history.csv",
        "last.pt",
        "best.pt",
        "model.safetensors",
        "metrics.json",
        "split.npz",
    ]:
        assert (run / name).is_file(), name
    history = json.loads((run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert (run / "history.csv").read_text().splitlines()[0].startswith("epoch,train_loss")
    config = json.loads((run / "config.json").read_text())
    assert config["split"]["name"] == "70-15-15" and config["config"]["recipe"] == "seed-a"
    # Three well-separated colour classes: even 3 epochs of seed-a learn them.
    assert result.metrics["test"]["accuracy"] > 0.9
    p = Predictor.load(result.bundle_path)
    meta = p.metadata
    assert meta["metrics"]["test"] == result.metrics["test"]
    assert meta["data"]["fingerprint"] and meta["split"]["digest"]
    assert p.classes == ["cat", "dog", "frog"]


def test_same_seed_same_history(synthetic, tmp_path):
    a = train(_cfg(synthetic, tmp_path / "a", epochs=2), progress=False).history
    # The keyword form of the public API resolves the same config.
    b = imageclf.train(
        recipe="seed-a", data=str(synthetic), out=str(tmp_path / "b"), epochs=2, batch_size=16,
        seed=0, progress=False,
    ).history  # fmt: skip
    assert [[h[k] for k in COMPARED] for h in a] == [[h[k] for k in COMPARED] for h in b]


def test_every_recipe_runs_one_short_epoch(synthetic, tmp_path):
    for name in recipes.RECIPES:
        cfg = _cfg(synthetic, tmp_path / name, recipe=name, epochs=1, batch_size=32)
        if cfg.architecture == "fast":
            cfg.arch_kwargs = {"widths": [16, 32, 32]}
        result = train(cfg, progress=False)
        assert result.metrics["epochs_run"] == 1


def test_early_stopping_restores_best(synthetic, tmp_path):
    cfg = _cfg(synthetic, tmp_path / "es", epochs=30, lr=0.05, early_stopping=1)
    result = train(cfg, progress=False)
    assert result.metrics["epochs_run"] < 30
    best = result.metrics["best_epoch"]
    assert result.history[best - 1]["val_loss"] == min(h["val_loss"] for h in result.history)
    assert abs(result.metrics["val"]["loss"] - result.history[best - 1]["val_loss"]) < 1e-4


def test_bad_hyperparameters_are_user_errors():
    with pytest.raises(UserInputError, match="unknown recipe"):
        recipes.resolve("seed-z")
    with pytest.raises(UserInputError, match="epochs"):
        recipes.resolve("seed-a", epochs=0)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"optimizer": "adamax"}, "unknown optimizer 'adamax'; choose adam, adamw, sgd"),
        ({"loss_reduction": "summ"}, "unknown loss_reduction 'summ'; choose mean, sum"),
        ({"schedule": "cosine"}, "unknown schedule 'cosine'"),
        ({"split": "80-20"}, "unknown split '80-20'"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"augment": {"flip": "sideways"}}, "unknown augment.flip 'sideways'"),
        ({"augment": {"fllip": "random"}}, "unknown augment setting 'fllip'; did you mean 'flip'"),
        ({"epochs": "3"}, "epochs must be an integer"),
        ({"restore_best": 1}, "restore_best must be true or false"),
        ({"lr_rate": 0.1}, "unknown setting 'lr_rate'; did you mean 'lr'"),
        ({"batchsize": 8}, "unknown setting 'batchsize'; did you mean 'batch_size'"),
    ],
)
def test_config_is_checked_when_built(overrides, needle):
    with pytest.raises(UserInputError, match=needle):
        recipes.resolve("seed-a", **overrides)


def _state(**kw) -> RunState:
    return RunState(**{"epoch": 1, **kw})


def test_after_epoch_is_keras_plateau_and_early_stopping():
    cfg = recipes.resolve(
        "seed-d", plateau_patience=2, plateau_factor=0.5, early_stopping=3, lr=1e-3, min_lr=3e-4
    )
    state, improved = after_epoch(_state(), 1.0, cfg)
    assert improved and (state.best_val_loss, state.best_epoch, state.bad_epochs) == (1.0, 1, 0)
    losses = [1.1, 1.0, 0.9999999999999, 1.2]  # the third is within 1e-12: not an improvement
    for epoch, loss in enumerate(losses, start=2):
        state, improved = after_epoch(dataclasses.replace(state, epoch=epoch), loss, cfg)
        assert not improved
    # Every 2nd bad epoch halves the rate, floored at min_lr / lr; the 3rd bad epoch stops.
    assert state.bad_epochs == 4 and state.lr_factor == pytest.approx(0.3)
    assert state.stopped_early and state.best_epoch == 1
    back, improved = after_epoch(dataclasses.replace(state, epoch=6), 0.5, cfg)
    assert improved and back.bad_epochs == 0 and back.lr_factor == state.lr_factor
    # No validation images: nothing changes.
    assert after_epoch(state, float("nan"), cfg) == (state, False)


def test_after_epoch_plateau_needs_the_plateau_schedule():
    cfg = recipes.resolve("seed-a", early_stopping=None)
    state, _ = after_epoch(_state(), 1.0, cfg)
    for loss in (2.0, 3.0, 4.0):
        state, _ = after_epoch(state, loss, cfg)
    assert state.lr_factor == 1.0 and not state.stopped_early and state.bad_epochs == 3


def test_resume_after_sigkill_matches_uninterrupted(synthetic, tmp_path):
    """Kill a real training process mid-run, resume it, and get the same history."""
    args = [
        "--data",
        str(synthetic),
        "--recipe",
        "seed-d",
        "--epochs",
        "6",
        "--batch-size",
        "8",
        "--seed",
        "3",
    ]
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    reference = tmp_path / "ref"
    subprocess.run(
        [sys.executable, "-m", "imageclf", "-q", "train", *args, "--out", str(reference)],
        check=True,
        env=env,
        timeout=300,
    )
    run = tmp_path / "killed"
    proc = subprocess.Popen(
        [sys.executable, "-m", "imageclf", "-q", "train", *args, "--out", str(run)], env=env
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        last = run / "last.pt"
        if last.is_file():
            done = torch.load(last, weights_only=True)["state"]["epoch"]
            if done >= 2:
                break
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    state = torch.load(run / "last.pt", weights_only=True)["state"]
    assert 2 <= state["epoch"] < 6, "the process must be killed before it finished"
    subprocess.run(
        [sys.executable, "-m", "imageclf", "-q", "train", "--resume", str(run)],
        check=True,
        env=env,
        timeout=300,
    )
    ref_hist = json.loads((reference / "history.json").read_text())
    got_hist = json.loads((run / "history.json").read_text())
    assert len(got_hist) == 6
    assert [[h[k] for k in COMPARED] for h in got_hist] == [
        [h[k] for k in COMPARED] for h in ref_hist
    ]
    ref_metrics = json.loads((reference / "metrics.json").read_text())
    got_metrics = json.loads((run / "metrics.json").read_text())
    assert got_metrics["test"] == ref_metrics["test"]


def test_resume_of_missing_run_is_clear(tmp_path):
    with pytest.raises(UserInputError, match="nothing to resume"):
        resume(tmp_path, progress=False)
