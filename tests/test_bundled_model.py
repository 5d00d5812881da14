"""The shipped default model loads with Predictor.load() and scores what it claims."""

import pytest

from imageclf import Predictor
from imageclf.data import TEST, load_dataset
from imageclf.data.readers import CIFAR10_CLASSES


def test_bundled_model_metadata():
    p = Predictor.load()
    meta = p.metadata
    assert p.classes == list(CIFAR10_CLASSES)
    assert meta["recipe"] == "fast" and meta["split"]["sizes"]["train"] == 50000
    assert {"test", "test_tta"} <= set(meta["metrics"])


@pytest.mark.slow
def test_bundled_model_scores_its_metadata_on_the_mirror(shared_archive):
    p = Predictor.load()
    ds = load_dataset(shared_archive, progress=False)
    test = ds.partition == TEST
    images, labels = ds.images[test], ds.labels[test]
    claimed = p.metadata["metrics"]
    for tta, key in ((False, "test"), (True, "test_tta")):
        accuracy = float((p.predict_proba(images, tta=tta).argmax(1) == labels).mean())
        assert round(accuracy, 4) == pytest.approx(claimed[key]["accuracy"], abs=1e-4), key
