import numpy as np
import pytest

from imageclf.data import TEST, TRAIN, Dataset, make_split
from imageclf.errors import DataError


def _dataset(n_per_class=100, classes=4, with_test=True):
    labels = np.repeat(np.arange(classes), n_per_class)
    partition = np.zeros(len(labels), np.uint8)
    if with_test:
        partition[np.arange(len(labels)) % 5 == 0] = TEST
    images = np.zeros((len(labels), 2, 2, 3), np.uint8)
    return Dataset(images, labels, partition, [f"c{i}" for i in range(classes)], "mem", "fp")


def test_official_split_uses_source_test_set_and_stratified_val():
    ds = _dataset()
    s = make_split(ds, "official", seed=1, val_size=40)
    assert set(s.test) == set(np.flatnonzero(ds.partition == TEST))
    assert len(s.val) == 40 and np.bincount(ds.labels[s.val]).tolist() == [10] * 4
    assert set(s.train).isdisjoint(s.val) and set(s.train) | set(s.val) == set(
        np.flatnonzero(ds.partition == TRAIN)
    )


def test_70_15_15_is_stratified_and_disjoint():
    ds = _dataset(n_per_class=200, with_test=False)
    s = make_split(ds, "70-15-15", seed=0)
    assert s.sizes() == {"train": 560, "val": 120, "test": 120}
    for part in (s.train, s.val, s.test):
        counts = np.bincount(ds.labels[part])
        assert counts.max() - counts.min() <= 1
    all_idx = np.concatenate([s.train, s.val, s.test])
    assert len(np.unique(all_idx)) == len(ds)


def test_split_is_deterministic_and_seed_dependent():
    ds = _dataset()
    a, b = make_split(ds, "official", seed=3), make_split(ds, "official", seed=3)
    assert a.digest() == b.digest()
    assert make_split(ds, "official", seed=4).digest() != a.digest()


def test_subset_is_stratified_prefix_and_nested():
    ds = _dataset(n_per_class=100, with_test=False)
    small = make_split(ds, "70-15-15", seed=0, subset=20)
    large = make_split(ds, "70-15-15", seed=0, subset=40)
    assert len(small.train) == 20 and np.bincount(ds.labels[small.train]).tolist() == [5] * 4
    assert set(small.train) <= set(large.train)
    np.testing.assert_array_equal(small.test, large.test)  # evaluation sets do not move


def test_auto_and_errors():
    assert make_split(_dataset(with_test=False), "auto").name == "70-15-15"
    assert make_split(_dataset(), "auto").name == "official"
    with pytest.raises(DataError, match="no val/ or test/ folder"):
        make_split(_dataset(with_test=False), "official")
    with pytest.raises(DataError, match="unknown split"):
        make_split(_dataset(), "80-20")
    with pytest.raises(DataError, match="no images of"):
        make_split(_dataset(), "official", subset=2)
