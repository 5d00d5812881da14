"""Twins across a split: planted copies (mirrored, re-encoded, resized, exact) are found,
unrelated pictures are not, --dedupe drops the training copies, inspect and train say so."""

from __future__ import annotations

import io
import json
import logging

import numpy as np
import pytest
from helpers import run_cli
from PIL import Image

from imageclf.data import TEST, TRAIN, Dataset
from imageclf.data import duplicates as dup
from imageclf.data.splits import Split
from imageclf.errors import UserInputError


def _pictures(n: int, seed: int = 0) -> np.ndarray:
    """Distinct smooth pictures (random 6x6 colour fields enlarged): structured like
    photos at low frequencies, unlike pure noise, and unrelated to each other."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        small = rng.integers(0, 256, (6, 6, 3), dtype=np.uint8)
        out.append(np.array(Image.fromarray(small).resize((32, 32), Image.BICUBIC)))
    return np.stack(out)


def _jpeg(image: np.ndarray, quality: int = 50) -> np.ndarray:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, "JPEG", quality=quality)
    return np.array(Image.open(buf).convert("RGB"))


def _resized(image: np.ndarray) -> np.ndarray:
    return np.array(Image.fromarray(image).resize((24, 24), Image.BILINEAR).resize((32, 32)))


PLANTED = {"mirrored": lambda a: a[:, ::-1], "jpeg": _jpeg, "resized": _resized,
           "exact": lambda a: a.copy()}  # fmt: skip


@pytest.fixture
def planted() -> tuple[Dataset, dict[str, tuple[int, int]]]:
    """40 training and 12 test pictures, all unrelated, plus one training copy of each of
    the first four test pictures, made as PLANTED says: kind -> (test index, train index)."""
    train, test = _pictures(40, seed=1), _pictures(12, seed=2)
    copies = [make(test[k]) for k, make in enumerate(PLANTED.values())]
    images = np.concatenate([train, np.stack(copies), test])
    n_train = len(train) + len(copies)
    partition = np.array([TRAIN] * n_train + [TEST] * len(test), np.uint8)
    labels = np.arange(len(images)) % 2  # two classes, "a" and "b"
    names = np.array([f"train/{'ab'[i % 2]}/{i:04d}.png" for i in range(n_train)]
                     + [f"test/{'ab'[i % 2]}/{i:04d}.png" for i in range(len(test))])  # fmt: skip
    ds = Dataset(images, labels, partition, ["a", "b"], "planted", "x", names)
    where = {kind: (n_train + k, len(train) + k) for k, kind in enumerate(PLANTED)}
    return ds, where


def _parts(ds: Dataset) -> dict[str, np.ndarray]:
    return {"train": np.flatnonzero(ds.partition == TRAIN),
            "test": np.flatnonzero(ds.partition == TEST)}  # fmt: skip


def test_planted_copies_found_and_nothing_else(planted):
    ds, where = planted
    report = dup.find_duplicates(ds, _parts(ds))
    pairs = {(p.index, p.other): p for p in report.pairs}
    assert set(pairs) == set(where.values())  # every planted copy, no unrelated picture
    assert pairs[where["exact"]].exact and pairs[where["exact"]].distance == 0
    assert pairs[where["mirrored"]].mirrored and not pairs[where["mirrored"]].exact
    assert not pairs[where["jpeg"]].exact  # near, not the same pixels
    assert report.counts() == {"test-train": {"pictures": 4, "exact": 1}}
    assert "test pictures with a twin in train: 4 (1 exact)" in report.summary()


def test_mirror_hash_is_the_hash_of_the_mirrored_picture():
    images = _pictures(20)
    plain, mirrored = dup.perceptual_hashes(images)
    flipped_plain, _ = dup.perceptual_hashes(images[:, :, ::-1])
    assert np.array_equal(mirrored, flipped_plain)
    assert not np.array_equal(plain, mirrored)


def test_unrelated_pictures_are_far_apart():
    plain, mirrored = dup.perceptual_hashes(_pictures(200, seed=5))
    q, _, _, _ = dup.nearest(plain[:100], mirrored[:100], plain[100:])
    assert len(q) == 0


def test_larger_pictures_hash_like_their_small_copy():
    small = _pictures(10, seed=3)
    large = np.stack([np.array(Image.fromarray(a).resize((96, 96), Image.BICUBIC)) for a in small])
    a, _ = dup.perceptual_hashes(small)
    b, _ = dup.perceptual_hashes(large)
    assert (np.bitwise_count(a ^ b) <= dup.THRESHOLD).all()


def test_dedupe_drops_exactly_the_training_copies(planted):
    ds, where = planted
    parts = _parts(ds)
    split = Split("official", 0, parts["train"], np.zeros(0, np.int64), parts["test"])
    report = dup.check_dataset(ds, split)
    kept = dup.drop_training_copies(split, report)
    dropped = set(split.train) - set(kept.train)
    assert dropped == {train for _, train in where.values()}
    assert np.array_equal(kept.test, split.test)


def _write_folder(root, ds: Dataset) -> None:
    for image, name in zip(ds.images, ds.names, strict=True):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path)


def test_inspect_reports_twins_with_names_and_a_sheet(planted, tmp_path, capsys):
    ds, where = planted
    _write_folder(tmp_path / "data", ds)
    sheet = tmp_path / "twins.png"
    code, out, err = run_cli(["-q", "data", "inspect", str(tmp_path / "data"),
                              "--duplicates-sheet", str(sheet)], capsys)  # fmt: skip
    assert code == 0, err
    assert "test pictures with a twin in train: 4 (1 exact)" in out
    test_idx, train_idx = where["exact"]
    line = next(x for x in out.splitlines() if "(exact)" in x)
    assert str(ds.names[test_idx]) in line and str(ds.names[train_idx]) in line
    assert Image.open(sheet).size[0] > 100
    code, out, _ = run_cli(["-q", "data", "inspect", str(tmp_path / "data"), "--no-duplicates"],
                           capsys)  # fmt: skip
    assert code == 0 and "with a twin in" not in out


def test_sheet_into_a_folder_is_refused(planted, tmp_path, capsys):
    ds, _ = planted
    _write_folder(tmp_path / "data", ds)
    code, _, err = run_cli(["-q", "data", "inspect", str(tmp_path / "data"),
                            "--duplicates-sheet", str(tmp_path)], capsys)  # fmt: skip
    assert code == 2 and "is a directory" in err
    with pytest.raises(UserInputError, match="is a folder"):
        dup.write_sheet(dup.DuplicateReport(dup.THRESHOLD), ds, tmp_path)


def test_train_reports_and_dedupes(planted, tmp_path, caplog, monkeypatch):
    from imageclf.training import train
    from imageclf.training.resolve import resolve

    # The CLI (run by other tests in this process) turns propagation off; caplog needs it.
    monkeypatch.setattr(logging.getLogger("imageclf"), "propagate", True)

    ds, where = planted
    _write_folder(tmp_path / "data", ds)
    runs = {}
    for dedupe in (False, True):
        cfg = resolve("seed-a", data=str(tmp_path / "data"), out=str(tmp_path / f"r{dedupe}"),
                      epochs=1, batch_size=16, split="official", val_size=0, dedupe=dedupe,
                      adapt=False)  # fmt: skip
        with caplog.at_level("INFO", logger="imageclf.train"):
            train(cfg, progress=True)
        record = json.loads((tmp_path / f"r{dedupe}" / "config.json").read_text())
        twins = json.loads((tmp_path / f"r{dedupe}" / "duplicates.json").read_text())
        runs[dedupe] = record
        assert twins["counts"]["test-train"] == {"pictures": 4, "exact": 1}
        assert {p["other_name"] for p in twins["pairs"]} == {
            str(ds.names[t]) for _, t in where.values()
        }
    assert "test pictures with a twin in train: 4 (1 exact)" in caplog.text
    assert "--dedupe dropped 4 training copies" in caplog.text
    assert runs[True]["config"]["dedupe"] is True
    # evaluate re-creates the deduped split exactly (not "could not be reproduced")
    from imageclf.data import load_dataset
    from imageclf.evaluation.evaluator import resolve_split
    from imageclf.models.bundle import load_bundle

    bundle = tmp_path / "rTrue" / "model.safetensors"
    dataset = load_dataset(tmp_path / "data", progress=False)
    split, where_from, notes = resolve_split(dataset, load_bundle(bundle).metadata, None)
    assert not notes and where_from["origin"] == "recorded in the model bundle"
    assert len(split.train) == runs[True]["split"]["sizes"]["train"]
    assert runs[True]["split"]["sizes"]["train"] == runs[False]["split"]["sizes"]["train"] - 4
