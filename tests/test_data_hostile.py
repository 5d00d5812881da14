"""Hostile training data (the training-data side of the hostile-input issue): files that
are not pictures though named like one, archives and pickles that decompress to far more
than they weigh, class names no model can store, names that carry terminal escapes, and
folder trees that never end. Each is a skipped-and-named file or one clear line (exit 2),
never a hang, a traceback or gigabytes of memory. Budgets are monkeypatched small so every
crafted input stays a few kilobytes on disk."""

from __future__ import annotations

import codecs
import contextlib
import io
import itertools
import os
import pickle
import struct
import tarfile
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from helpers import one_line_error, png_bytes, run_cli, write_image_folder
from PIL import Image

from imageclf.data import archives, cache, cifar, load_dataset
from imageclf.data.folders import MAX_FOLDER_DEPTH, walk_folder
from imageclf.errors import DataError
from imageclf.fileio import printable
from imageclf.paths import cache_dir

ESC = "\x1b"


def _run(argv: list[str], capsys) -> tuple[int, str, str]:
    """``imageclf -q ...`` in-process: (exit code, stdout, stderr)."""
    return run_cli(["-q", *argv], capsys)


def _flat(root: Path, per_class: int = 3) -> Path:
    return write_image_folder(root, per_class=per_class, partitioned=False)


@contextlib.contextmanager
def _fifo_watchdog(fifo: Path, after: float = 20.0) -> Iterator[None]:
    """A FIFO opened for reading blocks until a writer comes: a late writer makes such a
    bug fail the test instead of hanging it."""
    done = threading.Event()

    def unblock() -> None:
        if not done.wait(after):
            with open(fifo, "wb") as writer:
                writer.write(b"blocked")

    threading.Thread(target=unblock, daemon=True).start()
    try:
        yield
    finally:
        done.set()


# ---------------------------------------------------------------- 1. files named like pictures
@pytest.fixture
def hostile_folder(tmp_path) -> Path:
    """Three classes of good pictures; cat/ also holds a link to /dev/zero, a FIFO, a 30 GB
    and a 3 GB sparse file, each named like a picture."""
    root = _flat(tmp_path / "ds")
    (root / "cat" / "zero.jpg").symlink_to("/dev/zero")
    os.mkfifo(root / "cat" / "pipe.jpg")
    for name, size in (("huge.png", 30 * 1024**3), ("big.png", 3 * 1024**3)):
        with open(root / "cat" / name, "wb") as handle:  # sparse: no disk space used
            handle.write(png_bytes()[:16])
            handle.truncate(size)
    return root


def _assert_named(text: str) -> None:
    assert "cat/zero.jpg" in text and "character device" in text
    assert "cat/pipe.jpg" in text and "named pipe (FIFO)" in text
    assert "cat/huge.png" in text and "30,720 MB" in text
    assert "cat/big.png" in text and "3,072 MB" in text


def test_inspect_skips_and_names_devices_fifos_and_huge_files(hostile_folder, capsys):
    with _fifo_watchdog(hostile_folder / "cat" / "pipe.jpg"):
        start = time.monotonic()
        code, out, err = _run(["data", "inspect", str(hostile_folder)], capsys)
    assert code == 0, err
    assert time.monotonic() - start < 10
    assert "unreadable images (skipped in training): 4" in out
    _assert_named(out)


def test_training_reader_skips_and_names_them_too(hostile_folder, capsys):
    """``data info`` decodes with the reader ``train`` uses (``load_dataset``)."""
    with _fifo_watchdog(hostile_folder / "cat" / "pipe.jpg"):
        code, out, err = _run(["data", "info", str(hostile_folder)], capsys)
    assert code == 0, err
    assert "skipped 4 unreadable image(s)" in out and "cat" in out
    _assert_named(out)
    ds = load_dataset(hostile_folder, progress=False)
    assert len(ds) == 9 and len(ds.skipped) == 4


def test_cifar_folder_batches_are_read_capped(tmp_path, capsys):
    """An extracted CIFAR folder: a FIFO or a 30 GB sparse file named like a batch is one
    clear line, and files that are no batch are not read at all."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    os.mkfifo(folder / "data_batch_1")
    (folder / "unrelated.bin").symlink_to("/dev/zero")  # never opened
    with _fifo_watchdog(folder / "data_batch_1"):
        code, _, err = _run(["data", "info", str(tmp_path)], capsys)
    one_line_error(code, err, "data_batch_1", "named pipe (FIFO)")
    (folder / "data_batch_1").unlink()
    with open(folder / "data_batch_1", "wb") as handle:
        handle.truncate(30 * 1024**3)
    code, _, err = _run(["data", "info", str(tmp_path)], capsys)
    one_line_error(code, err, "data_batch_1", "30,720 MB", "at most 64 MB")


# ---------------------------------------------------------------- 2. archives and pickles
def _zip(dest: Path, members: dict[str, bytes]) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in members.items():
            archive.writestr(name, data)
    return dest


def _tar(dest: Path, members: dict[str, bytes], **kwargs) -> Path:
    with tarfile.open(dest, "w:gz", **kwargs) as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return dest


def _pictures(n: int = 3) -> dict[str, bytes]:
    """Three classes of ``n`` noisy pictures, as archive members (they barely compress)."""
    rng = np.random.default_rng(0)
    out = {}
    for c in ("cat", "dog", "frog"):
        for i in range(n):
            buffer = io.BytesIO()
            Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(buffer, "PNG")
            out[f"ds/{c}/{i}.png"] = buffer.getvalue()
    return out


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_member_over_the_member_budget_is_named(tmp_path, capsys, monkeypatch, kind):
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 20_000)
    members = {**_pictures(), "ds/dog/zeros.png": bytes(50_000)}
    path = (_zip if kind == "zip" else _tar)(tmp_path / f"d.{kind}", members)
    for command in ("inspect", "info"):
        code, _, err = _run(["data", command, str(path)], capsys)
        one_line_error(code, err, "member ds/dog/zeros.png is 50,000 bytes", "20,000 bytes")


def test_a_zip_is_refused_from_its_directory_before_decompressing(tmp_path, capsys, monkeypatch):
    """A member that declares more than the budget is refused without reading it."""
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 20_000)
    path = _zip(tmp_path / "d.zip", {**_pictures(), "ds/dog/zeros.png": bytes(50_000)})
    monkeypatch.setattr(zipfile.ZipFile, "read", lambda *a: pytest.fail("decompressed"))
    code, _, err = _run(["data", "inspect", str(path)], capsys)
    one_line_error(code, err, "ds/dog/zeros.png")


def test_a_zip_member_that_holds_more_than_it_declares_is_corrupt(tmp_path, capsys):
    """zipfile stops at the declared size (then the CRC fails): a lie cannot inflate it."""
    data = bytearray(_zip(tmp_path / "d.zip", {"ds/cat/a.png": bytes(1_000_000)}).read_bytes())
    struct.pack_into("<I", data, 22, 10)  # the local header's uncompressed size
    central = data.find(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 10)  # and the central directory's
    (tmp_path / "d.zip").write_bytes(bytes(data))
    code, _, err = _run(["data", "inspect", str(tmp_path / "d.zip")], capsys)
    one_line_error(code, err, "corrupt")


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_a_compression_bomb_is_refused_by_its_ratio(tmp_path, capsys, monkeypatch, kind):
    monkeypatch.setattr(archives, "RATIO_FLOOR_BYTES", 30_000)
    good = (_zip if kind == "zip" else _tar)(tmp_path / f"good.{kind}", _pictures(20))
    assert len(load_dataset(good, progress=False, use_cache=False)) == 60  # pictures pass
    members = {f"ds/dog/z{i}.png": bytes(20_000) for i in range(5)}  # 100 KB of zeros
    path = (_zip if kind == "zip" else _tar)(tmp_path / f"d.{kind}", members)
    code, _, err = _run(["data", "inspect", str(path)], capsys)
    line = one_line_error(code, err, "times its compressed size", "decompression bomb")
    assert "ds/dog/z" in line


@pytest.mark.parametrize("kind", ["zip", "tar.gz"])
def test_the_total_budget_names_the_member_that_passes_it(tmp_path, capsys, monkeypatch, kind):
    members = _pictures()
    path = (_zip if kind == "zip" else _tar)(tmp_path / f"d.{kind}", members)
    budget = sum(len(d) for d in members.values()) * 2 // 3
    monkeypatch.setattr(archives, "MAX_ARCHIVE_BYTES", budget)
    code, _, err = _run(["data", "inspect", str(path)], capsys)
    one_line_error(code, err, "takes the archive past", "extract it")


def test_a_tar_header_bigger_than_a_member_may_be_is_not_read(tmp_path, capsys, monkeypatch):
    """tarfile reads a pax header whole: a 2 GB one was 2 GB of memory from a tiny file."""
    monkeypatch.setattr(archives, "MAX_MEMBER_BYTES", 20_000)
    path = _tar(
        tmp_path / "d.tar.gz",
        _pictures(),
        format=tarfile.PAX_FORMAT,
        pax_headers={"comment": "x" * 50_000},
    )
    code, _, err = _run(["data", "inspect", str(path)], capsys)
    one_line_error(code, err, "needs a read of", "20,000 bytes")


def _batch(data, labels) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels}, protocol=2)


def _cifar_tar(dest: Path, first: bytes | None = None, n: int = 4) -> Path:
    """A CIFAR-style archive of 6 small batches; ``first`` replaces data_batch_1."""
    rng = np.random.default_rng(0)
    blobs = {
        f"cifar-10-batches-py/{name}": _batch(
            rng.integers(0, 255, (n, 3072), dtype=np.uint8), [i % 10 for i in range(n)]
        )
        for name in cifar.CIFAR_BATCHES
    }
    if first is not None:
        blobs["cifar-10-batches-py/data_batch_1"] = first
    return _tar(dest, blobs)


def test_a_batch_of_shared_rows_is_refused_before_it_is_expanded(tmp_path, capsys):
    """A list holding one row many times pickles to a few bytes per row; converting it
    to an array expanded every row (22 s and 1.2 GB from a few hundred bytes)."""
    row = [7] * 3072
    first = _batch([row] * 2000, [0] * 2000)  # 6 MB of pixels once expanded
    assert len(first) < 20_000
    path = _cifar_tar(tmp_path / "c.tar.gz", first)
    start = time.process_time()
    code, _, err = _run(["data", "info", str(path)], capsys)
    one_line_error(code, err, "data_batch_1", "not a uint8 array")
    assert time.process_time() - start < 2


def test_a_batch_over_the_operation_budget_is_not_unpickled(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_PICKLE_OPS", 1_000)
    labels = list(range(10)) * 300  # 3,000 labels: over 1,000 operations
    first = _batch(np.zeros((4, 3072), np.uint8), labels)
    path = _cifar_tar(tmp_path / "c.tar.gz", first)
    monkeypatch.setattr(cifar._CifarUnpickler, "load", lambda self: pytest.fail("unpickled"))
    code, _, err = _run(["data", "info", str(path)], capsys)
    one_line_error(code, err, "data_batch_1", "more than 1,000 pickle operations")


def test_a_batch_over_the_byte_budget_is_named(tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(cifar, "MAX_BATCH_BYTES", 5_000)
    code, _, err = _run(["data", "info", str(_cifar_tar(tmp_path / "c.tar.gz"))], capsys)
    one_line_error(code, err, "CIFAR file data_batch_1 is", "at most 5,000 bytes")


def test_a_batch_may_encode_only_as_pickles_spell_bytes(tmp_path):
    """``_codecs.encode`` with hex on its own output doubles a string per call."""

    class Hex:
        def __reduce__(self):
            return (codecs.encode, (b"ab", "hex"))

    blob = pickle.dumps({b"data": Hex(), b"labels": []}, protocol=2)
    with pytest.raises(DataError, match="refusing to encode with 'hex'"):
        cifar._load_cifar_batch(blob, "data_batch_1")


def test_real_looking_cifar_batches_still_load(tmp_path):
    """Python 3 protocol-2 pickles spell bytes through ``_codecs.encode(..., 'latin1')``."""
    ds = load_dataset(_cifar_tar(tmp_path / "c.tar.gz"), progress=False, use_cache=False)
    assert len(ds) == 24 and ds.images.dtype == np.uint8


# ---------------------------------------------------------------- 3. class names
@pytest.mark.parametrize(
    ("name", "needle"),
    [("a" * 220, "(220 characters)"), ("tab\there", "tab\\there"), ("new\nline", "new\\nline")],
    ids=["220-characters", "tab", "newline"],
)
def test_a_class_name_no_model_can_store_is_refused_up_front(tmp_path, capsys, name, needle):
    root = _flat(tmp_path / "ds", per_class=2)
    os.rename(root / "dog", root / name)
    code, _, err = _run(["data", "inspect", str(root)], capsys)
    one_line_error(code, err, "cannot be a class name", needle, "rename it")
    start = time.monotonic()
    argv = ["train", "--recipe", "seed-a", "--data", str(root), "--out", str(tmp_path / "run")]
    code, _, err = _run([*argv, "--epochs", "1"], capsys)
    one_line_error(code, err, "cannot be a class name", needle)
    assert time.monotonic() - start < 10  # before the first epoch, not after the last
    assert not list((tmp_path / "run").rglob("*.safetensors"))


def test_cifar_meta_class_names_are_checked_too(tmp_path):
    path = _cifar_tar(tmp_path / "c.tar.gz")
    blobs = {}
    with tarfile.open(path) as archive:
        for member in archive:
            blobs[member.name] = archive.extractfile(member).read()
    names = [b"x" * 220] + [f"c{i}".encode() for i in range(9)]
    blobs["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": names})
    with pytest.raises(DataError, match="class name of 220 characters"):
        load_dataset(_tar(tmp_path / "m.tar.gz", blobs), progress=False, use_cache=False)
    blobs["cifar-10-batches-py/batches.meta"] = pickle.dumps({b"label_names": [b"a\tb"] * 10})
    with pytest.raises(DataError, match=r"class 'a\\tb'"):
        load_dataset(_tar(tmp_path / "t.tar.gz", blobs), progress=False, use_cache=False)


def test_a_cached_dataset_is_held_to_the_same_names(tmp_path):
    """A cache decoded before names were checked cannot smuggle a bad one into training."""
    root = _flat(tmp_path / "ds", per_class=2)
    ds = load_dataset(root, progress=False)
    ds.classes = ["cat", "do\tg", "frog"]
    cache.store(cache_dir(), ds)
    with pytest.raises(DataError, match=r"class 'do\\tg'"):
        load_dataset(root, progress=False)


# ---------------------------------------------------------------- 4. terminal escapes
def test_printable_escapes_controls_and_nothing_else():
    assert printable("chat-noir_é 猫 .png") == "chat-noir_é 猫 .png"
    assert printable("a\x1b]0;x\x07b\x1b[2J") == "a\\x1b]0;x\\x07b\\x1b[2J"
    assert printable("t\tn\nr\rdel\x7fc1\x9b") == "t\\tn\\nr\\rdel\\x7fc1\\x9b"
    assert printable("ls\u2028bidi\u202e") == "ls\\u2028bidi\\u202e"


def test_names_from_the_data_are_printed_escaped(tmp_path, capsys):
    root = _flat(tmp_path / f"ds{ESC}[31m", per_class=2)
    (root / "cat" / f"{ESC}]0;pwned{ESC}\\.txt").write_text("not an image")
    (root / "dog" / f"evil{ESC}[2J.png").write_bytes(b"\x89PNG\r\n\x1a\nbroken")
    code, out, err = _run(["data", "inspect", str(root)], capsys)
    assert code == 0, err
    assert ESC not in out + err
    assert "\\x1b]0;pwned\\x1b\\.txt" in out and "evil\\x1b[2J.png" in out
    assert "ds\\x1b[31m" in out
    code, out, err = _run(["data", "info", str(root)], capsys)  # the training reader's log
    assert code == 0, err
    assert ESC not in out + err and "evil\\x1b[2J.png" in out
    os.rename(root / "frog", root / f"frog{ESC}[8m")  # and in an error line
    code, _, err = _run(["data", "inspect", str(root)], capsys)
    one_line_error(code, err, "frog\\x1b[8m")


# ---------------------------------------------------------------- 5. endless folders
def test_deeply_nested_folders_are_one_clear_error(tmp_path, capsys):
    """1,100 nested folders were a RecursionError from os.walk."""
    root = _flat(tmp_path / "ds", per_class=2)
    here = os.getcwd()
    os.chdir(root / "cat")  # made and removed one level at a time: paths stay short
    try:
        for _ in range(1100):  # os.makedirs and shutil.rmtree recurse too
            os.mkdir("d")
            os.chdir("d")
        os.chdir(here)
        for command in ("inspect", "info"):
            code, _, err = _run(["data", command, str(root)], capsys)
            one_line_error(code, err, f"nested more than {MAX_FOLDER_DEPTH} deep")
    finally:
        os.chdir(root / "cat")
        depth = 0
        while os.path.isdir("d"):
            os.chdir("d")
            depth += 1
        for _ in range(depth):
            os.chdir("..")
            os.rmdir("d")
        os.chdir(here)


def test_a_link_to_the_root_of_the_disk_is_not_walked(tmp_path):
    root = _flat(tmp_path / "ds", per_class=2)
    (root / "cat" / "everything").symlink_to("/", target_is_directory=True)
    links: list[str] = []
    walked = list(itertools.islice(walk_folder(root, links), 1000))
    assert len(walked) < 20 and not any(n.startswith("cat/everything/") for n, _ in walked)
    assert links == ["cat/everything -> /"]


def test_a_link_back_up_is_skipped_and_named(tmp_path, capsys):
    root = _flat(tmp_path / "ds", per_class=2)
    elsewhere = tmp_path / "elsewhere" / "deep"
    elsewhere.mkdir(parents=True)
    (elsewhere / "x.png").write_bytes(png_bytes())  # would be an image at the wrong depth
    (root / "cat" / "up").symlink_to(tmp_path, target_is_directory=True)
    code, out, err = _run(["data", "inspect", str(root)], capsys)
    assert code == 0, err
    assert "did not follow 1 folder link(s) back into the dataset: cat/up" in out
    assert "classes: 3" in out
