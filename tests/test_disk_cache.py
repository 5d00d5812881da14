"""Pictures larger than memory (issue 30): decoded straight into a memory-mapped disk cache
when they do not fit, held in memory when they do; uint8 end to end."""

from __future__ import annotations

import json
import logging
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import run_cli, write_image_folder
from PIL import Image

import imageclf.data as data_mod
from imageclf.data import cache, folders, load_dataset
from imageclf.data import memory as memory_mod
from imageclf.data.loader import SplitImages, channel_stats
from imageclf.errors import DataError

SIDE = 32
PER_IMAGE = SIDE * SIDE * 3


def _home(monkeypatch, path: Path, limit: str | None) -> Path:
    monkeypatch.setenv("IMAGECLF_HOME", str(path))
    if limit is None:
        monkeypatch.delenv(memory_mod.LIMIT_ENV, raising=False)
    else:
        monkeypatch.setenv(memory_mod.LIMIT_ENV, limit)
    return path / "datasets"


@pytest.fixture
def folder(tmp_path):
    return write_image_folder(tmp_path / "ds", per_class=6, partitioned=False)


@pytest.fixture
def said():
    """The data logger's messages, through a handler of its own (the CLI's tests may stop
    propagation to the root logger that caplog listens on)."""
    messages: list[str] = []
    handler = logging.Handler(logging.INFO)
    handler.emit = lambda record: messages.append(record.getMessage())
    logger = logging.getLogger("imageclf.data")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield messages
    logger.removeHandler(handler)
    logger.setLevel(level)


def test_too_big_for_memory_is_decoded_into_a_memory_mapped_cache(
    tmp_path, monkeypatch, folder, said
):
    _home(monkeypatch, tmp_path / "a", None)
    in_memory = load_dataset(folder, progress=False)
    assert not in_memory.on_disk and not isinstance(in_memory.images, np.memmap)

    assert any("held in memory" in m for m in said)
    said.clear()
    cached = _home(monkeypatch, tmp_path / "b", "1K")
    on_disk = load_dataset(folder, progress=False)
    assert on_disk.on_disk and any("memory-mapped from disk" in m for m in said)
    np.testing.assert_array_equal(on_disk.images, in_memory.images)
    np.testing.assert_array_equal(on_disk.labels, in_memory.labels)
    assert list(on_disk.names) == list(in_memory.names)
    key = on_disk.fingerprint
    assert sorted(p.name for p in cached.iterdir()) == [f"{key}.npz", f"{key}.pixels"]
    assert (cached / f"{key}.pixels").stat().st_size == len(in_memory) * PER_IMAGE
    with np.load(cached / f"{key}.npz") as entry:
        assert "images" not in entry.files  # the pictures live only in the .pixels file

    def boom(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr(data_mod, "read_source", boom)
    again = load_dataset(folder, progress=False)  # from the cache, still too big: mapped
    assert again.on_disk
    np.testing.assert_array_equal(again.images, in_memory.images)
    monkeypatch.delenv(memory_mod.LIMIT_ENV)
    fits = load_dataset(folder, progress=False)  # the same entry, fits now: read in
    assert not fits.on_disk
    np.testing.assert_array_equal(fits.images, in_memory.images)


def test_decoded_pictures_are_written_as_they_are_decoded(tmp_path, monkeypatch, folder):
    cached = _home(monkeypatch, tmp_path / "home", "1K")
    written = []
    real = cache.DiskPixels.append

    def append(self, image):
        real(self, image)
        written.append(os.fstat(self.handle.fileno()).st_size)
        assert not list(cached.glob("*.pixels"))  # renamed into place only when complete

    monkeypatch.setattr(cache.DiskPixels, "append", append)
    ds = load_dataset(folder, progress=False)
    # The file grows while decoding (an 8 KB write buffer aside): nothing held back.
    assert written[-1] >= len(ds) * PER_IMAGE - 8192
    assert written[len(ds) // 2] >= (len(ds) // 2) * PER_IMAGE - 8192


def test_interrupted_decoding_leaves_nothing_in_the_cache(tmp_path, monkeypatch, folder):
    cached = _home(monkeypatch, tmp_path / "home", "1K")
    real, calls = folders._decode, []

    def interrupted(data, size):
        calls.append(1)
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(data, size)

    monkeypatch.setattr(folders, "_decode", interrupted)
    with pytest.raises(KeyboardInterrupt):
        load_dataset(folder, progress=False)
    assert list(cached.iterdir()) == []  # no .pixels, no temporary file, no .npz
    monkeypatch.setattr(folders, "_decode", real)
    assert load_dataset(folder, progress=False).on_disk


def test_a_damaged_pixels_file_is_decoded_again(tmp_path, monkeypatch, folder):
    cached = _home(monkeypatch, tmp_path / "home", "1K")
    first = np.array(load_dataset(folder, progress=False).images)  # a copy: the file shrinks
    (pixels,) = cached.glob("*.pixels")
    with open(pixels, "r+b") as handle:
        handle.truncate(PER_IMAGE * 2)
    decodes = []
    real = data_mod.read_source
    monkeypatch.setattr(data_mod, "read_source", lambda *a, **k: decodes.append(1) or real(*a, **k))
    second = load_dataset(folder, progress=False)
    assert decodes == [1]
    np.testing.assert_array_equal(second.images, first)
    pixels.unlink()
    np.testing.assert_array_equal(load_dataset(folder, progress=False).images, first)
    assert len(decodes) == 2


def test_without_the_cache_the_file_has_no_name(tmp_path, monkeypatch, folder):
    cached = _home(monkeypatch, tmp_path / "home", "1K")
    ds = load_dataset(folder, progress=False, use_cache=False)
    assert ds.on_disk and len(ds) == 18 and ds.images[:, 0, 0].any()
    assert list(cached.iterdir()) == []  # an unnamed file, gone with the process


def test_no_room_on_disk_is_one_clear_error(tmp_path, monkeypatch, folder):
    _home(monkeypatch, tmp_path / "home", "1K")

    class Full:
        free = 10_000_000

    monkeypatch.setattr(memory_mod.shutil, "disk_usage", lambda _p: Full)
    with pytest.raises(DataError, match=r"need 0\.00 GB on disk .* 0\.01 GB is free"):
        load_dataset(folder, progress=False)


def test_a_cache_folder_that_cannot_be_written_is_one_clear_error(tmp_path, monkeypatch, folder):
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder should be")
    monkeypatch.setenv("IMAGECLF_HOME", str(blocked))
    monkeypatch.setenv(memory_mod.LIMIT_ENV, "1K")
    with pytest.raises(DataError, match=r"cannot be written to .*IMAGECLF_HOME"):
        load_dataset(folder, progress=False)


def test_a_full_disk_while_decoding_is_one_clear_error(tmp_path, monkeypatch, folder):
    cached = _home(monkeypatch, tmp_path / "home", "1K")
    real, calls = cache.DiskPixels.append, []

    class Full:
        def write(self, _data):
            raise OSError(28, "No space left on device")

    def append(self, image):
        calls.append(1)
        if len(calls) == 3:
            self.handle = Full()
        real(self, image)

    monkeypatch.setattr(cache.DiskPixels, "append", append)
    with pytest.raises(DataError, match=r"writing the decoded pictures in .*No space left"):
        load_dataset(folder, progress=False)
    assert list(cached.iterdir()) == []  # the half-written file removed, nothing cached


def test_memory_limit_setting(monkeypatch):
    assert memory_mod.parse_size("512M") == 512 * 2**20
    assert memory_mod.parse_size("1.5G") == int(1.5 * 2**30)
    assert memory_mod.parse_size("2000") == 2000
    with pytest.raises(DataError, match="IMAGECLF_MEMORY_LIMIT='lots' is not a size"):
        memory_mod.parse_size("lots")
    monkeypatch.setenv(memory_mod.LIMIT_ENV, "100M")
    assert memory_mod.memory_available() <= 100 * 2**20
    assert memory_mod.choose_storage(10, 32, "src") == "memory"  # 30 KB
    assert memory_mod.choose_storage(10_000, 224, "src") == "disk"  # 1.5 GB


def test_split_images_read_like_the_array(tmp_path):
    rng = np.random.default_rng(0)
    array = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    path = tmp_path / "x.pixels"
    array.tofile(path)
    mapped = np.memmap(path, dtype=np.uint8, mode="c", shape=array.shape)
    index = rng.permutation(40)[:25]
    for images in (array, mapped):
        view = SplitImages(images, index)
        assert len(view) == 25 and view.shape == (25, 8, 8, 3) and view.ndim == 4
        idx = torch.tensor([7, 0, 24, 3, 3])
        got = view[idx]
        assert got.dtype == torch.uint8
        np.testing.assert_array_equal(got.numpy(), array[index[idx.numpy()]])
        np.testing.assert_array_equal(view[5:9].numpy(), array[index[5:9]])
        assert view[:0].shape == (0, 8, 8, 3)


def test_channel_stats_are_exact_without_a_float_copy(tmp_path):
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, (300, 16, 16, 3), dtype=np.uint8)
    images[..., 0] //= 4
    sample = images.reshape(-1, 3).astype(np.float64) / 255.0
    expected = (sample.mean(0).round(6).tolist(), sample.std(0).round(6).tolist())
    assert channel_stats(images) == expected
    assert channel_stats(SplitImages(images, np.arange(300))) == expected


def test_a_constant_channel_is_standardised_to_zero_not_nan(tmp_path):
    """Pictures whose blue is 0 everywhere: its spread is floored at one grey level, so
    the normaliser gives 0 there (not 0/0) and training runs; it used to 'diverge'."""
    from PIL import Image

    from imageclf.prediction.inference import Normalizer
    from imageclf.training.loop import train
    from imageclf.training.resolve import resolve

    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (40, 8, 8, 3), dtype=np.uint8)
    images[..., 2] = 0
    mean, std = channel_stats(images)
    assert mean[2] == 0 and std[2] == round(1 / 255, 6) and 0.25 < std[0] < 0.35
    x = Normalizer(mean, std)(torch.from_numpy(images))
    assert torch.isfinite(x).all() and (x[:, 2] == 0).all()

    for c, name in enumerate(["red", "green"]):
        folder = tmp_path / "ds" / name
        folder.mkdir(parents=True)
        for i in range(12):
            pixels = np.zeros((32, 32, 3), np.uint8)
            pixels[..., c] = rng.integers(150, 256)
            Image.fromarray(pixels).save(folder / f"{i}.png")
    cfg = resolve("seed-a", data=str(tmp_path / "ds"), out=str(tmp_path / "run"), epochs=2,
                  batch_size=8, seed=0)  # fmt: skip
    result = train(cfg, progress=False)
    assert all(np.isfinite(h["train_loss"]) for h in result.history)


def test_training_data_is_the_same_from_disk(tmp_path, monkeypatch, folder):
    from imageclf.training.config import TrainConfig
    from imageclf.training.train_data import TrainData

    cfg = TrainConfig(data=str(folder), image_size=SIDE)
    _home(monkeypatch, tmp_path / "a", None)
    held = TrainData.load(cfg, progress=False)
    _home(monkeypatch, tmp_path / "b", "1K")
    mapped = TrainData.load(cfg, progress=False)
    assert mapped.dataset.on_disk and not held.dataset.on_disk
    assert (held.mean, held.std) == (mapped.mean, mapped.std)
    idx = torch.arange(len(held.x_train)).flip(0)
    assert torch.equal(held.x_train[idx], mapped.x_train[idx])
    assert torch.equal(held.x_val[:], mapped.x_val[:])
    assert torch.equal(held.test_set()[0][:], mapped.test_set()[0][:])
    assert held.x_train[:].shape == (len(held.split.train), SIDE, SIDE, 3)


def test_inspect_says_how_much_disk_the_cache_takes(tmp_path, monkeypatch, folder, capsys):
    _home(monkeypatch, tmp_path / "home", None)
    code, out, _ = run_cli(
        ["--quiet", "data", "inspect", str(folder), "--image-size", "64"], capsys
    )
    assert code == 0
    assert f"decoded cache at 64x64: {18 * 64 * 64 * 3 / 1e6:,.1f} MB on disk" in out
    assert "held in memory when training" in out
    monkeypatch.setenv(memory_mod.LIMIT_ENV, "1K")
    code, out, _ = run_cli(["--quiet", "data", "inspect", str(folder)], capsys)
    assert f"decoded cache at 32x32: {18 * PER_IMAGE / 1e6:,.1f} MB" in out
    assert "training memory-maps it from disk" in out


# ---------------------------------------------------------------- 3x the memory limit
LIMIT_MB = 768  # RssAnon the training process must stay under (it needs ~600)
TRAIN_SIDE = 224

CHILD = textwrap.dedent(
    """
    import json, logging, sys
    import numpy as np
    from imageclf import train
    from imageclf.data import load_dataset
    from imageclf.data.loader import SplitImages, channel_stats

    logging.basicConfig(level=logging.INFO)
    run = train(data=sys.argv[1], out=sys.argv[2], image_size=int(sys.argv[3]),
                arch_kwargs={"widths": [16, 32, 32]}, subset=64, batch_size=8, epochs=1,
                adapt=False, tta=False, progress=False)
    ds = load_dataset(sys.argv[1], image_size=int(sys.argv[3]), progress=False)
    stats = channel_stats(SplitImages(ds.images, np.arange(len(ds))))  # every page read
    print(json.dumps({"on_disk": ds.on_disk, "images": len(ds), "val": run.metrics["val"],
                      "stats": stats}))
    """
)


def _tiny_pngs(root: Path, n_train: int) -> Path:
    """ROOT/{train,val,test}/{a,b}: 12 px noise, enlarged to the training size on decoding."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", 16), ("test", 16)):
        for i in range(n):
            folder = root / split / "ab"[i % 2]
            folder.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i:05d}.png", compress_level=1)
    return root


def _status_mb(pid: int) -> dict[str, int]:
    with open(f"/proc/{pid}/status") as status:
        return {ln.split(":")[0]: int(ln.split()[1]) // 1024 for ln in status
                if ln.startswith(("RssAnon:", "RssFile:"))}  # fmt: skip


@pytest.mark.slow
def test_a_folder_three_times_the_memory_limit_trains_within_it(tmp_path):
    per_image = TRAIN_SIDE * TRAIN_SIDE * 3
    n_train = math.ceil(3 * LIMIT_MB * 2**20 / per_image) - 32
    root = _tiny_pngs(tmp_path / "big", n_train)
    env = {**os.environ, "IMAGECLF_HOME": str(tmp_path / "home"),
           memory_mod.LIMIT_ENV: f"{LIMIT_MB}M"}  # fmt: skip
    cmd = [sys.executable, "-c", CHILD, str(root), str(tmp_path / "run"), str(TRAIN_SIDE)]
    out_file, err_file = tmp_path / "out.txt", tmp_path / "err.txt"
    with open(out_file, "wb") as out, open(err_file, "wb") as err:
        child = subprocess.Popen(cmd, env=env, stdout=out, stderr=err)
        peak_anon, peak_file = _sample(child)
    err = err_file.read_text()
    print(f"peak RssAnon {peak_anon} MB, RssFile {peak_file} MB, limit {LIMIT_MB} MB")
    assert child.returncode == 0, err[-3000:]
    result = json.loads(out_file.read_text().strip().splitlines()[-1])
    decoded = result["images"] * per_image
    assert result["on_disk"] and decoded >= 2.9 * LIMIT_MB * 2**20
    assert "memory-mapped from disk" in err
    assert result["val"]["images"] == 16  # trained, then scored on ROOT/val
    # Every picture was read (training, then the statistics) and anonymous memory stayed
    # under the limit: the pictures came through the page cache.
    assert 0 < peak_anon < LIMIT_MB, (peak_anon, peak_file)


def _sample(child: subprocess.Popen) -> tuple[int, int]:
    """Peak (RssAnon, RssFile) in MB of a running process, sampled every 10 ms."""
    peak_anon = peak_file = 0
    while child.poll() is None:
        try:
            now = _status_mb(child.pid)
            anon, file = now["RssAnon"], now["RssFile"]
        except (OSError, KeyError):  # gone (or a zombie) between poll() and the read
            break
        peak_anon, peak_file = max(peak_anon, anon), max(peak_file, file)
        time.sleep(0.01)
    child.wait()
    return peak_anon, peak_file
