"""The shipped default model, re-scored: what it claims on the CIFAR-10 mirror, and what a
user of the served app sees on real photos (issue #24's targets, below).

Every number is measured through ``Predictor`` or the web service, never the training
loop, so a change anywhere on the served path that costs accuracy fails here.
"""

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from imageclf import Predictor
from imageclf.calibration import ece
from imageclf.data import TEST, load_dataset
from imageclf.data.cifar import CIFAR10_CLASSES
from imageclf.device import cpu_has_fast_bf16, resolve_precision
from imageclf.models.bundle import load_bundle
from imageclf.prediction.predictor import default_model_path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))
import real_photos

# What the shipped model measures, held so no change on the served path loses it. "Doubted"
# is either answer that is no confident headline: "not sure" or "not one of its classes"
# (the ImageNet gate's, prediction/gate.py). The models before it: the same net without
# the gate 86.8% real photos, 11.4% of right answers and 72.0% of others doubted; the 96 px
# Lite0 92.1% mirror, 85.7%, 13.2%, 69.2%; the 32 px net 91.1%, 83.9%, 24.0%, 70.6%.
MIRROR_ACCURACY = 0.93  # CIFAR-10 JPEG mirror, test, no TTA (measured 93.14%)
MIRROR_ECE = 0.03  # after temperature scaling (measured 0.017)
# realphotos-dev, photos of the ten classes: measured 93.41% (255 of 273), issue 24's 93%
# with one photo to spare; the floor allows one more to tip on another CPU's arithmetic.
REAL_ACCURACY = 0.925
# Every class at least issue 24's 85% (measured: frog 86.4%, 19 of 22, the lowest; no
# class's answers nearer a tie than 0.02 in probability, so no CPU's rounding tips one).
REAL_EVERY_CLASS = 0.85
RIGHT_DOUBTED = 0.15  # right answers doubted at most: issue 24's bound (measured 10.2%)
OTHERS_DOUBTED = 0.95  # out-of-class photos doubted at least: target 85% (measured 99.3%)
MAX_BYTES = 12_000_000
# Issue #24's target not reached by this model (docs/benchmarks.md says how far and
# what would close the rest); reaching it fails its test until the floor is promoted.
TARGET = {"mirror": 0.95}


def test_bundled_model_metadata():
    p = Predictor.load()
    meta = p.metadata
    assert p.classes == list(CIFAR10_CLASSES)
    assert meta.architecture == "efficientnet-lite0" and "pretrained" in meta["start"]
    sizes = meta["split"]["sizes"]
    assert sizes["train"] + sizes["val"] == 50000 and sizes["test"] == 10000
    assert {"test", "compute", "calibration", "train_seconds"} <= set(meta["metrics"])
    # How to make it again, and on what: the command, the machine, the time it took.
    assert meta["provenance"]["command"].startswith("imageclf train --pretrained")
    assert meta["metrics"]["compute"]["cpu_capability"]
    # The temperature was fitted on the validation split, never on test.
    assert meta["calibration"]["val_images"] == sizes["val"] > 0
    assert meta.temperature == p.temperature != 1.0
    assert 0 < meta.unsure_below < 1
    # One calibration: the copy `info` prints from the metrics says what predictions use.
    assert meta["metrics"]["calibration"] == meta["calibration"]


def test_bundled_model_fits_the_package_limit():
    """Weights stored in half precision (``imageclf export --format fp16``), computed in fp32."""
    path = default_model_path()
    assert path.stat().st_size <= MAX_BYTES
    stored = load_bundle(path).state_dict.values()
    assert {t.dtype for t in stored if t.is_floating_point()} == {torch.float16}
    assert all(p.dtype == torch.float32 for p in Predictor.load().model.parameters())


@pytest.fixture(scope="module")
def mirror_test(shared_archive):
    p = Predictor.load()
    ds = load_dataset(shared_archive, image_size=p.input_size, progress=False)
    test = ds.partition == TEST
    return ds.images[test], ds.labels[test]


@pytest.mark.slow
def test_bundled_model_scores_its_targets_on_the_mirror(mirror_test):
    images, labels = mirror_test
    p = Predictor.load()
    probs = p.predict_proba(images)
    accuracy = float((probs.argmax(1) == labels).mean())
    assert accuracy >= MIRROR_ACCURACY
    assert accuracy < TARGET["mirror"]  # reached: promote MIRROR_ACCURACY to the target
    claimed = p.metadata["metrics"]["test"]["accuracy"]
    # Training scored it under bf16 autocast; Predictor runs fp32 from fp16-stored weights:
    # a handful of the 10,000 images may tip either way.
    assert accuracy == pytest.approx(claimed, abs=2e-3)
    measured = ece(probs.astype(np.float64), labels)
    assert measured <= MIRROR_ECE
    assert measured == pytest.approx(p.metadata["calibration"]["test"]["ece_after"], abs=3e-3)


@pytest.mark.slow
def test_bf16_only_where_native_and_then_as_accurate(mirror_test):
    """``evaluate --precision auto`` computes in bf16 where the CPU has it natively; there
    it must score within 0.1 point of fp32. Elsewhere auto must mean fp32."""
    if not cpu_has_fast_bf16():
        assert resolve_precision(torch.device("cpu"), "auto") is None
        return
    images, labels = mirror_test
    fp32 = Predictor.load().predict_proba(images).argmax(1)
    bf16_predictor = Predictor.load(precision="auto")
    assert bf16_predictor.precision == "bfloat16"
    bf16 = bf16_predictor.predict_proba(images).argmax(1)
    assert abs((fp32 == labels).mean() - (bf16 == labels).mean()) <= 0.001


@pytest.fixture(scope="module")
def served_on_real_photos(realphotos_dev):
    photos = real_photos.folders(realphotos_dev / "classes")
    others = real_photos.folders(realphotos_dev / "others")
    return real_photos.score_model(str(default_model_path()), photos, others)


@pytest.mark.slow
def test_bundled_model_on_real_photos_through_the_served_path(served_on_real_photos):
    inside, outside = served_on_real_photos["in_class"], served_on_real_photos["out_of_class"]
    assert (inside["photos"], outside["photos"]) == (273, 143)
    assert inside["accuracy"] >= REAL_ACCURACY
    assert inside["doubted_when_right"] <= RIGHT_DOUBTED
    assert outside["doubted"] >= OTHERS_DOUBTED


@pytest.mark.slow
def test_every_class_on_real_photos_through_the_served_path(served_on_real_photos):
    per_class = served_on_real_photos["in_class"]["per_class"]
    worst = min(per_class, key=lambda c: per_class[c]["accuracy"])
    assert per_class[worst]["accuracy"] >= REAL_EVERY_CLASS, worst


def test_bundled_model_carries_the_imagenet_gate():
    """The package's CIFAR-10 map, at the threshold ``imageclf gate`` recorded."""
    from imageclf.prediction.gate import read_map

    p = Predictor.load()
    assert p.gate is not None and p.gate.spec.outside_below == 0.25
    assert p.gate.spec.groups == read_map(None, p.classes)
    assert p.metadata["gate"]["added_by"].startswith("imageclf gate ")
