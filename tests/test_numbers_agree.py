"""One definition of the kept epoch and of each figure (issue 26): what ``train`` prints,
metrics.json, the bundle, curves.png and ``evaluate`` all name the same epoch, and
evaluate, given the same split and precision, counts exactly the correct images that
training's final scoring counted."""

from __future__ import annotations

import json

import numpy as np
import pytest
from helpers import make_tiny_bundle, run_cli
from PIL import Image

import imageclf
from imageclf import plots
from imageclf.evaluation.report import console_report, write_report
from imageclf.models.bundle import load_bundle
from imageclf.training import loop
from imageclf.training.resolve import resolve
from imageclf.training.runs import RunState, kept_epoch

CLASSES = ["cat", "dog", "frog"]


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    """ROOT/train + ROOT/test of three overlapping colour classes: learnable, but never
    perfectly, so the correct counts are something two scorers could disagree on."""
    root = tmp_path_factory.mktemp("noisy") / "ds"
    rng = np.random.default_rng(0)
    for part, count in (("train", 60), ("test", 30)):
        for c, name in enumerate(CLASSES):
            folder = root / part / name
            folder.mkdir(parents=True)
            for i in range(count):
                base = np.full((32, 32, 3), 110.0)
                base[..., c] += 25
                noise = rng.normal(0, 70, (32, 32, 3))
                pixels = np.clip(base + noise, 0, 255).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{i:03d}.png")
    return root


@pytest.fixture(scope="module")
def spied_curves():
    """Every kept epoch handed to curves.png (the drawing itself is tested below)."""
    seen: list[dict | None] = []
    original = plots.save_training_curves

    def spy(history, path, title=None, label_smoothing=0.0, kept=None):
        seen.append(kept)
        return original(history, path, title, label_smoothing, kept=kept)

    mp = pytest.MonkeyPatch()
    mp.setattr(plots, "save_training_curves", spy)
    yield seen
    mp.undo()


def _counts(result) -> dict[str, int]:
    return {s: int(result.interpretations[(s, False)].correct.sum()) for s in ("val", "test")}


@pytest.mark.slow
def test_evaluate_counts_what_train_reported(noisy, tmp_path, spied_curves, capsys):
    cfg = resolve(
        "seed-a", data=str(noisy), split="official", val_size=45, epochs=3, batch_size=16,
        seed=0, precision="fp32", out=str(tmp_path / "run"),
    )  # fmt: skip
    run = imageclf.train(cfg, progress=False)
    m = run.metrics
    assert {m["val"]["images"], m["test"]["images"]} == {45, 90}
    assert 0 < m["val"]["correct"] < 45 or 0 < m["test"]["correct"] < 90  # not all right
    assert m["kept_rule"] == "lowest validation loss" and m["kept_epoch"] == m["best_epoch"]
    best = min(run.history, key=lambda h: h["val_loss"])
    assert m["kept_epoch"] == best["epoch"]
    # metrics.json, the bundle and the curves say the same epoch
    on_disk = json.loads((run.run_dir / "metrics.json").read_text())
    assert (on_disk["kept_epoch"], on_disk["kept_rule"]) == (m["kept_epoch"], m["kept_rule"])
    assert load_bundle(run.bundle_path).metadata.metrics["kept_epoch"] == m["kept_epoch"]
    assert spied_curves[-1] == {"epoch": m["kept_epoch"], "rule": m["kept_rule"]}

    result = imageclf.evaluate(
        [run.bundle_path], noisy, splits=["val", "test"], tta=False, precision="fp32",
        progress=False,
    )  # fmt: skip
    assert result.metrics["split"]["origin"] == "recorded in the model bundle"
    assert _counts(result) == {"val": m["val"]["correct"], "test": m["test"]["correct"]}
    assert not [n for n in result.notes if "correct here" in n]  # no disagreement noted
    trained = result.metrics["models"][0]["training"]
    assert (trained["kept_epoch"], trained["kept_rule"]) == (m["kept_epoch"], m["kept_rule"])
    report = write_report(result, tmp_path / "report", gradcam=False)
    printed = console_report(result, report)
    words = f"kept epoch {m['kept_epoch']} of {m['epochs_run']} (lowest validation loss)"
    assert words in printed
    assert words in (tmp_path / "report" / "report.html").read_text()


def test_train_prints_the_kept_epoch_and_its_figures(noisy, tmp_path, capsys):
    code, out, _ = run_cli(
        ["--quiet", "train", "--recipe", "seed-a", "--data", str(noisy), "--split", "official",
         "--val-size", "45", "--epochs", "2", "--batch-size", "16", "--precision", "fp32",
         "--out", str(tmp_path / "cli")],
        capsys,
    )  # fmt: skip
    assert code == 0, out
    m = json.loads((tmp_path / "cli" / "metrics.json").read_text())
    assert f"kept epoch {m['kept_epoch']} of 2 ({m['kept_rule']})" in out
    for split in ("val", "test"):
        s = m[split]
        assert f"{split} accuracy {s['accuracy']:.4f} ({s['correct']} of {s['images']}" in out


@pytest.mark.slow
def test_a_head_fit_nothing_beat_is_the_kept_epoch_everywhere(
    noisy, tmp_path, monkeypatch, spied_curves
):
    """Fine-tuning that never beats the head fit keeps epoch 0: metrics.json once said the
    last epoch here while the curves said 0."""
    start = make_tiny_bundle(tmp_path / "start.safetensors", "seed-a")

    def never_better(state, val_loss, cfg):
        return state, False

    monkeypatch.setattr(loop, "after_epoch", never_better)
    cfg = resolve(
        "finetune", init=str(start), data=str(noisy), split="official", val_size=45, epochs=2,
        batch_size=16, precision="fp32", out=str(tmp_path / "ft"),
    )  # fmt: skip
    run = imageclf.train(cfg, progress=False)
    m = run.metrics
    assert [h["epoch"] for h in run.history] == [0, 1, 2]
    assert (m["kept_epoch"], m["best_epoch"], m["epochs_run"]) == (0, 0, 2)
    assert m["kept_rule"].startswith("lowest validation loss; epoch 0 is the head")
    assert spied_curves[-1]["epoch"] == 0
    # The head fit's own validation figure is the kept weights' score.
    assert run.history[0]["val_acc"] == pytest.approx(m["val"]["accuracy"], abs=1e-6)
    assert (tmp_path / "ft" / "best.pt").is_file()  # a resume would keep it too
    result = imageclf.evaluate(
        [run.bundle_path], noisy, splits=["val", "test"], tta=False, precision="fp32",
        progress=False,
    )  # fmt: skip
    assert _counts(result) == {"val": m["val"]["correct"], "test": m["test"]["correct"]}


def test_kept_epoch_rule():
    state = RunState(epoch=8, best_epoch=3)
    assert kept_epoch(state, True, True) == {"epoch": 3, "rule": "lowest validation loss"}
    last = {"epoch": 8, "rule": "last epoch: restore_best is off"}
    assert kept_epoch(state, False, True) == last
    assert kept_epoch(state, True, False)["rule"] == "last epoch: no validation images"


def test_curves_mark_the_kept_epoch():
    history = [
        {"epoch": e, "train_loss": 1.0, "train_acc": 0.5, "val_loss": v, "val_acc": 0.5}
        for e, v in ((1, 0.9), (2, 0.5), (3, 0.7))
    ]
    fig = plots.training_curves(history, "run", kept={"epoch": 3, "rule": "last epoch (x)"})
    assert "kept: epoch 3, last epoch (x)" in fig.get_suptitle()
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "kept (epoch 3)" in labels
    # Without a record of the kept epoch, the line says only what it is.
    fig = plots.training_curves(history, "run")
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert "lowest val loss (epoch 2)" in labels and not any("kept" in x for x in labels)
