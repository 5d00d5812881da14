"""Settings of the right type but outside any sane range: recipe files, ``--seed``,
``--set`` and ``tune --space``. Each is one line naming the field, exit code 2, before
any data loads (the data folder below holds nothing, so reaching it would be another
error)."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli

from imageclf.errors import UserInputError
from imageclf.training.config import TrainConfig
from imageclf.training.recipe_files import write_recipe_file
from imageclf.training.resolve import resolve


def _refused(argv, capsys, needle: str) -> None:
    code, _, err = run_cli(["-q", *argv], capsys)
    assert code == 2, err
    assert needle in err, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err


@pytest.fixture
def nothing(tmp_path):
    """A data folder with no pictures: the checks must refuse before they look at it."""
    folder = tmp_path / "empty"
    folder.mkdir()
    return folder


# ---------------------------------------------------------------- recipe files
RECIPE_CASES = [
    ({"seed": -1}, "seed must be from 0 to 4294967295, got -1"),
    ({"seed": 2**70}, "seed must be from 0 to 4294967295"),
    ({"threads": -3}, "threads must be from 1 to 4096, got -3"),
    ({"eval_batch_size": 0}, "eval_batch_size must be from 1 to 65536, got 0"),
    ({"label_smoothing": 5}, "label_smoothing must be from 0 to below 1, got 5"),
    ({"batch_size": 10**18}, "batch_size must be from 1 to 65536"),
    ({"epochs": 10**9}, "epochs must be from 1 to 10000"),
    ({"momentum": 1.5}, "momentum must be from 0 to below 1"),
    ({"min_lr": -1}, "min_lr must be from 0 to 100"),
    ({"lr": 1e300}, "lr must be above 0 and at most 10000"),
    ({"warmup": 2}, "warmup must be from 0 to 1"),
    ({"plateau_factor": 0}, "plateau_factor must be above 0 and at most 1"),
    ({"val_size": -5}, "val_size must be from 0 to"),
    ({"subset": 0}, "subset must be from 1 to"),
    ({"freeze_groups": -1}, "freeze_groups must be from 0 to 100"),
    ({"augment": {"translate": 32}}, "augment.translate must be below the image size (32 px)"),
    ({"augment": {"translate": -3}}, "augment.translate must be an integer from 0 to 512"),
    ({"augment": {"cutout": 40}}, "augment.cutout must be at most the image size (32 px)"),
    ({"augment": {"rotate": "15"}}, "augment.rotate must be a number from 0 to 180 degrees"),
    ({"augment": {"shift": 1}}, "augment.shift must be a number from 0 to below 1"),
    ({"augment": {"crop_scale": -0.5}}, "augment.crop_scale must be a number from 0 to 1"),
    ({"augment": ["flip"]}, "config.augment must be a JSON object"),
    ({"augment": [1]}, "config.augment must be a JSON object"),
    ({"arch_kwargs": {"widths": 0}}, 'arch_kwargs {"widths": 0} do not make a working fast'),
    ({"arch_kwargs": {"widths": "abc"}}, "do not make a working fast for 32x32 pictures"),
    ({"arch_kwargs": {"widths": [0]}}, "do not make a working fast"),
    ({"arch_kwargs": {"widths": [30000]}}, "make a fast of 8,106,900,312 numbers; at most"),
    ({"arch_kwargs": {"junk": 1}}, "unexpected keyword argument 'junk'"),
    ({"arch_kwargs": {"head_scale": 1e308}}, "not a sane number"),
    ({"arch_kwargs": {"widths": [64] * 2000}}, "characters of JSON; at most 4,096"),
    ({"image_size": 8}, "do not make a working fast for 8x8 pictures"),
    ({"augment": {"translate": 24}, "low_res_scale": 0.5, "low_res_fraction": 0.5}, "(16 px)"),
]


@pytest.mark.parametrize(("config", "needle"), RECIPE_CASES, ids=lambda v: str(v)[:40])
def test_hostile_recipe_files_are_refused_before_the_data(
    tmp_path, nothing, capsys, config, needle
):
    path = write_recipe_file(tmp_path / "hostile.json", name="hostile", base="fast", config=config)
    _refused(["train", "--recipe", str(path), "--data", str(nothing)], capsys, needle)


def test_the_recipe_name_must_be_printable(tmp_path, nothing, capsys):
    path = write_recipe_file(tmp_path / "r.json", name="x" * 300, base="fast", config={})
    _refused(["train", "--recipe", str(path), "--data", str(nothing)], capsys, "recipe must be")


# ---------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    ("options", "needle"),
    [
        (["--seed", "-1"], "seed must be from 0 to 4294967295, got -1"),
        (["--set", "eval_batch_size=0"], "eval_batch_size must be from 1 to 65536, got 0"),
        (["--set", "threads=-3"], "threads must be from 1 to 4096"),
        (["--set", "augment=[1]"], "augment must be augmentation settings, got [1]"),
        (["--set", 'augment={"rotate": "x"}'], "augment.rotate must be a number"),
        (["--label-smoothing", "1"], "label_smoothing must be from 0 to below 1, got 1.0"),
        (["--threads", "100000"], "threads must be from 1 to 4096"),
    ],
)
def test_hostile_options_are_refused_before_the_data(nothing, capsys, options, needle):
    _refused(["train", "--data", str(nothing), *options], capsys, needle)


def test_every_built_in_recipe_passes_its_own_checks():
    from imageclf.training.recipes import RECIPES

    for name in RECIPES:
        cfg = resolve(name)
        assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_the_python_api_gets_the_same_checks():
    with pytest.raises(UserInputError, match="lr must be above 0 and at most 10000, got nan"):
        resolve("fast", lr=float("nan"))
    with pytest.raises(UserInputError, match="seed must be"):
        TrainConfig(seed=-1)


# ---------------------------------------------------------------- tune --space
@pytest.mark.parametrize(
    ("space", "needle"),
    [
        ({"widths": [30000]}, "widths: value [30000] must be a list of 1 to 8 ints from 1 to 4096"),
        ({"widths": [2**70]}, "must be a list of 1 to 8 ints"),
        ({"widths": [64] * 2000}, "must be a list of 1 to 8 ints"),
        ({"widths": {"choices": [[64, 64]] * 2000}}, "widths: 2000 choices; at most 64"),
        ({"widths": {"choices": [[4096, 4096, 4096]]}}, "numbers; at most 300,000,000"),
        ({"widths": [8, 8, 8, 8, 8, 8]}, "do not make a working fast for 32x32 pictures"),
        ({"batch_size": 10**18}, "batch_size: value 1000000000000000000 must be 1..65536"),
        ({"batch_size": {"choices": [64, 10**18]}}, "must be 1..65536"),
        ({"epochs": {"low": 1, "high": 10**12}}, "epochs: high 1000000000000 must be 1..10000"),
        (
            {"lr": {"low": 1e-4, "high": 1e-2, "step": 1e-300}},
            "lr: step 1e-300 makes more than 1,000,000 values",
        ),
        ({"lr": {"low": 1e-4, "high": 1.7e308, "log": True}}, "must be > 0 and <= 100"),
        ({"weight_decay": {"low": 0, "high": 1e300}}, "weight_decay: high 1e+300 must be"),
        ({f"p{i}": 1 for i in range(500)}, "and 490 more"),
    ],
    ids=lambda v: str(v)[:40],
)
def test_absurd_spaces_are_one_line(tmp_path, capsys, space, needle):
    path = tmp_path / "space.json"
    path.write_text(json.dumps(space))
    code, _, err = run_cli(["tune", "--space", str(path), "--data", str(tmp_path)], capsys)
    assert code == 2 and needle in err, err
    assert len(err.strip().splitlines()) == 1 and len(err) < 2000, err
