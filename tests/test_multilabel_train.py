"""Multi-label training, calibration, evaluation and tuning: the loss, the per-label
thresholds and Platt scaling, exact resume, the head fit, evaluate's numbers against a
hand-computed case, and a small mosaic set trained end to end from a labels table."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from imageclf import Predictor
from imageclf.calibration import calibrate_labels, f1_thresholds, fit_label_scaling
from imageclf.cli import main
from imageclf.evaluation.multilabel import label_scores
from imageclf.models.bundle import load_bundle
from imageclf.prediction.inference import loss_and_accuracy
from imageclf.training.finetune import fit_linear
from imageclf.training.finish import run_summary
from imageclf.training.loop import resume, train
from imageclf.training.multilabel import (
    POS_WEIGHT_MAX,
    bce_per_example,
    correct_count,
    positive_weights,
)
from imageclf.training.resolve import resolve

COLORS = {"red": (220, 30, 30), "green": (30, 200, 30), "blue": (30, 30, 220),
          "yellow": (220, 220, 30)}  # fmt: skip
NAMES = list(COLORS)
# The stated target for the slow test: the `fast` recipe on 400 mosaics reaches this test
# mAP (it measured 1.0 on this machine; the colours are easy, the point is that it learns).
TARGET_MAP = 0.95


def mosaic(rng) -> tuple[np.ndarray, list[str]]:
    """A 32x32 picture of four noisy 16x16 tiles, each a colour or grey; at least one colour."""
    picture = np.empty((32, 32, 3), np.uint8)
    present = set()
    for q in range(4):
        choice = rng.integers(0, 4 if q == 0 else 5)  # the first tile always has a colour
        base = np.array(COLORS[NAMES[choice]] if choice < 4 else (128, 128, 128))
        r, c = divmod(q, 2)
        tile = base + rng.integers(-40, 40, (16, 16, 3))
        picture[r * 16 : (r + 1) * 16, c * 16 : (c + 1) * 16] = np.clip(tile, 0, 255)
        if choice < 4:
            present.add(NAMES[choice])
    return picture, sorted(present, key=NAMES.index)


def write_mosaic_table(root, count: int, seed: int = 0):
    """``count`` mosaics as PNG files and a ``labels.csv`` (file, labels: space-separated)."""
    rng = np.random.default_rng(seed)
    root.mkdir(parents=True)
    rows = ["file,labels"]
    for i in range(count):
        picture, labels = mosaic(rng)
        Image.fromarray(picture).save(root / f"{i:04d}.png")
        rows.append(f"{i:04d}.png,{' '.join(labels)}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")
    return root / "labels.csv"


@pytest.fixture(scope="module")
def table(tmp_path_factory):
    return write_mosaic_table(tmp_path_factory.mktemp("mosaics") / "ds", 400)


@pytest.fixture(scope="module")
def small_table(tmp_path_factory):
    return write_mosaic_table(tmp_path_factory.mktemp("mosaics") / "small", 160, seed=1)


def run(argv, capsys):
    """``imageclf ARGV`` as the console script runs it: (exit code, stdout, stderr)."""
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


def _tiny(data, out, **kw):
    """The fast recipe shrunk to a few seconds: narrow net, small batches."""
    base = dict(data=str(data), out=str(out), epochs=3, batch_size=16, seed=0,
                arch_kwargs={"widths": [8, 16, 16]}, threads=1)  # fmt: skip
    return resolve("fast", **{**base, **kw})


# ---------------------------------------------------------------- the loss
def test_bce_per_example_is_the_sum_of_the_labels_binary_cross_entropies():
    logits = torch.tensor([[2.0, -1.0, 0.5], [0.0, 3.0, -2.0]])
    y = torch.tensor([[1, 0, 1], [0, 1, 1]], dtype=torch.uint8)
    p = torch.sigmoid(logits)
    hand = -(y * p.log() + (1 - y) * (1 - p).log()).sum(1)
    assert torch.allclose(bce_per_example(logits, y), hand, atol=1e-6)
    # Positive weights scale the positives' terms only; smoothing pulls targets to 0.5.
    w = torch.tensor([2.0, 1.0, 3.0])
    weighted = -(w * y * p.log() + (1 - y) * (1 - p).log()).sum(1)
    assert torch.allclose(bce_per_example(logits, y, w), weighted, atol=1e-6)
    soft = y * 0.8 + 0.1
    smoothed = -(soft * p.log() + (1 - soft) * (1 - p).log()).sum(1)
    assert torch.allclose(bce_per_example(logits, y, label_smoothing=0.2), smoothed, atol=1e-6)


def test_positive_weights_are_negatives_over_positives_clamped():
    labels = np.array([[1, 0, 0], [1, 0, 0], [0, 1, 0], [1, 0, 0]], np.uint8)
    w = positive_weights(labels, "auto").tolist()
    assert w[0] == 1.0  # 1 negative / 3 positives, clamped up to 1
    assert w[1] == pytest.approx(3.0)  # 3 negatives / 1 positive
    assert w[2] == POS_WEIGHT_MAX  # never seen
    assert positive_weights(labels, None) is None


def test_correct_counts_subset_accuracy_and_keeps_single_label():
    logits = torch.tensor([[2.0, -1.0], [1.0, 1.0], [-1.0, -3.0]])
    multi = torch.tensor([[1, 0], [1, 0], [0, 0]], dtype=torch.uint8)
    assert int(correct_count(logits, multi, True)) == 2  # the second picture has one wrong
    single = torch.tensor([0, 1, 0])
    assert int(correct_count(logits, single, False)) == 2
    soft = F.one_hot(single, 2).float() * 0.9 + 0.05  # MixUp-style soft targets: arg-max
    assert int(correct_count(logits, soft, False)) == 2


def test_validation_scores_of_multi_hot_labels():
    logits = torch.tensor([[3.0, -2.0], [-1.0, 2.0], [1.0, 1.0], [-2.0, -1.0]])
    y = torch.tensor([[1, 0], [0, 1], [1, 0], [0, 0]], dtype=torch.uint8)
    scores = loss_and_accuracy(logits, y)
    expected = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="sum") / 4
    assert scores["loss"] == pytest.approx(expected.item(), rel=1e-6)
    assert scores["accuracy"] == pytest.approx(0.75)  # picture 3 turns on a second label
    # Label 0: positives ranked 1st and 2nd: AP 1. Label 1: its positive ranked 1st of 4: 1.
    assert scores["map"] == pytest.approx(1.0)


# ---------------------------------------------------------------- calibration, thresholds
def test_f1_thresholds_by_hand():
    probs = np.array([[0.9, 0.2], [0.8, 0.6], [0.4, 0.7], [0.3, 0.1], [0.2, 0.05]])
    targets = np.array([[1, 0], [1, 0], [0, 1], [1, 0], [0, 0]], bool)
    thresholds, f1 = f1_thresholds(probs, targets)
    # Label 0: on for the top 2 (0.9, 0.8): TP 2 of 3, F1 = 4/5; top 4: TP 3, F1 = 6/7.
    # 6/7 > 4/5, so the 4 highest are on: halfway between 0.3 and 0.2.
    assert f1[0] == pytest.approx(6 / 7, abs=1e-6) and thresholds[0] == pytest.approx(0.25)
    # Label 1: its one positive (0.7) ranked first: F1 1, halfway to 0.6.
    assert f1[1] == 1.0 and thresholds[1] == pytest.approx(0.65)
    # A label without positives keeps 0.5.
    assert f1_thresholds(probs[:, :1], np.zeros((5, 1), bool))[0] == [0.5]


def test_platt_scaling_recovers_the_true_scale_and_keeps_the_ranking():
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(6000, 2, generator=gen) * 2
    true = torch.sigmoid(torch.stack([0.5 * z[:, 0] + 1.0, 2.0 * z[:, 1] - 0.5], 1))
    y = (torch.rand(6000, 2, generator=gen) < true).to(torch.uint8)
    scale, bias = fit_label_scaling(z, y)
    assert scale == pytest.approx([0.5, 2.0], rel=0.1)
    assert bias == pytest.approx([1.0, -0.5], abs=0.1)
    t_scale, t_bias = fit_label_scaling(z, y, "temperature")  # one scale shared, no bias
    assert t_scale[0] == t_scale[1] > 0 and not t_bias.any()
    fit = calibrate_labels(z, y)
    assert fit.ece_after < fit.ece_before and all(s > 0 for s in fit.scale)
    section = fit.section()
    assert section["calibration"]["method"] == "platt" and len(section["thresholds"]) == 2


def test_multilabel_numbers_match_a_hand_computed_case():
    targets = np.array([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1]], bool)
    probs = np.array([[0.9, 0.1, 0.8], [0.6, 0.7, 0.2], [0.7, 0.4, 0.3], [0.2, 0.3, 0.6]])
    decisions = probs >= 0.5
    s = label_scores(targets, probs, decisions)
    # Decisions: [1,0,1] [1,1,0] [1,0,0] [0,0,1]: TP 5, FP 1 (picture 2, label 0), FN 1.
    assert s["micro_f1"] == pytest.approx(round(10 / 12, 4))
    # Per label F1: label 0: TP 2 FP 1 FN 0 -> 0.8; label 1: TP 1 FN 1 -> 2/3; label 2: 1.
    assert s["macro_f1"] == pytest.approx(round((0.8 + 2 / 3 + 1) / 3, 4))
    # Per picture F1: 1, 2/3, 2/3, 1.
    assert s["samples_f1"] == pytest.approx(round((1 + 2 / 3 + 2 / 3 + 1) / 4, 4))
    assert s["subset_accuracy"] == 0.5 and s["hamming_loss"] == pytest.approx(round(2 / 12, 4))
    # AP: label 0: positives at ranks 1, 2 of (0.9, 0.7, 0.6, 0.2): 1. Label 1: positives
    # 0.7 (rank 1) and 0.4 (rank 2 after 0.7; 0.3 and 0.1 below): 1. Label 2: 0.8 rank 1,
    # 0.6 rank 2: 1. So mAP 1, though the thresholds make two mistakes.
    assert s["map"] == 1.0
    assert s["cardinality_true"] == 1.5 and s["cardinality_predicted"] == 1.5


def test_head_fit_is_one_logistic_regression_per_label():
    gen = torch.Generator().manual_seed(0)
    feats = torch.randn(300, 6, generator=gen)
    y = torch.stack([feats[:, 0] > 0, feats[:, 1] + feats[:, 2] > 0.5], 1).to(torch.uint8)
    w, b = fit_linear(feats, y, 2, l2=1e-3)
    decided = (feats @ w.T + b) > 0
    assert (decided == y.bool()).float().mean() > 0.97


# ---------------------------------------------------------------- training
def test_resume_of_a_multilabel_run_matches_uninterrupted(small_table, tmp_path):
    reference = train(_tiny(small_table, tmp_path / "ref"), progress=False)
    keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "val_map", "lr"]

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(_tiny(small_table, tmp_path / "cut"), progress=False, on_epoch_end=stop_after_two)
    resumed = resume(tmp_path / "cut", progress=False)
    assert [[h[k] for k in keys] for h in resumed.history] == [
        [h[k] for k in keys] for h in reference.history
    ]
    assert "val_map" in (tmp_path / "cut" / "history.csv").read_text().splitlines()[0]


def test_class_weights_auto_become_positive_weights(small_table, tmp_path):
    # The same pictures with a rare label (blue on every tenth): its positives weigh ~9.
    rows = ["file,labels"] + [f"{i:04d}.png,red{' blue' if i % 10 == 0 else ''}"
                              for i in range(160)]  # fmt: skip
    rare = small_table.parent / "rare.csv"
    rare.write_text("\n".join(rows) + "\n")
    run = train(_tiny(rare, tmp_path / "w", epochs=1, class_weights="auto"), progress=False)
    plain = train(_tiny(rare, tmp_path / "p", epochs=1), progress=False)
    assert run.history[0]["train_loss"] > plain.history[0]["train_loss"]


def test_fine_tuning_from_a_bundle_fits_a_multilabel_head_first(small_table, tiny_bundle, tmp_path):
    cfg = resolve("seed-a", data=str(small_table), out=str(tmp_path / "ft"), init=str(tiny_bundle),
                  epochs=1, batch_size=16, seed=0, threads=1)  # fmt: skip
    run = train(cfg, progress=False)
    head, tuned = run.history
    assert head["epoch"] == 0 and head["lr"] is None  # the head fit by L-BFGS, per label
    assert head["val_map"] is not None and tuned["val_map"] is not None
    meta = load_bundle(run.bundle_path).metadata
    assert meta.multi_label and meta["classes"] == sorted(NAMES)


@pytest.fixture(scope="module")
def trained(table, tmp_path_factory):
    cfg = resolve("fast", data=str(table), out=str(tmp_path_factory.mktemp("run") / "run"),
                  epochs=4, seed=0)  # fmt: skip
    return train(cfg, progress=False)


@pytest.mark.slow
def test_fast_recipe_learns_mosaics_and_writes_a_multilabel_bundle(trained):
    m = trained.metrics
    assert m["test"]["map"] >= TARGET_MAP
    assert m["test"]["micro_f1"] >= 0.9 and m["test"]["macro_f1"] >= 0.9
    assert "val_map" in trained.history[-1]
    assert "test mAP" in run_summary(trained) and "macro F1" in run_summary(trained)
    meta = load_bundle(trained.bundle_path).metadata
    assert meta["task"] == "multi_label" and meta.multi_label
    section = meta["multi_label"]
    assert len(section["thresholds"]) == 4 and section["calibration"]["method"] == "platt"
    assert m["calibration"]["ece_after"] <= m["calibration"]["ece_before"]
    # Predictor decides with the bundle's thresholds: new mosaics get their own labels.
    rng = np.random.default_rng(99)
    drawn = [mosaic(rng) for _ in range(20)]
    found = Predictor.load(trained.bundle_path).predict_labels(np.stack([p for p, _ in drawn]))
    right = sum(sorted(lab for lab, _ in f.labels) == sorted(labels)
                for f, (_, labels) in zip(found, drawn, strict=True))  # fmt: skip
    assert right >= 16


@pytest.mark.slow
def test_evaluate_a_multilabel_bundle(trained, table, tmp_path, capsys):
    out = tmp_path / "report"
    argv = ["-q", "evaluate", str(trained.bundle_path), "--data", str(table), "--out", str(out),
            "--tta-sample", "7", "--train-sample", "5", "--gradcam-label", "green",
            "--splits", "train,val,test"]  # fmt: skip
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "mAP" in stdout and "per label" in stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["task"] == "multi_label"
    test = next(r for r in metrics["summary"] if r["split"] == "test" and not r["tta"])
    tta = next(r for r in metrics["summary"] if r["split"] == "test" and r["tta"])
    assert tta["images"] == 7 < test["images"]
    assert f"TTA on a seeded sample of 7 of the test split's {test['images']:,} images" in (
        " ".join(metrics["notes"])
    )
    # What was left out to save time is said, as for single-label models.
    train = next(r for r in metrics["summary"] if r["split"] == "train")
    assert train["images"] == 5
    assert "train split: a seeded sample of 5 of its " in " ".join(metrics["notes"])
    assert (
        "TTA on the test split only (--tta-splits train,val,test adds train, val)"
        in (metrics["notes"])
    )
    # evaluate scores the bundle the way training's end did: the same numbers.
    assert test["map"] == pytest.approx(trained.metrics["test"]["map"], abs=1e-4)
    assert test["micro_f1"] == pytest.approx(trained.metrics["test"]["micro_f1"], abs=1e-4)
    assert sorted(r["label"] for r in metrics["per_label"]) == sorted(NAMES)
    row = metrics["per_label"][0]
    assert row["tp"] + row["fn"] == row["support"]
    for name in ("pr_curves.png", "largest_errors.csv", "per_label.csv", "gradcam_label.png"):
        assert (out / name).is_file(), name
    html = (out / "report.html").read_text()
    assert "Precision-recall curves" in html and "Grad-CAM of green" in html
    argv[argv.index("green")] = "purple"
    code, _, err = run([*argv[:-2], "--splits", "test"], capsys)
    assert code == 2 and "not one of the model's labels" in err


def test_gradcam_label_is_refused_for_single_label_models(tiny_bundle, tmp_path, capsys):
    from helpers import write_image_folder

    data = write_image_folder(tmp_path / "ds", classes=["class0", "class1"], per_class=4)
    argv = ["-q", "evaluate", str(tiny_bundle), "--data", str(data), "--no-tta",
            "--gradcam-label", "class0", "--out", str(tmp_path / "r")]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 2 and "for multi-label models" in err


def test_tune_maximises_validation_map(small_table, tmp_path):
    pytest.importorskip("optuna")
    from imageclf.tuning.tuner import tune

    space = {"lr": {"low": 1e-3, "high": 1e-2, "log": True}, "batch_size": 16,
             "widths": [8, 16, 16], "translate": 0}  # fmt: skip
    result = tune("fast", data=str(small_table), trials=1, epochs=2, space=space, threads=1,
                  out=str(tmp_path / "study"), progress=False)  # fmt: skip
    metrics = json.loads((tmp_path / "study" / "trials" / "0000" / "metrics.json").read_text())
    assert result.best_value == pytest.approx(metrics["val"]["map"])
    assert not math.isnan(result.best_value)
    with pytest.raises(Exception, match="does not apply to multi-label"):
        tune("fast", data=str(small_table), trials=1, epochs=1, space=space, threads=1,
             out=str(tmp_path / "s2"), progress=False, objective="accuracy")  # fmt: skip
