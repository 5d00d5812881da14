import numpy as np
import pytest

from imageclf.data import TEST, TRAIN, Dataset, Split, make_split
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


# ---------------------------------------------------------------- found by mutation testing
def _imbalanced(counts=(200, 100, 50)):
    labels = np.repeat(np.arange(len(counts)), counts)
    images = np.zeros((len(labels), 1, 1, 3), np.uint8)
    partition = np.zeros(len(labels), np.uint8)
    return Dataset(images, labels, partition, [f"c{i}" for i in range(len(counts))], "mem", "fp")


@pytest.mark.parametrize("subset", [7, 35, 70, 140])
def test_subset_keeps_class_proportions_when_classes_differ_in_size(subset):
    ds = _imbalanced()
    split = make_split(ds, "70-15-15", seed=0)
    shares = np.bincount(ds.labels[split.train], minlength=3) / len(split.train)
    taken = make_split(ds, "70-15-15", seed=0, subset=subset).train
    counts = np.bincount(ds.labels[taken], minlength=3)
    assert np.abs(counts - shares * subset).max() <= 1, counts


def test_subset_is_a_random_sample_within_each_class():
    """Not the first images of each class in file order (that would be, say, one photo
    session of each class)."""
    ds = _dataset(n_per_class=100, with_test=False)
    split = make_split(ds, "70-15-15", seed=0)
    taken = make_split(ds, "70-15-15", seed=0, subset=20).train
    for c in range(4):
        pool = np.sort(split.train[ds.labels[split.train] == c])
        mine = np.sort(taken[ds.labels[taken] == c])
        assert not np.array_equal(mine, pool[: len(mine)])
    other = make_split(ds, "70-15-15", seed=1, subset=20).train
    assert set(other) != set(taken)


@pytest.mark.parametrize("train_images, expected", [(400, 40), (1000, 100), (60000, 5000)])
def test_official_default_val_size(train_images, expected):
    """5,000 for CIFAR-10's 50,000 (and more); a tenth of train for smaller datasets."""
    labels = np.arange(train_images + 10) % 10
    partition = np.zeros(len(labels), np.uint8)
    partition[-10:] = TEST
    ds = Dataset(np.zeros((len(labels), 1, 1, 3), np.uint8), labels, partition,
                 [f"c{i}" for i in range(10)], "mem", "fp")  # fmt: skip
    split = make_split(ds, "official")
    assert split.sizes() == {"train": train_images - expected, "val": expected, "test": 10}


def test_val_size_limits():
    ds = _dataset()
    train_pool = int((ds.partition == TRAIN).sum())
    with pytest.raises(DataError, match=f"--val-size {train_pool} leaves no training images"):
        make_split(ds, "official", val_size=train_pool)
    assert make_split(ds, "official", val_size=0).sizes()["val"] == 0
    with pytest.raises(DataError, match="--subset must be a positive number"):
        make_split(ds, "official", subset=0)


def test_messages_name_the_choices_and_missing_classes():
    with pytest.raises(DataError, match="choose one of auto, official, 70-15-15"):
        make_split(_dataset(), "80-20")
    with pytest.raises(DataError, match=r"has no images of: c\d, c\d, c\d$"):  # 3 of 4
        make_split(_dataset(with_test=False), "70-15-15", subset=1)
    assert make_split(_dataset()).name == "official"  # the default is auto


def test_describe_records_what_a_run_needs_to_recreate_the_split():
    split = make_split(_dataset(), "official", seed=7, val_size=40)
    assert split.describe() == {
        "name": "official",
        "seed": 7,
        "sizes": {"train": 280, "val": 40, "test": 80},
        "digest": split.digest(),
    }


def test_digest_is_stable_across_versions():
    """Bundles record this digest and ``evaluate`` compares it with the split it
    re-creates: changing how it is computed would make every old bundle's split look
    different. Change the expected value only together with a migration."""
    split = Split("official", 0, np.array([3, 1, 2]), np.array([0]), np.array([4, 5]))
    assert split.digest() == "e4c04ce63b42f006"
    moved = Split("official", 0, np.array([3, 1]), np.array([0, 2]), np.array([4, 5]))
    assert moved.digest() != split.digest()
