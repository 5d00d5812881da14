"""``imageclf predict`` on paths that are not ordinary image files (issue 12, item 8):
a huge sparse file, a FIFO, a symlink loop, a device. Each is one clear error for that
path; every other file still gets its result."""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

import numpy as np
import pytest
from helpers import png_bytes, run_cli

from imageclf.errors import UserInputError
from imageclf.fileio import read_file_capped, unreadable_reason
from imageclf.imaging import MAX_FILE_BYTES, open_image


def _run(argv, capsys):
    """``imageclf -q ...``: (exit code, stdout, stderr)."""
    return run_cli(["-q", *argv], capsys)


@pytest.fixture
def hostile_paths(tmp_path) -> dict[str, Path]:
    """One good image, and one of each kind of path that is not a readable image file."""
    paths = {"good": tmp_path / "good.png"}
    paths["good"].write_bytes(png_bytes())
    paths["sparse"] = tmp_path / "huge.png"
    with open(paths["sparse"], "wb") as handle:  # 30 GB that take no disk space
        handle.write(png_bytes()[:16])
        handle.truncate(30 * 1024**3)
    paths["fifo"] = tmp_path / "pipe.png"
    os.mkfifo(paths["fifo"])
    paths["loop"] = tmp_path / "loop.png"
    paths["loop"].symlink_to(paths["loop"])
    paths["missing"] = tmp_path / "missing.png"
    paths["device"] = Path("/dev/zero")
    return paths


def test_each_bad_path_is_reported_truthfully_and_the_good_one_classified(
    tiny_bundle, hostile_paths, capsys
):
    order = ["sparse", "good", "fifo", "loop", "missing", "device"]
    argv = ["predict", str(tiny_bundle), *(str(hostile_paths[k]) for k in order)]

    # A FIFO that is opened for reading would block until a writer came: a watchdog
    # writer makes such a bug fail the test instead of hanging it.
    def unblock() -> None:
        if not done.wait(60):
            with open(hostile_paths["fifo"], "wb") as writer:
                writer.write(b"blocked")

    done = threading.Event()
    threading.Thread(target=unblock, daemon=True).start()
    try:
        code, out, err = _run([*argv, "--format", "json"], capsys)
    finally:
        done.set()
    assert code == 2
    entries = {e["path"]: e for e in json.loads(out)}
    by_kind = {kind: entries[str(hostile_paths[kind])] for kind in order}
    assert "predictions" in by_kind["good"] and len(by_kind["good"]["predictions"]) == 3
    errors = {kind: by_kind[kind].get("error", "") for kind in order if kind != "good"}
    assert "30,720 MB" in errors["sparse"] and f"{MAX_FILE_BYTES // 2**20} MB" in errors["sparse"]
    assert "named pipe (FIFO)" in errors["fifo"]
    assert "symbolic links" in errors["loop"]
    assert errors["missing"] == "no such file or folder"
    assert "character device" in errors["device"]
    assert "no such file" not in errors["fifo"] + errors["loop"] + errors["device"]
    assert "Traceback" not in err and "MemoryError" not in err


def test_capped_read_checks_the_size_before_reading(tmp_path):
    small = tmp_path / "small.bin"
    small.write_bytes(b"x" * 100)
    assert read_file_capped(small, 100) == b"x" * 100
    with pytest.raises(UserInputError, match="at most"):
        read_file_capped(small, 99)
    huge = tmp_path / "huge.bin"
    with open(huge, "wb") as handle:
        handle.truncate(2**40)  # a terabyte, sparse: reading it would never finish
    with pytest.raises(UserInputError, match="1,048,576 MB"):
        read_file_capped(huge, 1024)


def test_a_fifo_is_refused_without_waiting_for_a_writer(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    outcome: list[BaseException | bytes] = []

    def attempt() -> None:
        try:
            outcome.append(read_file_capped(fifo, 1024))
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=attempt, daemon=True)
    thread.start()
    thread.join(30)
    if thread.is_alive():  # it blocked: give it a writer so the thread ends, then fail
        with open(fifo, "wb") as writer:
            writer.write(b"x")
        pytest.fail("reading a FIFO blocked waiting for a writer")
    assert isinstance(outcome[0], UserInputError) and "FIFO" in str(outcome[0])
    assert "FIFO" in unreadable_reason(fifo)


def test_open_image_reports_unreadable_paths_as_image_errors(tmp_path):
    from imageclf.errors import InvalidImageError

    loop = tmp_path / "loop.png"
    loop.symlink_to(loop)
    with pytest.raises(InvalidImageError, match="symbolic links"):
        open_image(loop)
    with pytest.raises(InvalidImageError, match="folder"):
        open_image(tmp_path)


def test_arrays_in_any_common_range_mean_the_same_picture(tiny_bundle):
    """A float picture in 0..1 (scikit-image, matplotlib) is the same picture as its uint8
    form; a plain cast read 0.7 as 0 and classified a black square with confidence."""
    from imageclf import Predictor

    predictor = Predictor.load(tiny_bundle)
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    expected = predictor.prepare(pixels)
    for same in (pixels / 255.0, (pixels / 255.0).astype(np.float32), pixels.astype(np.int64),
                 pixels.astype(np.float64)):  # fmt: skip
        np.testing.assert_array_equal(predictor.prepare(same), expected)
    grey = pixels[:, :, 0]
    np.testing.assert_array_equal(predictor.prepare(grey[:, :, None]), predictor.prepare(grey))
    assert predictor.predict(pixels / 255.0) == predictor.predict(pixels)


@pytest.mark.parametrize(
    ("array", "message"),
    [
        (np.full((8, 8, 3), 300.0), r"0\.\.255"),
        (np.full((8, 8, 3), -1, np.int16), r"0\.\.255"),
        (np.full((8, 8, 3), np.nan), "NaN"),
        (np.zeros((8, 8, 3), bool), "numbers"),
        (np.zeros((8, 8, 3), object), "numbers"),
        (np.zeros((8, 8, 2), np.uint8), "channels"),
        (np.zeros((2, 8, 8, 3, 1), np.uint8), "shape"),
    ],
)
def test_arrays_that_are_not_pictures_are_refused(tiny_bundle, array, message):
    from imageclf import Predictor

    with pytest.raises(UserInputError, match=message):
        Predictor.load(tiny_bundle).predict(array)
