"""Evaluation: metrics against hand-computed cases, the recorded split, ensembles, and a
full report whose numbers must agree between console, JSON, CSV and HTML."""

from __future__ import annotations

import copy
import csv
import json
import math
import re

import numpy as np
import pytest
from helpers import make_tiny_bundle, run_cli, write_image_folder

from imageclf import Predictor
from imageclf.cli import main
from imageclf.errors import UserInputError
from imageclf.evaluation.evaluator import ensemble_log_probs, evaluate, load_predictors
from imageclf.evaluation.interpretation import Interpretation
from imageclf.evaluation.report import model_title, write_report
from imageclf.evaluation.report_metrics import fmt, report_rows
from imageclf.evaluation.views import parse_splits
from imageclf.prediction.predictor import default_model_path
from imageclf.training.loop import train
from imageclf.training.resolve import resolve

# ---------------------------------------------------------------- hand-computed metrics
PROBS = [
    [0.7, 0.2, 0.1],  # true a, predicted a
    [0.1, 0.8, 0.1],  # true b, predicted b
    [0.6, 0.3, 0.1],  # true b, predicted a (wrong)
    [0.2, 0.2, 0.6],  # true c, predicted c
    [0.1, 0.1, 0.8],  # true a, predicted c (wrong, confidently)
    [0.3, 0.6, 0.1],  # true b, predicted b
]
TARGETS = [0, 1, 1, 2, 0, 1]


@pytest.fixture()
def interp() -> Interpretation:
    return Interpretation.from_probs(PROBS, TARGETS, ["a", "b", "c"])


def test_accuracy_loss_and_confusion_by_hand(interp):
    assert interp.accuracy == pytest.approx(4 / 6)
    expected_loss = -np.mean(np.log([0.7, 0.8, 0.3, 0.6, 0.1, 0.6]))
    assert interp.mean_loss == pytest.approx(expected_loss)
    assert interp.confusion_matrix().tolist() == [[1, 0, 1], [1, 2, 0], [0, 0, 1]]
    np.testing.assert_allclose(
        interp.confusion_matrix(normalize=True), [[0.5, 0, 0.5], [1 / 3, 2 / 3, 0], [0, 0, 1]]
    )


def test_classification_report_by_hand(interp):
    rows = {r["class"]: r for r in report_rows(interp)}
    assert rows["a"] == {"class": "a", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rows["b"] == {"class": "b", "precision": 1.0, "recall": 0.6667, "f1": 0.8, "support": 3}
    assert rows["c"] == {"class": "c", "precision": 0.5, "recall": 1.0, "f1": 0.6667, "support": 1}
    macro = rows["macro avg"]
    assert macro["precision"] == round(2 / 3, 4)
    assert macro["recall"] == round((0.5 + 2 / 3 + 1) / 3, 4)
    assert macro["f1"] == round((0.5 + 0.8 + 2 / 3) / 3, 4)
    assert macro["support"] == 6
    weighted = rows["weighted avg"]
    assert weighted["precision"] == 0.75  # (2*0.5 + 3*1 + 1*0.5) / 6
    assert weighted["recall"] == round(4 / 6, 4)


def test_most_confused_top_losses_and_calibration_by_hand(interp):
    assert interp.most_confused() == [(0, 2, 1), (1, 0, 1)]  # ties: by true, then predicted
    assert interp.top_losses().tolist() == [4, 2]  # p(true) 0.1 before 0.3; only wrong ones
    ece, bins = interp.calibration(n_bins=2)  # everything lands in (0.5, 1]
    assert ece == pytest.approx(abs(4 / 6 - 4.1 / 6))
    assert [b["count"] for b in bins] == [0, 6]
    ece, bins = interp.calibration(n_bins=4)
    # (0.5, 0.75]: confidences .7 .6 .6 .6, 3 of 4 right; (0.75, 1]: .8 .8, 1 of 2 right.
    assert [b["count"] for b in bins] == [0, 0, 4, 2]
    assert ece == pytest.approx(4 / 6 * abs(0.75 - 0.625) + 2 / 6 * abs(0.5 - 0.8))


def test_parse_splits():
    assert parse_splits("test,val") == ["val", "test"]
    assert parse_splits(None) is None
    with pytest.raises(UserInputError, match="comma-separated"):
        parse_splits("test,holdout")


# ---------------------------------------------------------------- ensembles
def test_ensemble_averages_probabilities(tmp_path):
    a = make_tiny_bundle(tmp_path / "a.safetensors", "seed-a")
    d = make_tiny_bundle(tmp_path / "d.safetensors", "seed-d")
    predictors = load_predictors([a, d])
    images = np.random.default_rng(0).integers(0, 255, (7, 32, 32, 3), dtype=np.uint8)
    mean = (predictors[0].predict_proba(images) + predictors[1].predict_proba(images)) / 2
    np.testing.assert_allclose(np.exp(ensemble_log_probs(predictors, images)), mean, atol=1e-6)


def test_ensemble_with_different_classes_is_a_clear_error(tmp_path, capsys):
    a = make_tiny_bundle(tmp_path / "a.safetensors")
    b = make_tiny_bundle(tmp_path / "b.safetensors", classes=["cat", "dog"])
    with pytest.raises(UserInputError, match="same classes"):
        load_predictors([a, b])
    code, _, err = run_cli(["-q", "evaluate", str(a), str(b), "--data", str(tmp_path)], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "same classes" in lines[0] and "b.safetensors" in lines[0] and "dog" in lines[0]


# ---------------------------------------------------------------- a real run, end to end


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    root = tmp_path_factory.mktemp("evalrun")
    data = write_image_folder(root / "ds", per_class=12)  # train 12 + test 6 per class
    cfg = resolve(
        "seed-a",
        data=str(data),
        out=str(root / "run"),
        epochs=2,
        batch_size=8,
        seed=0,
        split="official",
        val_size=6,
        subset=24,
    )
    return data, train(cfg, progress=False)


@pytest.fixture(scope="module")
def report(trained, tmp_path_factory):
    data, run = trained
    out = tmp_path_factory.mktemp("report") / "eval"
    with pytest.raises(SystemExit) as exc:
        main(["-q", "evaluate", str(run.bundle_path), "--data", str(data), "--out", str(out)])
    assert exc.value.code == 0
    return out, run


def test_training_writes_curves(trained):
    assert (trained[1].run_dir / "curves.png").stat().st_size > 1000


def test_report_uses_the_recorded_split(report):
    out, run = report
    metrics = json.loads((out / "metrics.json").read_text())
    recorded = Predictor.load(run.bundle_path).metadata["split"]
    assert metrics["split"]["digest"] == recorded["digest"]
    assert metrics["split"]["origin"] == "recorded in the model bundle"
    assert metrics["split"]["sizes"] == {"train": 24, "val": 6, "test": 18}
    # TTA only on the headline split by default, and the report says how to ask for more.
    assert metrics["notes"] == [
        "TTA on the test split only (--tta-splits train,val,test adds train, val)"
    ]
    summary = {(r["split"], r["tta"]): r for r in metrics["summary"]}
    assert set(summary) == {("train", False), ("val", False), ("test", False), ("test", True)}
    # The same model, split and prediction path as training's own test evaluation.
    assert summary[("test", False)]["accuracy"] == round(run.metrics["test"]["accuracy"], 4)
    assert summary[("test", False)]["loss"] == pytest.approx(run.metrics["test"]["loss"], abs=2e-4)
    assert summary[("val", False)]["images"] == 6


def test_report_files_exist(report):
    out, _ = report
    for name in [
        "metrics.json",
        "report.html",
        "summary.csv",
        "classification_report.txt",
        "classification_report.csv",
        "classification_report.json",
        "confusion_matrix.csv",
        "confusion_matrix_normalized.csv",
        "confusion_matrix.png",
        "confusion_matrix_normalized.png",
        "most_confused.csv",
        "reliability.png",
        "samples.png",
        "samples_gradcam.png",
        "curves.png",
    ]:
        assert (out / name).stat().st_size > 0, name
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["files"]) <= {p.name for p in out.iterdir()}


def test_confusion_matrix_sums_and_supports(report, trained):
    out, _ = report
    metrics = json.loads((out / "metrics.json").read_text())
    counts = np.array(metrics["confusion_matrix"]["counts"])
    test_images = {r["split"]: r["images"] for r in metrics["summary"]}["test"]
    assert counts.sum() == test_images == 18
    supports = [r["support"] for r in metrics["classification_report"]["rows"][:-2]]
    assert counts.sum(1).tolist() == supports == [6, 6, 6]
    correct = np.trace(counts) / counts.sum()
    assert metrics["classification_report"]["accuracy"] == round(correct, 4)
    for row in metrics["confusion_matrix"]["row_normalized"]:
        assert sum(row) == pytest.approx(1, abs=1e-3)


def _read_csv(path):
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


def test_numbers_agree_between_json_csv_html_and_console(report, capsys):
    out, _ = report
    metrics = json.loads((out / "metrics.json").read_text())
    page = (out / "report.html").read_text()
    cells = re.findall(r'<td class="n">([^<]*)</td>', page)

    for row, line in zip(metrics["summary"], _read_csv(out / "summary.csv"), strict=True):
        for key in ("accuracy", "loss", "ece"):
            assert float(line[key]) == row[key] and line[key] == fmt(row[key])
            assert fmt(row[key]) in cells
        assert int(line["images"]) == row["images"]
    rows = metrics["classification_report"]["rows"]
    assert json.loads((out / "classification_report.json").read_text())["rows"] == rows
    text = (out / "classification_report.txt").read_text()
    for row, line in zip(rows, _read_csv(out / "classification_report.csv"), strict=True):
        assert line["class"] == row["class"] and int(line["support"]) == row["support"]
        for key in ("precision", "recall", "f1"):
            assert line[key] == fmt(row[key]) and float(line[key]) == row[key]
            assert fmt(row[key]) in cells
        numbers = f"{fmt(row['precision'])} {fmt(row['recall'])}".split()
        assert any(row["class"] in ln and all(n in ln for n in numbers) for ln in text.splitlines())
    matrix = _read_csv(out / "confusion_matrix.csv")
    classes = metrics["classes"]
    assert [[int(r[c]) for c in classes] for r in matrix] == metrics["confusion_matrix"]["counts"]
    ece = metrics["calibration"]["ece"]
    assert f"<b>{fmt(ece)}</b>" in page
    # The page is self-contained: every picture is inline, nothing is fetched.
    assert 'src="http' not in page and "src='http" not in page
    assert page.count("<img") == page.count('src="data:image/png;base64,') >= 6


KEYS = ("accuracy", "loss", "ece")


def test_console_summary_matches_json(tmp_path, tiny_bundle, capsys):
    """A random-weight model, so accuracy, loss and ECE differ and a swapped column shows."""
    data = write_image_folder(tmp_path / "ds", classes=["class0", "class1", "class2"])
    narrow = ["--splits", "test", "--no-tta", "--no-gradcam"]
    runs = {}
    for name, options in (("all", ["--tta-splits", "train,test"]), ("test", narrow)):
        out = tmp_path / name
        argv = ["-q", "evaluate", str(tiny_bundle), "--data", str(data), *options]
        code, printed, _ = run_cli([*argv, "--out", str(out)], capsys)
        assert code == 0
        runs[name] = (printed, json.loads((out / "metrics.json").read_text())["summary"])
    for printed, summary in runs.values():
        # Each console line, read back as text: split, TTA, images, accuracy, loss, ECE.
        table = [ln.split() for ln in printed.splitlines()]
        for row in summary:
            tta = "yes" if row["tta"] else "no"
            expected = [row["split"], tta, str(row["images"])] + [fmt(row[k]) for k in KEYS]
            assert table.count(expected) == 1, expected
            assert len({row[k] for k in KEYS}) == 3  # distinct, or the check above is blind
    # Asking for the test split alone computes the same row again.
    everything = {(r["split"], r["tta"]): r for r in runs["all"][1]}
    assert {("train", True), ("test", True)} < set(everything)
    assert runs["test"][1] == [everything[("test", False)]]
    assert not (tmp_path / "test" / "samples_gradcam.png").exists()


def test_other_data_with_a_subset_of_classes(tmp_path, tiny_bundle):
    data = write_image_folder(tmp_path / "ds", classes=["class0", "class3"], per_class=4)
    result = evaluate([tiny_bundle], data, splits=["test"], tta=False, progress=False)
    assert any("does not match the training data" in n for n in result.notes)
    assert result.detail.confusion_matrix().shape == (10, 10)
    assert len(result.detail) == 4  # the data's own test partition, whole
    assert set(result.detail.targets.tolist()) == {0, 3}
    assert math.isfinite(result.metrics["summary"][0]["loss"])
    # A random-weight model makes mistakes: the top-loss views exist and are all wrong.
    page = write_report(result, tmp_path / "out").html
    assert result.metrics["top_losses"] and not any(
        e["correct"] for e in result.metrics["top_losses"]
    )
    for name in ("top_losses.png", "top_losses_gradcam.png", "samples_gradcam.png"):
        assert (page.parent / name).is_file()
    assert "No history.json" in page.read_text()


def test_the_bundled_model_is_named_by_its_file(tmp_path):
    """Without a model argument the report says which file it scored (it said
    "((bundled default model))")."""
    data = write_image_folder(tmp_path / "ds", classes=["cat", "dog"], per_class=2)
    result = evaluate(None, data, splits=["test"], tta=False, progress=False)
    assert result.metrics["models"][0]["path"] == str(default_model_path())
    title = model_title(result.metrics)
    assert title == f"model: efficientnet-lite0-cifar10 ({default_model_path()})"


def test_data_with_unknown_classes_is_refused(tmp_path, tiny_bundle, capsys):
    data = write_image_folder(tmp_path / "ds", per_class=2)  # cat/dog/frog
    code, _, err = run_cli(["-q", "evaluate", str(tiny_bundle), "--data", str(data)], capsys)
    assert code == 2 and "classes the model does not know: cat, dog, frog" in err


def test_report_escapes_names_and_leaves_the_result_alone(tmp_path):
    """The page comes from a template: names from data and bundles are escaped, and
    writing the report neither edits the evaluation nor lists files it did not write."""
    classes = ["a<img src=x onerror=alert(1)>", "b&c"]  # folder names: no slash
    bundle = make_tiny_bundle(tmp_path / "m.safetensors", classes=classes)
    data = write_image_folder(tmp_path / "ds", classes=classes, per_class=2)
    result = evaluate([bundle], data, splits=["test"], tta=False, progress=False)
    before = (copy.deepcopy(result.metrics), list(result.notes))
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "stale.csv").write_text("from an earlier run")
    report = write_report(result, tmp_path / "out", gradcam=False)
    assert (result.metrics, result.notes) == before
    page = report.html.read_text()
    assert "<img src=x" not in page and "a&lt;img src=x onerror=alert(1)&gt;" in page
    assert "b&amp;c" in page
    assert "stale.csv" not in report.files
    assert all((tmp_path / "out" / name).is_file() for name in report.files)
    metrics = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert metrics["files"] == report.files and metrics["notes"] == report.notes


def test_tta_everywhere_and_a_train_sample_on_request(trained, tmp_path, capsys):
    data, run = trained
    out = tmp_path / "eval"
    args = ["--tta-splits", "train,val,test", "--train-sample", "10", "--no-gradcam"]
    with pytest.raises(SystemExit) as exc:
        main(
            ["-q", "evaluate", str(run.bundle_path), "--data", str(data), "--out", str(out), *args]
        )
    assert exc.value.code == 0
    metrics = json.loads((out / "metrics.json").read_text())
    summary = {(r["split"], r["tta"]): r["images"] for r in metrics["summary"]}
    assert summary == {
        (s, t): n for s, n in (("train", 10), ("val", 6), ("test", 18)) for t in (False, True)
    }
    assert metrics["notes"] == [
        "train split: a seeded sample of 10 of its 24 images (--train-sample all scores every one)"
    ]
    assert metrics["models"][0]["precision"] in ("fp32", "bfloat16")
    assert re.search(r"^wall time: \d+ s$", capsys.readouterr().out, re.M)


def test_tta_on_a_seeded_sample_says_its_paired_score(trained):
    """TTA's row covers a seeded sample; the note gives the same images' score without TTA,
    so its gain is read on the same pictures."""
    data, run = trained
    runs = [
        evaluate([run.bundle_path], data, tta_splits=["val", "test"], tta_sample=5,
                 train_sample=None, progress=False)
        for _ in range(2)
    ]  # fmt: skip
    result = runs[0]
    sizes = {key: len(interp) for key, interp in result.interpretations.items()}
    assert sizes == {("train", False): 24, ("val", False): 6, ("val", True): 5,
                     ("test", False): 18, ("test", True): 5}  # fmt: skip
    plain, tta = result.interpretations[("test", False)], result.interpretations[("test", True)]
    assert set(tta.indices) < set(plain.indices)
    assert list(tta.indices) == list(runs[1].interpretations[("test", True)].indices)
    same = plain.correct[np.isin(plain.indices, tta.indices)].mean()
    assert (
        "TTA on a seeded sample of 5 of the test split's 18 images (--tta-sample all scores "
        f"every one); without TTA those images score {same:.2%}"
    ) in result.notes
    assert any(
        n.startswith("TTA on a seeded sample of 5 of the val split's 6") for n in result.notes
    )
    everything = evaluate([run.bundle_path], data, splits=["test"], tta_sample=None, progress=False)
    assert len(everything.interpretations[("test", True)]) == 18
    assert not any("seeded sample" in note for note in everything.notes)


@pytest.mark.parametrize("flag", ["--train-sample", "--tta-sample"])
@pytest.mark.parametrize("value", ["0", "-3", "many"])
def test_samples_must_be_a_count_or_all(flag, value, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", flag, value])
    assert exc.value.code == 2
    assert "neither a positive number of images nor 'all'" in capsys.readouterr().err


def test_forward_batches_shrink_as_pictures_grow():
    """Big activations cost page faults: 128 pictures of 96 px ran twice as fast as 500."""
    from imageclf.prediction.inference import batch_for

    assert (batch_for(32), batch_for(96), batch_for(512)) == (500, 128, 16)


# ---------------------------------------------------------------- --others (issue 26)
def test_detection_rates_by_hand():
    from imageclf.calibration import detection_rates

    found = detection_rates(np.array([3.0, 4, 5, 6]), np.array([1.0, 2, 5]), 4.5)
    # Outside flagged: 1 and 2 of 3; inside: 3 and 4 of 4. AUROC: of the 12 (outside,
    # inside) pairs, 9 have the outside picture less familiar and one ties (5, 5).
    assert found["outside_flagged"] == round(2 / 3, 4)
    assert found["inside_flagged"] == 0.5
    assert found["auroc"] == round(9.5 / 12, 4)


def test_out_of_class_uses_the_bundles_threshold(tmp_path):
    from imageclf.evaluation.outside import out_of_class

    calibration = {"temperature": 1.0, "threshold": 0.0, "familiar_above": 1e9}
    bundle = make_tiny_bundle(tmp_path / "m.safetensors", calibration=calibration)
    predictor = Predictor.load(bundle)
    rng = np.random.default_rng(0)
    inside = rng.integers(0, 256, (8, 32, 32, 3), dtype=np.uint8)
    others = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    found = out_of_class(predictor, inside, np.zeros(8, int), others)
    assert found["outside_flagged"] == 1.0 and found["inside_flagged"] == 1.0
    assert found["outside_images"] == 5 and found["inside_images"] == 8
    assert 0 <= found["auroc"] <= 1 and found["familiar_above"] == 1e9
    labels = predictor.calibrated_logits(inside).argmax(axis=1)  # every answer right
    assert out_of_class(predictor, inside, labels, others)["right_flagged"] == 1.0


def test_evaluate_others_reports_the_detection_in_console_and_metrics(trained, tmp_path, capsys):
    data, run = trained
    others = tmp_path / "others"
    others.mkdir()
    rng = np.random.default_rng(1)
    from PIL import Image

    for index in range(5):
        noise = rng.integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(noise).save(others / f"{index}.png")
    (others / "broken.jpg").write_bytes(b"not a picture")
    out = tmp_path / "eval"
    with pytest.raises(SystemExit) as exc:
        main(["evaluate", str(run.bundle_path), "--data", str(data), "--out", str(out),
              "--others", str(others), "--no-gradcam"])  # fmt: skip
    assert exc.value.code == 0
    printed = capsys.readouterr().out
    assert "out of class (" in printed and "AUROC" in printed
    found = json.loads((out / "metrics.json").read_text())["out_of_class"]
    assert found["outside_images"] == 5 and found["unreadable"] == 1
    assert found["split"] == "test" and 0 <= found["auroc"] <= 1
    # This tiny run held out too few pictures to calibrate: AUROC, and says why no rate.
    assert found["outside_flagged"] is None and "threshold" in found["note"]
