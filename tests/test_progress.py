"""No silent waits (issue 26): the end of a training run (the final scoring) shows a
progress bar, ``train`` says one overall estimate early and the time left on each epoch
line; ``--quiet`` and ``--log-format json`` keep their promises."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli, write_image_folder

from imageclf.training import eta


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("progress") / "ds", per_class=40)


def _train(folder, out, *global_options, epochs="2"):
    return [
        *global_options, "train", "--recipe", "seed-a", "--data", str(folder), "--epochs",
        epochs, "--batch-size", "8", "--precision", "fp32", "--set", "tta=true", "--out", str(out),
    ]  # fmt: skip


@pytest.mark.slow
def test_train_shows_the_final_scoring_and_an_estimate(folder, tmp_path, capsys):
    code, out, err = run_cli(_train(folder, tmp_path / "run"), capsys)
    assert code == 0, err
    # tqdm draws on stderr: the final scoring (val and test, with TTA) has its own bar
    assert "final scoring" in err and "view" in err
    assert "scoring the kept weights (epoch" in out and "also with TTA" in out
    estimates = [line for line in out.splitlines() if line.startswith("estimate: about ")]
    assert len(estimates) == 1, out  # one overall estimate, not one per epoch
    assert "for 2 epochs on this machine" in estimates[0] and "8 steps timed" in estimates[0]
    epoch_lines = [line for line in out.splitlines() if line.startswith("epoch ")]
    assert len(epoch_lines) == 2 and all(line.endswith(" left") for line in epoch_lines)


@pytest.mark.slow
def test_quiet_and_json_logs(folder, tmp_path, capsys):
    code, out, err = run_cli(_train(folder, tmp_path / "q", "--quiet", epochs="1"), capsys)
    assert code == 0, err
    assert "final scoring" not in err and "estimate" not in out and "epoch 1/1" not in out
    assert "kept epoch" in out  # the summary is the command's answer, not a log line

    code, out, err = run_cli(
        _train(folder, tmp_path / "j", "--log-format", "json", epochs="1"), capsys
    )
    assert code == 0, err
    assert "final scoring" not in err  # no bars among JSON lines
    messages = [json.loads(line)["message"] for line in out.splitlines() if line.startswith("{")]
    assert sum(m.startswith("estimate: about ") for m in messages) == 1
    assert any(m.startswith("scoring the kept weights") for m in messages)


def test_estimate_arithmetic(monkeypatch):
    """Eight timed steps of 0.5 s, 100 steps an epoch, 3 epochs, validation guessed at a
    third of a step per image: 50 s + 100 images x 0.5/3/16 s per epoch, the final too."""
    clock = iter([0.0, 4.0, 14.0])  # timing starts, timing ends, the estimate is said
    monkeypatch.setattr(eta.time, "perf_counter", lambda: next(clock))
    said: list[str] = []
    monkeypatch.setattr(eta.log, "info", lambda text, *args: said.append(text % args))
    e = eta.Eta(started=0.0, epochs=3, epochs_done=0, steps_per_epoch=100, batch_size=16,
                n_val=100, n_final=100, tta=False)  # fmt: skip
    for step in range(eta.WARMUP_STEPS + eta.TIMED_STEPS + 5):
        e.step(step)
    forward = 0.5 / 3 / 16
    total = 14 + 3 * (50 + 100 * forward) + 100 * forward
    assert len(said) == 1 and f"about {eta.duration(total)} in all for 3 epochs" in said[0]
    assert "14 s so far; 8 steps timed, 0.50 s each" in said[0]
    # after an epoch: measured train 60 s and val 2 s (0.02 s an image) replace the guesses
    assert e.epoch_done(60.0, 2.0) == f"~{eta.duration(2 * 62 + 100 * 0.02)} left"
    assert [eta.duration(s) for s in (0.2, 89, 600, 7200)] == ["1 s", "89 s", "10 min", "2.0 h"]


def test_evaluate_shows_one_bar_over_every_pass(tiny_bundle, tmp_path, capsys):
    """Its passes (train sample, test, test with TTA) share one bar counted in forward
    views, so the bar's ETA is the whole evaluation's."""
    import imageclf

    data = write_image_folder(tmp_path / "ds", classes=["class0", "class1"], per_class=6)
    capsys.readouterr()
    result = imageclf.evaluate([tiny_bundle], data, precision="fp32", progress=True)
    err = capsys.readouterr().err
    passes = {key: len(interp) for key, interp in result.interpretations.items()}
    assert set(passes) == {("train", False), ("test", False), ("test", True)}
    total = sum(n * (6 if tta else 1) for (_, tta), n in passes.items())
    assert f"/{total} [" in err and "predicting" in err  # per-pass bars would count less
