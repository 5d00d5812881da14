import io
import logging
import os
import pickle
import tarfile
import zipfile

import numpy as np
import pytest
from helpers import CLASSES, write_image_folder
from PIL import Image

from imageclf import data as data_mod
from imageclf.data import TEST, TRAIN, VAL, load_dataset, make_split
from imageclf.data import cifar as cifar_mod
from imageclf.data import memory as memory_mod
from imageclf.errors import DataError


def _tar(folder, dest, wrap="dataset"):
    with tarfile.open(dest, "w:gz") as archive:
        archive.add(folder, arcname=wrap)
    return dest


def _zip(folder, dest):
    with zipfile.ZipFile(dest, "w") as archive:
        for path in sorted(folder.rglob("*")):
            archive.write(path, path.relative_to(folder).as_posix())
    return dest


def test_partitioned_folder(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=4)
    ds = load_dataset(root, progress=False)
    assert ds.classes == sorted(CLASSES)
    assert ds.images.shape == (3 * 4 + 3 * 2, 32, 32, 3) and ds.images.dtype == np.uint8
    assert ds.counts(TRAIN) == {c: 4 for c in CLASSES}
    assert ds.counts(TEST) == {c: 2 for c in CLASSES}
    # class-folder colour must match the label: class index c was painted in channel c % 3
    for image, label in zip(ds.images, ds.labels, strict=True):
        assert image.mean(axis=(0, 1)).argmax() == CLASSES.index(ds.classes[label]) % 3


def test_flat_folder_and_archives_give_identical_arrays(tmp_path):
    root = write_image_folder(tmp_path / "flat", per_class=3, partitioned=False)
    from_dir = load_dataset(root, progress=False, use_cache=False)
    from_tar = load_dataset(_tar(root, tmp_path / "d.tar.gz"), progress=False, use_cache=False)
    from_zip = load_dataset(_zip(root, tmp_path / "d.zip"), progress=False, use_cache=False)
    assert not from_dir.has_test_partition
    for other in (from_tar, from_zip):
        assert other.classes == from_dir.classes
        np.testing.assert_array_equal(other.images, from_dir.images)
        np.testing.assert_array_equal(other.labels, from_dir.labels)


def test_any_size_and_mode_becomes_rgb_at_input_size(tmp_path):
    """Solid pictures in every mode: the decoded pixels say how each mode was converted."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    Image.new("L", (50, 20), 100).save(tmp_path / "a" / "1_grey.png")
    Image.new("RGBA", (8, 8), (10, 20, 30, 255)).save(tmp_path / "a" / "2_opaque.png")
    # Hidden colour under alpha 0 must not leak: composited onto white.
    Image.new("RGBA", (16, 16), (0, 255, 0, 0)).save(tmp_path / "a" / "3_clear.png")
    Image.new("RGBA", (16, 16), (0, 0, 255, 128)).save(tmp_path / "b" / "1_half.png")
    palette = Image.new("P", (40, 40), 1)
    palette.putpalette([0, 0, 0, 200, 40, 10] + [0] * 762)
    palette.save(tmp_path / "b" / "2_palette.gif")
    see_through = Image.new("P", (40, 40), 1)
    see_through.putpalette([0, 0, 0, 200, 40, 10] + [0] * 762)
    see_through.info["transparency"] = 1
    see_through.save(tmp_path / "b" / "3_transparent.gif")
    ds = load_dataset(tmp_path, progress=False, image_size=16)
    assert ds.images.shape == (6, 16, 16, 3) and ds.images.dtype == np.uint8
    expected = {
        (0, 0): (100, 100, 100),  # L: grey copied to all three channels
        (0, 1): (10, 20, 30),  # opaque RGBA: the colour itself
        (0, 2): (255, 255, 255),  # fully transparent: the white background
        (1, 0): (127, 127, 255),  # half-transparent blue over white
        (1, 1): (200, 40, 10),  # P: the palette's colour, not the index
        (1, 2): (255, 255, 255),  # P with a transparent index: white
    }
    for (label, k), rgb in expected.items():
        image = ds.images[ds.labels == label][k]
        # Solid pictures resize to solid pictures; allow 1 for alpha-blend rounding.
        assert np.abs(image.astype(int) - rgb).max() <= 1, (label, k, image[0, 0])


def test_cache_is_used_second_time(tmp_path, monkeypatch):
    root = write_image_folder(tmp_path / "ds", per_class=2)
    first = load_dataset(root, progress=False)

    def boom(*a, **k):
        raise AssertionError("decoded again instead of using the cache")

    monkeypatch.setattr("imageclf.data.read_source", boom)
    second = load_dataset(root, progress=False)
    np.testing.assert_array_equal(first.images, second.images)
    assert second.classes == first.classes


def _count_decodes(monkeypatch, tmp_path) -> list:
    """A private cache folder, and a list that grows by one per real decode."""
    monkeypatch.setenv("IMAGECLF_HOME", str(tmp_path / "home"))
    calls = []
    real = data_mod.read_source

    def counting(path, *args, **kwargs):
        calls.append(path)
        return real(path, *args, **kwargs)

    monkeypatch.setattr("imageclf.data.read_source", counting)
    return calls


def _repaint(path, rgb, size=32):
    Image.new("RGB", (size, size), rgb).save(path)


def test_cache_is_rebuilt_when_a_folder_changes(tmp_path, monkeypatch):
    decodes = _count_decodes(monkeypatch, tmp_path)
    root = write_image_folder(tmp_path / "ds", per_class=2, partitioned=False)
    target = root / "cat" / "0000.png"
    load_dataset(root, progress=False)
    load_dataset(root, progress=False)
    assert len(decodes) == 1
    _repaint(target, (1, 2, 3), size=40)  # an edited picture: new content, new size
    changed = load_dataset(root, progress=False)
    assert len(decodes) == 2
    assert (changed.images[0] == (1, 2, 3)).all()  # cat/0000.png is the first image
    # Same bytes, later modification time (a copy, a checkout): decoded again, to be safe.
    stat = target.stat()
    os.utime(target, ns=(stat.st_atime_ns, stat.st_mtime_ns + 10**9))
    load_dataset(root, progress=False)
    assert len(decodes) == 3


def test_cache_is_rebuilt_when_an_archive_changes_in_place(tmp_path, monkeypatch):
    """Same file name, same length, same modification time, different pixels."""
    decodes = _count_decodes(monkeypatch, tmp_path)
    for name in ("cat", "dog"):
        (tmp_path / "ds" / name).mkdir(parents=True)
        for image in ("a.bmp", "b.bmp"):  # BMP: the file size is fixed by the geometry
            _repaint(tmp_path / "ds" / name / image, (200, 0, 0))
    archive = tmp_path / "d.tar"

    def pack():
        with tarfile.open(archive, "w") as tar:
            tar.add(tmp_path / "ds", arcname="ds")

    pack()
    before = archive.stat()
    assert (load_dataset(archive, progress=False).images[0] == (200, 0, 0)).all()
    _repaint(tmp_path / "ds" / "cat" / "a.bmp", (9, 9, 9))
    pack()
    os.utime(archive, ns=(before.st_atime_ns, before.st_mtime_ns))
    assert archive.stat().st_size == before.st_size
    again = load_dataset(archive, progress=False)
    assert len(decodes) == 2 and (again.images[0] == (9, 9, 9)).all()


@pytest.mark.parametrize("damage", ["truncated", "overwritten", "empty"])
def test_damaged_cache_file_is_rebuilt(tmp_path, monkeypatch, damage):
    decodes = _count_decodes(monkeypatch, tmp_path)
    root = write_image_folder(tmp_path / "ds", per_class=3, partitioned=False)
    first = load_dataset(root, progress=False)
    (cached,) = (tmp_path / "home").rglob("*.npz")
    data = cached.read_bytes()
    middle = len(data) // 2
    cached.write_bytes(
        {
            "truncated": data[:middle],
            "overwritten": data[:middle] + bytes(64) + data[middle + 64 :],
            "empty": b"",
        }[damage]
    )
    second = load_dataset(root, progress=False)
    assert len(decodes) == 2  # decoded again instead of trusting the damaged file
    np.testing.assert_array_equal(second.images, first.images)
    np.testing.assert_array_equal(second.labels, first.labels)
    assert cached.read_bytes() == data  # and the cache entry was written anew
    load_dataset(root, progress=False)
    assert len(decodes) == 2


def _fake_cifar_tar(dest, n=4, corrupt=None):
    rng = np.random.default_rng(0)
    with tarfile.open(dest, "w:gz") as archive:
        names = [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]
        blobs = {
            name: pickle.dumps(
                {
                    b"data": rng.integers(0, 255, (n, 3072), dtype=np.uint8),
                    b"labels": [i % 10 for i in range(n)],
                },
                protocol=2,
            )
            for name in names
        }
        blobs["batches.meta"] = pickle.dumps(
            {b"label_names": [f"c{i}".encode() for i in range(10)]}
        )
        if corrupt:
            blobs[corrupt] = b"not a pickle"
        for name, blob in blobs.items():
            info = tarfile.TarInfo(f"cifar-10-batches-py/{name}")
            info.size = len(blob)
            archive.addfile(info, io.BytesIO(blob))
    return dest


def test_cifar_python_archive(tmp_path):
    ds = load_dataset(_fake_cifar_tar(tmp_path / "cifar-10-python.tar.gz"), progress=False)
    assert len(ds) == 24 and ds.classes == [f"c{i}" for i in range(10)]
    assert ds.counts(TEST) == {f"c{i}": int(i < 4) for i in range(10)}


def test_cifar_batch_refuses_arbitrary_code(tmp_path):
    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    blob = pickle.dumps({b"data": Evil(), b"labels": []})
    with pytest.raises(DataError, match="refusing"):
        cifar_mod._load_cifar_batch(blob, "data_batch_1")


def test_corrupt_cifar_batch(tmp_path):
    path = _fake_cifar_tar(tmp_path / "c.tar.gz", corrupt="data_batch_3")
    with pytest.raises(DataError, match="data_batch_3"):
        load_dataset(path, progress=False)


def test_corrupt_archive(tmp_path):
    bad = tmp_path / "broken.tar.gz"
    bad.write_bytes(b"\x1f\x8b" + b"garbage" * 100)
    with pytest.raises(DataError, match=r"corrupt|not a readable archive"):
        load_dataset(bad, progress=False)


def test_truncated_archive(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=3)
    full = _tar(root, tmp_path / "full.tar.gz").read_bytes()
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(full[: len(full) // 2])
    with pytest.raises(DataError):
        load_dataset(cut, progress=False)


def test_unreadable_and_non_image_files_are_skipped_and_named(tmp_path, caplog, monkeypatch):
    # The CLI (run by other tests in this process) turns propagation off; caplog needs it.
    monkeypatch.setattr(logging.getLogger("imageclf"), "propagate", True)
    root = write_image_folder(tmp_path / "ds", per_class=2)
    (root / "train" / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\nnope")
    (root / "train" / "dog" / "empty.jpg").write_bytes(b"")
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    with caplog.at_level("WARNING", logger="imageclf"):
        ds = load_dataset(root, progress=False)
    assert len(ds) == 3 * 2 + 3 * 2  # the broken ones are left out, nothing crashed
    text = caplog.text
    assert "skipped 2 unreadable image(s)" in text
    assert "train/dog/broken.png" in text and "train/dog/empty.jpg" in text
    assert "skipped 1 file(s) that are not images: train/cat/notes.txt" in text
    assert sorted(s.split(" (")[0] for s in ds.skipped) == [
        "train/dog/broken.png",
        "train/dog/empty.jpg",
    ]
    # the cache remembers what was skipped, and says so again
    caplog.clear()
    with caplog.at_level("WARNING", logger="imageclf"):
        again = load_dataset(root, progress=False)
    assert len(again.skipped) == 2 and "2 unreadable file(s) skipped" in caplog.text


def test_class_with_fewer_than_two_images_is_a_clear_error(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=3, partitioned=False)
    for extra in sorted((root / "dog").iterdir())[1:]:
        extra.unlink()
    with pytest.raises(DataError, match=r"at least 2 training images.*dog \(1\)"):
        load_dataset(root, progress=False)
    # unreadable files do not count, and the message says some were skipped
    root2 = write_image_folder(tmp_path / "ds2", per_class=2, partitioned=False)
    (root2 / "frog" / "0000.png").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"frog \(1\).*1 unreadable file"):
        load_dataset(root2, progress=False)


@pytest.mark.parametrize("val_name", ["val", "valid", "validation"])
def test_train_val_layout_is_splits_not_classes(tmp_path, val_name):
    root = tmp_path / "ds"
    write_image_folder(root, per_class=4)  # train/ + test/
    (root / "test").rename(root / val_name)
    ds = load_dataset(root, progress=False)
    assert ds.classes == sorted(CLASSES)  # never classes named "train" and "val"
    assert ds.counts(TRAIN) == {c: 4 for c in CLASSES}
    assert ds.counts(VAL) == {c: 2 for c in CLASSES}
    assert not ds.has_test_partition
    split = make_split(ds)  # auto: the user's own val folder is the validation split
    assert split.name == "official"
    np.testing.assert_array_equal(np.sort(split.val), np.flatnonzero(ds.partition == VAL))
    assert len(split.train) == 12 and len(split.test) == 0
    assert all(n.startswith(("train/", f"{val_name}/")) for n in ds.names)


def test_train_val_test_layout(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=4)
    write_image_folder(tmp_path / "v", per_class=2, partitioned=False)
    (tmp_path / "v").rename(root / "val")
    ds = load_dataset(root, progress=False)
    split = make_split(ds)
    assert split.sizes() == {"train": 12, "val": 6, "test": 6}
    assert set(ds.partition[split.val]) == {VAL} and set(ds.partition[split.test]) == {TEST}


def test_train_only_gets_a_seeded_stratified_holdout(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=10)
    for f in (root / "test").rglob("*.png"):
        f.unlink()
    for d in sorted((root / "test").iterdir()):
        d.rmdir()
    (root / "test").rmdir()
    ds = load_dataset(root, progress=False)
    assert ds.classes == sorted(CLASSES) and not ds.has_val_partition
    a, b = make_split(ds, seed=1), make_split(ds, seed=1)
    np.testing.assert_array_equal(a.val, b.val)
    assert len(a.val) and len(a.train) and len(a.test)
    assert set(np.bincount(ds.labels[a.val])) == {len(a.val) // 3}  # same share per class


def test_two_validation_folders_are_refused(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=2)
    (root / "test").rename(root / "val")
    write_image_folder(tmp_path / "x", per_class=2, partitioned=False)
    (tmp_path / "x").rename(root / "validation")
    with pytest.raises(DataError, match=r"val/ and validation/"):
        load_dataset(root, progress=False)


def test_symlinks_are_followed_and_loops_do_not_hang(tmp_path):
    real = write_image_folder(tmp_path / "real", per_class=3, partitioned=False)
    root = tmp_path / "linked"
    root.mkdir()
    (root / "cat").symlink_to(real / "cat", target_is_directory=True)  # a linked folder
    (root / "dog").mkdir()
    for f in sorted((real / "dog").iterdir()):
        (root / "dog" / f.name).symlink_to(f)  # linked files
    (root / "dog" / "loop").symlink_to(root, target_is_directory=True)  # a loop
    (root / "dog" / "dangling.png").symlink_to(tmp_path / "nowhere.png")
    ds = load_dataset(root, progress=False)
    assert ds.classes == ["cat", "dog"] and ds.counts(TRAIN) == {"cat": 3, "dog": 3}
    assert [s.split(" (")[0] for s in ds.skipped] == ["dog/dangling.png"]


def test_memory_check_refuses_what_cannot_fit(monkeypatch):
    monkeypatch.setattr(memory_mod, "_memory_available", lambda: 4_000_000_000)
    memory_mod.check_memory(10_000, 224, "src")  # 1.5 GB fits in 4 GB
    with pytest.raises(DataError, match=r"50,000 images at 224x224 need 7\.5 GB"):
        memory_mod.check_memory(50_000, 224, "src")


def test_empty_class_folder(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=2, partitioned=False)
    (root / "zebra").mkdir()
    with pytest.raises(DataError, match="zebra"):
        load_dataset(root, progress=False)


def test_test_partition_missing_a_class(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=2)
    for f in (root / "test" / "frog").iterdir():
        f.unlink()
    (root / "test" / "frog").rmdir()
    with pytest.raises(DataError, match="frog"):
        load_dataset(root, progress=False)


def test_no_images_and_bad_layouts(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no image"):
        load_dataset(tmp_path / "empty", progress=False)
    deep = tmp_path / "deep" / "a" / "b" / "c"
    deep.mkdir(parents=True)
    Image.new("RGB", (4, 4)).save(deep / "x.png")
    Image.new("RGB", (4, 4)).save(tmp_path / "deep" / "a" / "y.png")
    with pytest.raises(DataError, match="expected ROOT"):
        load_dataset(tmp_path / "deep", progress=False)
    with pytest.raises(DataError, match="not found"):
        load_dataset(tmp_path / "missing", progress=False)
    (tmp_path / "file.txt").write_text("hi")
    with pytest.raises(DataError, match="not a dataset"):
        load_dataset(tmp_path / "file.txt", progress=False)


def test_single_class_is_refused(tmp_path):
    (tmp_path / "only").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "only" / "x.png")
    with pytest.raises(DataError, match="at least 2"):
        load_dataset(tmp_path, progress=False)


def test_hidden_files_are_ignored(tmp_path):
    root = write_image_folder(tmp_path / "ds", per_class=2, partitioned=False)
    (root / "cat" / ".DS_Store").write_bytes(b"\0\0junk")
    (root / "cat" / "Thumbs.db").write_bytes(b"\0")
    assert len(load_dataset(root, progress=False)) == 6


@pytest.mark.slow
def test_shared_archive_loads_and_caches(shared_archive, monkeypatch):
    ds = load_dataset(shared_archive, progress=False)
    assert len(ds) == 60000 and ds.counts(TRAIN)["cat"] == 5000 and ds.counts(TEST)["cat"] == 1000

    def boom(*a, **k):
        raise AssertionError("decoded the archive again instead of using the cache")

    monkeypatch.setattr("imageclf.data.read_source", boom)
    again = load_dataset(shared_archive, progress=False)
    assert len(again) == 60000 and again.fingerprint == ds.fingerprint


def test_inspect_reads_archives_and_refuses_what_training_refuses(tmp_path):
    """`data inspect` lists a source with the same function training reads it with."""
    from imageclf.data.inspect import inspect

    root = write_image_folder(tmp_path / "flat", per_class=3, partitioned=False)
    for source in (root, _zip(root, tmp_path / "d.zip"), _tar(root, tmp_path / "d.tar.gz")):
        found = inspect(source, progress=False)
        assert found.classes == CLASSES and len(found.sizes) == 3 * len(CLASSES)
    (tmp_path / "file.txt").write_text("hi")
    for path, message in (
        (tmp_path / "missing", "not found"),
        (tmp_path / "file.txt", "not a dataset"),
    ):
        with pytest.raises(DataError, match=message):
            inspect(path, progress=False)
