import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch
from conftest import write_image_folder

from imageclf import Predictor, recipes
from imageclf.errors import UserInputError
from imageclf.train import train

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
    b = train(_cfg(synthetic, tmp_path / "b", epochs=2), progress=False).history
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
        train(recipes.resolve("seed-a"), progress=False, resume=tmp_path)
