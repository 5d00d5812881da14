import dataclasses
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from helpers import write_image_folder, write_noise_folder

import imageclf
from imageclf import Predictor
from imageclf.data import load_dataset
from imageclf.errors import UserInputError
from imageclf.models.bundle import build_model, load_bundle
from imageclf.training.loop import after_epoch, resume, train
from imageclf.training.recipes import RECIPES
from imageclf.training.resolve import resolve
from imageclf.training.runs import RunState

COMPARED = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("syn") / "ds", per_class=40)


def _cfg(data, out, recipe="seed-a", **kw):
    base = dict(data=str(data), out=str(out), epochs=3, batch_size=16, seed=0)
    base.update(kw)
    return resolve(recipe, **base)


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
    # Called from Python: no command line to record, but the machine it ran on.
    assert meta["provenance"]["command"] is None
    assert (
        meta["provenance"]["machine"]["cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    )


def test_the_cli_records_the_command_that_makes_the_model_again(monkeypatch):
    from imageclf.training.finish import command_line

    monkeypatch.setattr(sys, "argv", ["/venv/bin/imageclf", "train", "--data", "my photos"])
    assert command_line() == "imageclf train --data 'my photos'"
    monkeypatch.setattr(sys, "argv", ["/src/imageclf/__main__.py", "train"])
    assert command_line() == "imageclf train"
    for other in ("notebook.py", "/venv/lib/pytest/__main__.py"):
        monkeypatch.setattr(sys, "argv", [other, "--x"])
        assert command_line() is None


def test_same_seed_same_history(synthetic, tmp_path):
    a = train(_cfg(synthetic, tmp_path / "a", epochs=2), progress=False).history
    # The keyword form of the public API resolves the same config.
    b = imageclf.train(
        recipe="seed-a", data=str(synthetic), out=str(tmp_path / "b"), epochs=2, batch_size=16,
        seed=0, progress=False,
    ).history  # fmt: skip
    assert [[h[k] for k in COMPARED] for h in a] == [[h[k] for k in COMPARED] for h in b]


def test_every_recipe_runs_one_short_epoch(synthetic, tmp_path):
    for name in RECIPES:
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
        resolve("seed-z")
    with pytest.raises(UserInputError, match="epochs"):
        resolve("seed-a", epochs=0)


@pytest.mark.parametrize(
    "overrides,needle",
    [
        ({"optimizer": "adamax"}, "unknown optimizer 'adamax'; choose adam, adamw, sgd"),
        ({"loss_reduction": "summ"}, "unknown loss_reduction 'summ'; choose mean, sum"),
        ({"schedule": "cosine-restarts"}, "unknown schedule 'cosine-restarts'"),
        ({"split": "80-20"}, "unknown split '80-20'"),
        ({"precision": "fp8"}, "unknown precision 'fp8'"),
        ({"device": "gpu"}, "unknown device 'gpu'"),
        ({"augment": {"flip": "sideways"}}, "unknown augment.flip 'sideways'"),
        ({"augment": {"fllip": "random"}}, "unknown augment setting 'fllip'; did you mean 'flip'"),
        ({"epochs": "3"}, "epochs must be an integer"),
        ({"restore_best": 1}, "restore_best must be true or false"),
        ({"lr_rate": 0.1}, "unknown setting 'lr_rate'; did you mean 'lr'"),
        ({"batchsize": 8}, "unknown setting 'batchsize'; did you mean 'batch_size'"),
        ({"low_res_scale": 0}, "low_res_scale must be above 0 and at most 1"),
        ({"low_res_scale": 1.5}, "low_res_scale must be above 0 and at most 1"),
        ({"low_res_fraction": 1.0}, "low_res_fraction must be from 0 to below 1"),
    ],
)
def test_config_is_checked_when_built(overrides, needle):
    with pytest.raises(UserInputError, match=needle):
        resolve("seed-a", **overrides)


def _state(**kw) -> RunState:
    return RunState(**{"epoch": 1, **kw})


def test_after_epoch_is_keras_plateau_and_early_stopping():
    cfg = resolve(
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
    cfg = resolve("seed-a", early_stopping=None)
    state, _ = after_epoch(_state(), 1.0, cfg)
    for loss in (2.0, 3.0, 4.0):
        state, _ = after_epoch(state, loss, cfg)
    assert state.lr_factor == 1.0 and not state.stopped_early and state.bad_epochs == 3


def _train_cli(*argv: str, **kwargs):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    command = [sys.executable, "-m", "imageclf", "-q", "train", *argv]
    return subprocess.Popen(command, env=env, **kwargs)


def _resume_args(data) -> list[str]:
    return ["--data", str(data), "--recipe", "seed-d", "--epochs", "6", "--batch-size", "8",
            "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def uninterrupted(synthetic, tmp_path_factory):
    reference = tmp_path_factory.mktemp("resume") / "reference"
    assert _train_cli(*_resume_args(synthetic), "--out", str(reference)).wait(timeout=300) == 0
    return reference


def _default_sigint() -> None:
    """A child started from a shell that ignores SIGINT (a background job) would inherit
    that, and Python would then never raise KeyboardInterrupt: restore the default."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGINT], ids=["SIGKILL", "SIGINT"])
def test_resume_after_interruption_matches_uninterrupted(synthetic, uninterrupted, tmp_path, sig):
    """Kill (or Ctrl-C) a real training process mid-run, resume it: the same history."""
    run = tmp_path / "interrupted"
    with open(tmp_path / "stderr.txt", "w+") as stderr:
        proc = _train_cli(
            *_resume_args(synthetic), "--out", str(run), stderr=stderr, preexec_fn=_default_sigint
        )
        deadline = time.monotonic() + 240
        while time.monotonic() < deadline and proc.poll() is None:
            last = run / "last.pt"
            if last.is_file() and torch.load(last, weights_only=True)["state"]["epoch"] >= 2:
                break
            time.sleep(0.05)
        proc.send_signal(sig)
        code = proc.wait(timeout=60)
        stderr.seek(0)
        err = stderr.read()
    state = torch.load(run / "last.pt", weights_only=True)["state"]
    assert 2 <= state["epoch"] < 6, "the process must be stopped before it finished"
    if sig == signal.SIGINT:  # Ctrl-C: a one-line message and the shell's 128 + SIGINT
        assert code == 130 and err.strip() == "imageclf: interrupted", err
    else:
        assert code == -signal.SIGKILL
    resumed = subprocess.run(
        [sys.executable, "-m", "imageclf", "-q", "train", "--resume", str(run)],
        timeout=300,
    )
    assert resumed.returncode == 0
    ref_hist = json.loads((uninterrupted / "history.json").read_text())
    got_hist = json.loads((run / "history.json").read_text())
    assert len(got_hist) == 6
    assert [[h[k] for k in COMPARED] for h in got_hist] == [
        [h[k] for k in COMPARED] for h in ref_hist
    ]
    ref_metrics = json.loads((uninterrupted / "metrics.json").read_text())
    got_metrics = json.loads((run / "metrics.json").read_text())
    assert got_metrics["test"] == ref_metrics["test"]
    # The bundle's time is the whole run's: the first process's up to its checkpoint too.
    later = sum(h["seconds"] for h in got_hist[state["epoch"] :])
    assert got_metrics["train_seconds"] > state["wall_seconds"] + later
    meta = Predictor.load(run / "model.safetensors").metadata
    assert meta["metrics"]["train_seconds"] == got_metrics["train_seconds"]
    # ...and its command is the one that makes the model again, not the resume.
    began = shlex.join(["imageclf", "-q", "train", *_resume_args(synthetic), "--out", str(run)])
    assert meta["provenance"]["command"] == began
    assert meta["provenance"]["finished_by"] == f"imageclf -q train --resume {run}"


def test_resume_of_missing_run_is_clear(tmp_path):
    with pytest.raises(UserInputError, match="nothing to resume"):
        resume(tmp_path, progress=False)


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (b"", "empty or cut short"),
        (b"not a checkpoint", "not a checkpoint"),
        ({"a": 1}, "no 'model'"),
    ],
)
def test_resume_of_a_broken_checkpoint_is_clear(tmp_path, content, why):
    """An empty last.pt used to surface as EOFError, which click reports as Ctrl-C (130)."""
    last = tmp_path / "last.pt"
    if isinstance(content, bytes):
        last.write_bytes(content)
    else:
        torch.save(content, last)
    with pytest.raises(UserInputError, match=why):
        resume(tmp_path, progress=False)
    proc = subprocess.run(
        [sys.executable, "-m", "imageclf", "train", "--resume", str(tmp_path)],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 2 and why in proc.stderr and "interrupted" not in proc.stderr


# ---------------------------------------------------------------- tricks that must take effect
def test_reduce_lr_on_plateau_follows_val_loss(tmp_path):
    data = write_noise_folder(tmp_path / "noise")
    # bf16 on every CPU (emulated where it is not native): fp32 on this noise can keep
    # val_loss falling for all 5 epochs, and the rule would then never be exercised.
    cfg = _cfg(data, tmp_path / "run", epochs=5, lr=0.003, schedule="plateau", plateau_patience=1,
               precision="bf16")  # fmt: skip
    cfg.early_stopping = None
    result = train(cfg, progress=False)
    # Keras' ReduceLROnPlateau, replayed from the recorded val_loss.
    best, bad, factor, expected = math.inf, 0, 1.0, []
    for record in result.history:
        expected.append(cfg.lr * factor)
        if record["val_loss"] < best:
            best, bad = record["val_loss"], 0
        else:
            bad += 1
            if bad % cfg.plateau_patience == 0:
                factor = max(factor * cfg.plateau_factor, cfg.min_lr / cfg.lr)
    assert [r["lr"] for r in result.history] == pytest.approx(expected, rel=1e-9)
    assert expected[-1] < cfg.lr, "noise data should make val_loss stall at least once"
    # The optimiser ran at that rate, not just the log: its state in the last checkpoint.
    checkpoint = torch.load(result.run_dir / "last.pt", weights_only=True)
    groups = checkpoint["optimizer"]["param_groups"]
    assert [g["lr"] for g in groups] == pytest.approx([expected[-1]] * len(groups), rel=1e-9)


def test_lookahead_changes_training_and_ends_on_the_slow_weights(synthetic, tmp_path):
    options = dict(epochs=2, restore_best=False, early_stopping=None)
    plain = train(_cfg(synthetic, tmp_path / "plain", **options), progress=False)
    slow = train(_cfg(synthetic, tmp_path / "slow", lookahead=True, **options), progress=False)
    checkpoint = torch.load(slow.run_dir / "last.pt", weights_only=True)
    unpulled = torch.load(plain.run_dir / "last.pt", weights_only=True)["model"]
    # The periodic pulls toward the slow weights change the trajectory (same seed, same data)...
    moved = max((checkpoint["model"][k] - v).abs().max().item() for k, v in unpulled.items())
    assert moved > 1e-4
    # ...and the bundle holds the slow weights, not the fast ones the last step left.
    assert checkpoint["state"]["step"] % 5, "the last step must not be a sync step"
    model = build_model(load_bundle(slow.bundle_path))
    names = [name for name, _ in model.named_parameters()]
    assert len(checkpoint["lookahead"]) == len(names)
    for name, saved_slow in zip(names, checkpoint["lookahead"], strict=True):
        assert torch.equal(model.state_dict()[name], saved_slow), name
    assert any(
        not torch.equal(checkpoint["model"][n], s)
        for n, s in zip(names, checkpoint["lookahead"], strict=True)
    )


def test_label_smoothing_caps_confidence(synthetic, tmp_path):
    """With smoothing e over K classes the best the model can do is predict 1 - e + e/K for
    the true class, and the loss cannot fall below that target's entropy."""
    eps, k = 0.3, 3
    result = train(_cfg(synthetic, tmp_path / "ls", label_smoothing=eps), progress=False)
    target = np.array([1 - eps + eps / k] + [eps / k] * (k - 1))
    floor = float(-(target * np.log(target)).sum())
    losses = [r["train_loss"] for r in result.history]
    assert min(losses) >= floor - 1e-4 and losses[-1] < floor + 0.05  # trained, to the floor
    images = load_dataset(synthetic, progress=False).images
    confidence = Predictor.load(result.bundle_path).predict_proba(images).max(1)
    assert abs(confidence.mean() - target[0]) < 0.05  # unsmoothed training gives ~1.0
    assert confidence.max() < 0.95


def test_muon_trains_the_fast_net_and_checkpoints_its_state(synthetic, tmp_path):
    """``--optimizer muon`` end to end: the fast net learns the colours, and the run's
    checkpoint holds the Muon group (a resumed run steps the filters by Muon again)."""
    cfg = _cfg(synthetic, tmp_path / "muon", recipe="fast", optimizer="muon", epochs=3)
    result = train(cfg, progress=False)
    history = json.loads((result.run_dir / "history.json").read_text())
    assert history[-1]["train_loss"] < history[0]["train_loss"]
    assert history[-1]["val_acc"] > 0.6  # three colours: chance is 1/3
    groups = torch.load(result.run_dir / "last.pt", weights_only=True)["optimizer"]["param_groups"]
    assert [g.get("muon", False) for g in groups].count(True) == 1


def test_progressive_resizing_keeps_the_last_epochs_at_full_size():
    cfg = resolve("fast", epochs=14, low_res_scale=0.75, low_res_fraction=6 / 14)
    assert cfg.low_res_epochs == 6
    assert [cfg.image_size_at(e) for e in (0, 5, 6, 13)] == [24, 24, 32, 32]
    # However few the epochs, the last one trains at the size the model is used at.
    for epochs, scale, fraction, low_res_epochs in [
        (2, 0.5, 0.9, 1),
        (1, 0.5, 0.9, 0),
        (8, 1.0, 0.5, 0),
    ]:
        cfg = resolve("fast", epochs=epochs, low_res_scale=scale, low_res_fraction=fraction)
        assert cfg.low_res_epochs == low_res_epochs, (epochs, scale, fraction)
    cfg = resolve("fast", image_size=64, epochs=4, low_res_scale=0.75, low_res_fraction=0.5)
    assert cfg.image_size_at(0) == 48


def test_progressive_resizing_trains_small_first_and_counts_those_flops(
    synthetic, tmp_path, monkeypatch
):
    """The net sees 16 px batches for the first two of three epochs, then 32 px; the run's
    compute counts each epoch at its own size."""
    from imageclf.models import build
    from imageclf.models.fast import FastNet
    from imageclf.training import loop
    from imageclf.training.compute import training_flops_per_image

    seen: list[tuple[bool, bool, int]] = []  # (in the training loop, train mode, side)
    in_epoch = [False]
    one_epoch = loop.train_one_epoch

    def epoch(*args, **kwargs):
        in_epoch[0] = True
        try:
            return one_epoch(*args, **kwargs)
        finally:
            in_epoch[0] = False

    def record(module, args):
        if isinstance(module, FastNet):
            seen.append((in_epoch[0], module.training, args[0].shape[-1]))

    monkeypatch.setattr(loop, "train_one_epoch", epoch)

    cfg = _cfg(
        synthetic, tmp_path / "prog", recipe="fast", epochs=3, low_res_scale=0.5,
        low_res_fraction=0.67, restore_best=False,
    )  # fmt: skip
    handle = torch.nn.modules.module.register_module_forward_pre_hook(record)
    try:
        result = train(cfg, progress=False)
    finally:
        handle.remove()
    trained = [side for in_loop, _, side in seen if in_loop]
    steps = len(trained) // 3
    assert trained == [16] * 2 * steps + [32] * steps
    start = next(i for i, (in_loop, _, _) in enumerate(seen) if in_loop)
    # Scored at full size (validation, test); before training, the size check's one call.
    assert {side for _, train_mode, side in seen[start:] if not train_mode} == {32}
    assert [side for _, train_mode, side in seen[:start] if not train_mode] == [16]
    compute = json.loads((result.run_dir / "metrics.json").read_text())["compute"]
    net = build("fast", 3, 32, **cfg.arch_kwargs)
    small, full = training_flops_per_image(net, 16), training_flops_per_image(net, 32)
    n_train = compute["images_seen"] // 3
    assert compute["flops_per_image"] == full
    assert compute["training_flops"] == n_train * (2 * small + full)
    assert small < full / 3


def test_progressive_resizing_needs_a_model_that_takes_any_size(synthetic, tmp_path):
    cfg = _cfg(synthetic, tmp_path / "flat", low_res_scale=0.75, low_res_fraction=0.5)
    with pytest.raises(UserInputError, match="seed-a takes only 32x32 inputs"):
        train(cfg, progress=False)
