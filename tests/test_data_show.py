"""``imageclf data show``: a contact sheet of a dataset's pictures with their labels,
N per class or a seeded sample, after the recipe's augmentation when asked."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
from helpers import run_cli, write_image_folder
from PIL import Image

from imageclf.data.augment import AugmentConfig
from imageclf.data.contact_sheet import augmented, pick
from imageclf.errors import UserInputError


@pytest.fixture()
def folder(tmp_path):
    """cat/dog/frog, 15 pictures each (10 train + 5 test), and a class named like mathtext."""
    root = write_image_folder(tmp_path / "ds", per_class=10)
    for part, count in (("train", 2), ("test", 1)):
        odd = root / part / "cost $5 and $"
        odd.mkdir()
        for i in range(count):
            Image.new("RGB", (40, 30), (i * 80, 100, 50)).save(odd / f"{i}.png")
    return root


def _show(argv, capsys):
    return run_cli(["-q", "data", "show", *map(str, argv)], capsys)


def test_per_class_sheet_is_written_and_named(folder, tmp_path, capsys):
    out = tmp_path / "sheets" / "sheet.png"
    code, stdout, err = _show([folder, "--out", out], capsys)
    assert code == 0 and err == ""
    assert stdout == f"27 pictures of 4 classes at 32 px: {out}\n"  # 8 + 8 + 8 + all 3
    with Image.open(out) as sheet:
        assert sheet.format == "PNG" and sheet.width > 8 * 100 and sheet.height > 4 * 100


def test_default_out_is_contact_sheet_png(folder, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    code, stdout, _ = _show([folder, "--sample", "5"], capsys)
    assert code == 0 and stdout.endswith(": contact-sheet.png\n")
    assert (tmp_path / "contact-sheet.png").stat().st_size > 1000


def test_seeded_same_sheet_other_seed_other_sheet(folder, tmp_path, capsys):
    sheets = {}
    for name, seed in (("a", 1), ("b", 1), ("c", 2)):
        out = tmp_path / f"{name}.png"
        assert _show([folder, "--sample", "6", "--seed", seed, "--out", out], capsys)[0] == 0
        sheets[name] = out.read_bytes()
    assert sheets["a"] == sheets["b"] != sheets["c"]


def test_pick_per_class_and_sample():
    labels = np.repeat(np.arange(4), [10, 10, 2, 0])
    chosen = pick(labels, 4, per_class=3, seed=0)
    assert np.bincount(labels[chosen], minlength=4).tolist() == [3, 3, 2, 0]
    assert len(set(chosen.tolist())) == len(chosen)
    assert np.array_equal(chosen, pick(labels, 4, per_class=3, seed=0))
    sample = pick(labels, 4, sample=7, seed=5)
    assert len(set(sample.tolist())) == 7 and list(labels[sample]) == sorted(labels[sample])
    assert pick(labels, 4, sample=100).size == 22  # the whole dataset, no repeats
    with pytest.raises(UserInputError, match="more than 200"):
        pick(np.repeat(np.arange(30), 10), 30, per_class=8)
    with pytest.raises(UserInputError, match="--sample"):
        pick(labels, 4, sample=201)


def test_augmentation_is_the_batch_augmentation_training_uses():
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (24, 16, 16, 3), dtype=np.uint8)
    idx = np.arange(24)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    same = augmented(images, idx, AugmentConfig(), mean, std)
    assert np.abs(same.astype(int) - images).max() <= 1  # no augmentation: the pictures back
    flipped = augmented(images, idx, AugmentConfig(flip="random"), mean, std, seed=3)
    mirror = [
        np.abs(f.astype(int) - o[:, ::-1]).max() <= 1 for f, o in zip(flipped, images, strict=True)
    ]
    kept = [np.abs(f.astype(int) - o).max() <= 1 for f, o in zip(flipped, images, strict=True)]
    assert all(m or k for m, k in zip(mirror, kept, strict=True)) and 0 < sum(mirror) < 24
    cut = augmented(images, idx, AugmentConfig(cutout=6), mean, std)
    grey = np.round(np.array(mean) * 255)
    assert all((np.abs(c.astype(int) - grey).max(-1) <= 1).sum() >= 9 for c in cut)


def test_augment_uses_the_recipe_as_training_would(folder, tmp_path, capsys):
    plain, aug = tmp_path / "plain.png", tmp_path / "aug.png"
    assert _show([folder, "--out", plain, "--recipe", "seed-d"], capsys)[0] == 0
    code, stdout, _ = _show([folder, "--out", aug, "--recipe", "seed-d", "--augment"], capsys)
    assert code == 0
    assert "augmentation of recipe seed-d: flip=random, rotate=15.0, shift=0.1" in stdout
    assert plain.read_bytes() != aug.read_bytes()
    # fast translates 2 px of a 32 px picture: 4 px at 64, as training adapts it
    argv = [folder, "--out", aug, "--augment", "--image-size", "64", "--sample", "4"]
    code, stdout, _ = _show(argv, capsys)
    assert code == 0 and "flip=alternate, translate=4" in stdout and "at 64 px" in stdout


def test_archives_are_read_like_folders(folder, tmp_path, capsys):
    archive = shutil.make_archive(str(tmp_path / "ds"), "zip", folder)
    code, stdout, _ = _show([archive, "--per-class", "2", "--out", tmp_path / "z.png"], capsys)
    assert code == 0 and stdout.startswith("8 pictures of 4 classes")


@pytest.mark.parametrize(
    "argv, needle",
    [
        (["--per-class", "2", "--sample", "3"], "choose one of --per-class and --sample"),
        (["--sample", "500"], "--sample must be from 1 to 200"),
        (["--per-class", "0"], "--per-class"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--out", "."], "--out"),
    ],
)
def test_bad_input_is_exit_2(folder, argv, needle, capsys):
    code, stdout, err = _show([folder, *argv], capsys)
    assert code == 2 and needle in err and stdout == ""


def test_missing_data_is_one_line(tmp_path, capsys):
    code, _, err = _show([tmp_path / "nothing"], capsys)
    assert code == 2 and err == f"imageclf: error: dataset not found: {tmp_path / 'nothing'}\n"
