"""``imageclf predict --sort-into DIR``: pictures copied (or linked) into DIR/<label>/ and
DIR/unsure/, nothing overwritten or lost, unreadable pictures named, a summary."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from helpers import make_tiny_bundle, run_cli, write_image_folder
from PIL import Image

from imageclf import Predictor
from imageclf.prediction.sorting import folder_names


def _bundle(tmp_path: Path, unsure: bool, classes=None) -> Path:
    """Threshold 0: never unsure; 0.999: always unsure (a random model is never that sure)."""
    return make_tiny_bundle(
        tmp_path / f"m-{unsure}.safetensors",
        classes=classes,
        calibration={"temperature": 1.0, "threshold": 0.999 if unsure else 0.0},
    )


def _sort(bundle, inputs, target, capsys, *extra):
    argv = ["-q", "predict", str(bundle), *map(str, inputs), "--sort-into", str(target)]
    code, out, err = run_cli([*argv, "--format", "json", *extra], capsys)
    return code, json.loads(out), err


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


@pytest.fixture()
def photos(tmp_path):
    """3 classes x 2 PNGs (names repeat across folders), one broken PNG."""
    root = write_image_folder(tmp_path / "photos", per_class=2, partitioned=False)
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return root


def test_copies_go_to_their_label_and_nothing_is_lost(tmp_path, photos, capsys):
    bundle = _bundle(tmp_path, unsure=False)
    before = _files(photos)
    target = tmp_path / "sorted"
    code, entries, err = _sort(bundle, [photos], target, capsys)
    assert code == 2  # the broken picture
    assert _files(photos) == before  # originals untouched
    predictor = Predictor.load(bundle)
    copied = [e for e in entries if "predictions" in e]
    assert len(copied) == 6
    for entry in copied:
        label = predictor.predict(entry["path"], top_k=1)[0][0][0]
        dest = Path(entry["sorted_to"])
        assert dest.parent == target / label and not dest.is_symlink()
        assert dest.read_bytes() == Path(entry["path"]).read_bytes()
    assert len({e["sorted_to"] for e in copied}) == 6
    assert "0000-2.png" in {Path(e["sorted_to"]).name for e in copied}  # same name, numbered
    broken = next(e for e in entries if "error" in e)
    assert broken["path"].endswith("broken.png") and "sorted_to" not in broken
    assert "skipped" in err and "broken.png" in err
    assert f"sorted 6 of 7 pictures into {target} (copies):" in err
    assert "not sorted (named above): 1" in err
    counts = {p.name: len(list(p.iterdir())) for p in target.iterdir()}
    for folder, n in counts.items():
        assert f"  {folder}" in err and err.split(f"  {folder}")[1].split()[0] == str(n)
    assert sum(counts.values()) == 6


def test_unsure_pictures_go_to_unsure(tmp_path, photos, capsys):
    target = tmp_path / "sorted"
    code, entries, _ = _sort(_bundle(tmp_path, unsure=True), [photos], target, capsys)
    assert code == 2
    assert [p.name for p in target.iterdir()] == ["unsure"]
    assert all(Path(e["sorted_to"]).parent.name == "unsure" for e in entries if e.get("unsure"))
    assert len(list((target / "unsure").iterdir())) == 6


def test_never_overwrites_and_does_not_reread_what_it_sorted(tmp_path, photos, capsys):
    """DIR inside the input folder: the second run reads the same 7 pictures (not the 6
    copies), and numbers its copies beside the first run's, which stay as they were."""
    bundle = _bundle(tmp_path, unsure=True)
    target = photos / "sorted"
    (target / "unsure").mkdir(parents=True)
    (target / "unsure" / "0000.png").write_bytes(b"someone else's file")
    _, first, _ = _sort(bundle, [photos], target, capsys)
    after_first = _files(target)
    _, second, _ = _sort(bundle, [photos], target, capsys)
    assert sorted(e["path"] for e in first) == sorted(e["path"] for e in second)
    assert len(first) == 7
    after_second = _files(target)
    assert {k: after_second[k] for k in after_first} == after_first  # nothing replaced
    assert after_second["unsure/0000.png"] == b"someone else's file"
    assert len(after_second) == 1 + 6 + 6


def test_link_makes_symlinks_to_the_originals(tmp_path, photos, capsys):
    target = tmp_path / "sorted"
    _, entries, err = _sort(_bundle(tmp_path, False), [photos], target, capsys, "--link")
    assert "(symlinks):" in err
    for entry in (e for e in entries if "sorted_to" in e):
        link = Path(entry["sorted_to"])
        assert link.is_symlink() and link.resolve() == Path(entry["path"]).resolve()


def test_labels_become_safe_distinct_folder_names(tmp_path, capsys):
    classes = ["a/b", "..", "unsure", "Cat", "cat", "x\\y", ".hidden"]
    folders, unsure = folder_names(classes)
    assert unsure == "unsure"
    assert folders == {
        "a/b": "a_b", "..": "_.", "unsure": "unsure-2", "Cat": "Cat", "cat": "cat-2",
        "x\\y": "x_y", ".hidden": "_hidden",
    }  # fmt: skip
    bundle = _bundle(tmp_path, unsure=False, classes=classes)
    root = tmp_path / "pics"
    root.mkdir()
    rng = np.random.default_rng(0)
    for i in range(12):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(root / f"{i}.png")
    target = tmp_path / "out" / "sorted"
    code, entries, _ = _sort(bundle, [root], target, capsys)
    assert code == 0 and len(entries) == 12
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.suffix == ".png"]
    assert len(written) == 24  # 12 originals + 12 copies, every copy one level under target
    for entry in entries:
        dest = Path(entry["sorted_to"])
        assert dest.parent.parent == target and dest.parent.name in folders.values()
        assert dest.parent.name == folders[entry["predictions"][0]["label"]]


def test_table_output_keeps_the_summary_on_stdout(tmp_path, capsys):
    root = write_image_folder(tmp_path / "ok", per_class=1, partitioned=False)
    argv = ["-q", "predict", str(_bundle(tmp_path, True)), str(root), "--sort-into"]
    code, out, err = run_cli([*argv, str(tmp_path / "s")], capsys)
    assert code == 0 and err == ""
    assert out.splitlines()[-2:] == [f"sorted 3 of 3 pictures into {tmp_path / 's'} (copies):",
                                     "  unsure      3"]  # fmt: skip


def test_bad_targets_are_one_line(tmp_path, photos, capsys):
    bundle = _bundle(tmp_path, unsure=False)
    (tmp_path / "file").write_text("x")
    cases = [
        (["--link"], "--link goes with --sort-into"),
        (["--sort-into", str(tmp_path / "file")], "is a file"),
        (["--sort-into", str(tmp_path)], "holds the input folder"),
        (["--sort-into", str(photos)], "holds the input folder"),
    ]
    for extra, needle in cases:
        code, out, err = run_cli(["-q", "predict", str(bundle), str(photos), *extra], capsys)
        assert code == 2 and needle in err and out == ""
    assert not any(p.is_dir() for p in photos.iterdir() if p.name not in ("cat", "dog", "frog"))


def test_a_file_that_cannot_be_written_is_named_and_the_original_kept(tmp_path, capsys):
    root = write_image_folder(tmp_path / "ok", per_class=1, partitioned=False)
    target = tmp_path / "s"
    target.mkdir()
    (target / "unsure").write_text("a file where the unsure folder would go")
    code, entries, err = _sort(_bundle(tmp_path, True), [root], target, capsys)
    assert code == 2 and err.count("classified but not sorted") == 3
    assert all("sorted_to" not in e for e in entries)
    assert "sorted 0 of 3 pictures" in err and "not sorted (named above): 3" in err
    assert all((root / c / "0000.png").is_file() for c in ("cat", "dog", "frog"))
    assert (target / "unsure").read_text() == "a file where the unsure folder would go"
