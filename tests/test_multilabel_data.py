"""Multi-label data (``Dataset.labels`` multi-hot): iterative stratification (Sechidis et
al. 2011) for the 70-15-15, official and subset splits, the cache round trip, counts,
and the contact sheet; single-label splits are untouched (``test_splits``)."""

from __future__ import annotations

import numpy as np
import pytest

from imageclf.data import TEST, TRAIN, Dataset, cache, make_split
from imageclf.data.contact_sheet import pick, write_contact_sheet
from imageclf.data.stratify import combination_ids, iterative_take
from imageclf.errors import DataError

CLASSES = ["a", "b", "c", "d", "e"]


def _labels(n: int, seed: int = 0) -> np.ndarray:
    """Labels from common (40%) to rare (2%), correlated: e implies a."""
    rng = np.random.default_rng(seed)
    hot = (rng.random((n, 5)) < np.array([0.4, 0.3, 0.15, 0.08, 0.02])).astype(np.uint8)
    hot[hot[:, 4] == 1, 0] = 1
    return hot


def _dataset(labels: np.ndarray, partition: np.ndarray | None = None) -> Dataset:
    n = len(labels)
    part = np.zeros(n, np.uint8) if partition is None else partition
    images = np.zeros((n, 8, 8, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(n) % 256
    return Dataset(images, labels, part, CLASSES, "synthetic", "k" * 32)


def test_dataset_representation():
    labels = _labels(50)
    ds = _dataset(labels)
    assert ds.multi_label and not _dataset_single().multi_label
    assert ds.counts() == dict(zip(CLASSES, labels.sum(0).tolist(), strict=True))
    with pytest.raises(ValueError, match="one column per class"):
        Dataset(ds.images, labels[:, :3], ds.partition, CLASSES, "s", "k")


def _dataset_single() -> Dataset:
    return Dataset(np.zeros((4, 8, 8, 3), np.uint8), np.array([0, 1, 0, 1]),
                   np.zeros(4, np.uint8), ["x", "y"], "s", "k")  # fmt: skip


def test_iterative_stratification_shares_every_label():
    labels = _labels(4000)
    split = make_split(_dataset(labels), "70-15-15", seed=0)
    assert split.sizes() == {"train": 2800, "val": 600, "test": 600}
    together = np.concatenate([split.train, split.val, split.test])
    assert sorted(together.tolist()) == list(range(4000))  # each picture once
    whole = labels.sum(0)
    for part, share in ((split.train, 0.70), (split.val, 0.15), (split.test, 0.15)):
        got = labels[part].sum(0)
        # every label within 1.5 pictures of its share, the rare one included (a random
        # split's test share of the commonest label has a standard deviation of 14)
        assert np.all(np.abs(got - share * whole) <= 1.5), (got, share * whole)


def test_iterative_beats_a_random_split_on_the_rare_label():
    labels = _labels(600, seed=3)
    rare = labels[:, 4]
    taken, rest = iterative_take(np.arange(600), labels, 0.15, np.random.default_rng(0))
    assert abs(rare[taken].sum() - 0.15 * rare.sum()) <= 1
    assert len(taken) == 90 and len(rest) == 510
    # pictures with no label at all are shared by size alone
    none = labels.sum(1) == 0
    assert abs(none[taken].sum() - 0.15 * none.sum()) <= 2


def test_multi_label_splits_are_seeded():
    ds = _dataset(_labels(500))
    a, b = make_split(ds, "70-15-15", seed=4), make_split(ds, "70-15-15", seed=4)
    assert a.digest() == b.digest()
    assert make_split(ds, "70-15-15", seed=5).digest() != a.digest()


def test_subsets_are_nested_and_hold_their_share():
    labels = _labels(3000)
    ds = _dataset(labels)
    small = make_split(ds, "70-15-15", seed=0, subset=300).train
    large = make_split(ds, "70-15-15", seed=0, subset=900).train
    assert set(small) <= set(large)
    share = labels[small].mean(0) / labels.mean(0)
    assert np.all(np.abs(share[:4] - 1) < 0.2), share  # the common labels


def test_official_split_holds_out_val_by_label():
    labels = _labels(1000)
    part = np.where(np.arange(1000) < 800, TRAIN, TEST).astype(np.uint8)
    split = make_split(_dataset(labels, part), "official", seed=0, val_size=100)
    assert split.sizes() == {"train": 700, "val": 100, "test": 200}
    assert set(split.test) == set(range(800, 1000))
    pool = labels[:800].sum(0)
    assert np.all(np.abs(labels[split.val].sum(0) - pool / 8) <= 1.5)


def test_a_label_missing_from_training_is_an_error():
    labels = _labels(200)
    labels[:, 3] = 0
    labels[-1, 3] = 1  # one picture only: it cannot be in train and held out both
    part = np.zeros(200, np.uint8)
    part[-1] = TEST
    with pytest.raises(DataError, match="the training split has no images of: d"):
        make_split(_dataset(labels, part), "official", seed=0)


def test_several_labels_per_picture_stay_in_step():
    """Mosaic-like data (4 draws of 10 labels per picture): the labels dealt last are not
    overfilled by the pictures placed for other labels first."""
    rng = np.random.default_rng(0)
    labels = np.zeros((6000, 10), np.uint8)
    for _ in range(4):
        labels[np.arange(6000), rng.integers(0, 10, 6000)] = 1
    taken, _ = iterative_take(np.arange(6000), labels, 0.15, np.random.default_rng(1))
    assert len(taken) == 900
    assert np.abs(labels[taken].sum(0) - 0.15 * labels.sum(0)).max() <= 1.5


def test_combination_ids():
    rows = np.array([[1, 0], [0, 1], [1, 0], [0, 0]], np.uint8)
    ids = combination_ids(rows)
    assert ids[0] == ids[2] and len(set(ids.tolist())) == 3
    assert combination_ids(rows[:0]).shape == (0,)


def test_cache_round_trip_keeps_multi_hot(tmp_path):
    ds = _dataset(_labels(30))
    cache.store(tmp_path, ds)
    back = cache.load_cached(tmp_path, ds.fingerprint, "synthetic")
    assert back is not None and back.multi_label and back.labels.dtype == np.uint8
    assert np.array_equal(back.labels, ds.labels)


def test_contact_sheet_of_multi_label_data(tmp_path):
    labels = _labels(60)
    ds = _dataset(labels)
    chosen = pick(labels, 5, per_class=2, seed=0)
    assert len(chosen) == sum(min(2, int(n)) for n in labels.sum(0))
    assert all(labels[chosen[2 * c : 2 * c + 2], c].all() for c in range(4))
    sheet = write_contact_sheet(ds, tmp_path / "s.png", per_class=2)
    assert sheet.pictures == len(chosen) and sheet.classes == int((labels.sum(0) > 0).sum())
    sample = write_contact_sheet(ds, tmp_path / "r.png", sample=12)
    assert sample.pictures == 12 and (tmp_path / "r.png").stat().st_size > 0
