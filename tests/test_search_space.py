"""Search spaces, recipe files and the missing-extra message: none of this needs Optuna."""

from __future__ import annotations

import dataclasses
import json
import re
import sys
from pathlib import Path

import pytest
from helpers import write_image_folder

from imageclf.cli import main
from imageclf.errors import UserInputError
from imageclf.training.recipe_files import write_recipe_file
from imageclf.training.recipes import RECIPES
from imageclf.training.resolve import resolve
from imageclf.tuning.space import SPACES, validate


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.mark.parametrize("recipe", sorted(SPACES))
def test_every_built_in_space_is_valid(recipe):
    cfg = resolve(recipe)
    space = validate(SPACES[recipe], cfg, cfg.epochs)
    assert space.searched and set(SPACES) == set(RECIPES)


@pytest.mark.parametrize(
    "space,needle",
    [
        ({"learning_rate": {"low": 0.1, "high": 1}}, "unknown parameter 'learning_rate'"),
        ({"lr": {"low": 0.1, "high": 0.01}}, "lr: empty range (low 0.1 > high 0.01)"),
        ({"batch_size": {"choices": []}}, "batch_size: empty choices"),
        ({"epochs": {"low": 2.5, "high": 4}}, "epochs: low 2.5 has the wrong type"),
        ({"lr": {"low": "small", "high": 0.1}}, 'lr: low "small" has the wrong type'),
        ({"lr": {"low": 0.0, "high": 0.1}}, "lr: low 0.0 must be > 0"),
        ({"weight_decay": {"low": 0.0, "high": 0.1, "log": True}}, "a log range needs low > 0"),
        ({"lr": {"low": 1e-3, "high": 0.1, "log": "yes"}}, "lr: log must be true or false"),
        ({"label_smoothing": {"low": 0.0, "high": 1.5}}, "high 1.5 must be in [0, 1)"),
        ({"widths": {"choices": [[32, 64], "wide"]}}, 'widths: choice "wide" has the wrong type'),
        ({"flip": {"low": 0, "high": 1}}, "flip: takes choices, not a range"),
        (
            {"flip": {"choices": ["sideways"]}},
            'flip: choice "sideways" must be one of none, random',
        ),
        ({"lr": {"lo": 1e-3, "high": 0.1}}, "lr: unknown key lo"),
        ({"lr": {"low": 1e-3}}, "lr: a range needs both low and high"),
        ({"lr": {"choices": [0.1], "low": 0.1}}, "either choices or low/high"),
        ({"batch_size": {"low": 8, "high": 64, "step": 0}}, "step must be a positive int"),
        ([1, 2], "expected a non-empty JSON object"),
        ({}, "expected a non-empty JSON object"),
    ],
)
def test_bad_spaces_are_clear_errors(space, needle):
    cfg = resolve("fast")
    with pytest.raises(UserInputError) as exc:
        validate(space, cfg, cfg.epochs, "test.json")
    assert str(exc.value).startswith("bad search space in test.json: ")
    assert needle in str(exc.value)


def test_all_problems_reported_at_once():
    cfg = resolve("fast")
    with pytest.raises(UserInputError) as exc:
        validate({"nope": 1, "lr": {"low": 1.0, "high": 0.5}}, cfg, 9)
    assert "unknown parameter 'nope'" in str(exc.value) and "lr: empty range" in str(exc.value)


def test_widths_only_where_the_architecture_has_them():
    cfg = resolve("seed-a")
    with pytest.raises(UserInputError, match="seed-a architecture has no widths"):
        validate({"widths": {"choices": [[8, 16]]}}, cfg, 5)


def test_epochs_are_capped_and_params_land_in_the_config():
    cfg = resolve("fast")
    space = validate(
        {
            "epochs": {"low": 4, "high": 20},
            "lr": {"low": 1e-3, "high": 1e-2, "log": True},
            "widths": {"choices": [[8, 16, 16]]},
            "translate": 3,
            "flip": {"choices": ["random", "none"]},
        },
        cfg,
        epochs_cap=6,
    )
    epochs = next(d for d in space.dims if d.name == "epochs")
    assert (epochs.low, epochs.high) == (4, 6)
    assert space.searched == ["epochs", "lr", "widths", "flip"]  # translate is fixed
    tuned = space.apply(cfg, {"epochs": 5, "lr": 2e-3, "widths": "8-16-16", "flip": "none"})
    assert (tuned.epochs, tuned.lr, tuned.arch_kwargs["widths"]) == (5, 2e-3, [8, 16, 16])
    assert (tuned.augment.translate, tuned.augment.flip) == (3, "none")
    assert cfg.augment.translate == 2 and cfg.arch_kwargs["widths"] == [32, 64, 128]  # untouched


def test_current_values_are_the_baseline_inside_the_space():
    cfg = resolve("fast", epochs=8)
    space = validate(SPACES["fast"], cfg, cfg.epochs)
    baseline = space.current(cfg)
    assert baseline == {
        "lr": cfg.lr, "weight_decay": cfg.weight_decay, "label_smoothing": 0.2, "epochs": 8,
        "batch_size": 256, "widths": "32-64-128", "translate": 2,
    }  # fmt: skip
    same = space.apply(cfg, baseline)  # running it reproduces the recipe exactly
    assert dataclasses.replace(same, user_set=cfg.user_set) == cfg
    assert {"lr", "batch_size", "arch_kwargs", "augment"} <= set(same.user_set)
    narrow = validate({"lr": {"low": 0.1, "high": 0.2}, "translate": {"low": 0, "high": 3}}, cfg, 8)
    assert narrow.current(cfg) == {"translate": 2}  # the recipe's lr lies outside: sampled


# ---------------------------------------------------------------- recipe files
def test_recipe_file_round_trip_and_train(tmp_path, capsys):
    path = write_recipe_file(
        tmp_path / "mine.json",
        name="fast-mine",
        base="fast",
        config={"lr": 0.002, "arch_kwargs": {"widths": [8, 16, 16]}, "augment": {"translate": 1}},
        tuned={"note": "kept for people, ignored by train"},
    )
    cfg = resolve(str(path), epochs=1)
    assert (cfg.recipe, cfg.lr, cfg.arch_kwargs, cfg.epochs) == (
        "fast-mine",
        0.002,
        {"widths": [8, 16, 16]},
        1,
    )
    assert cfg.augment.translate == 1 and cfg.augment.flip == "none"  # a full augment object
    assert cfg.optimizer == "sgd"  # everything else from the base

    data = write_image_folder(tmp_path / "ds", per_class=10)
    argv = ["-q", "train", "--recipe", str(path), "--data", str(data), "--epochs", "1",
            "--out", str(tmp_path / "run")]  # fmt: skip
    code, _, err = run(argv, capsys)
    assert code == 0, err
    recorded = json.loads((tmp_path / "run" / "config.json").read_text())["config"]
    assert (recorded["recipe"], recorded["lr"]) == ("fast-mine", 0.002)


@pytest.mark.parametrize(
    "content,needle",
    [
        ("{not json", "cannot read recipe file"),
        ('{"base": "fast"}', "is not a recipe file"),
        ('{"format": "imageclf-recipe/1", "base": "huge"}', "base must be one of"),
        ('{"format": "imageclf-recipe/1", "base": "fast", "config": {"speed": 3}}', "speed"),
        (
            '{"format": "imageclf-recipe/1", "base": "fast", "config": {"augment": {"x": 1}}}',
            "unknown augment setting 'x'",
        ),
        ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
        ('{"format": "imageclf-recipe/1", "base": "fast", "config": {"lr": NaN}}', "NaN"),
        (" " * (2 * 1024 * 1024) + "{}", "at most 1 MB"),
    ],
    ids=["syntax", "no-format", "base", "field", "augment", "100k-levels", "nan", "size"],
)
def test_bad_recipe_files_are_one_line_errors(tmp_path, capsys, content, needle):
    path = tmp_path / "r.json"
    path.write_text(content)
    code, _, err = run(["train", "--recipe", str(path), "--data", str(tmp_path)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_missing_recipe_file(capsys):
    code, _, err = run(["train", "--recipe", "no/such/best.json"], capsys)
    assert code == 2 and "cannot read recipe file" in err


# ---------------------------------------------------------------- the extra
def test_tune_without_optuna_names_the_extra(tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "optuna", None)  # makes `import optuna` fail
    out = tmp_path / "run"
    code, _, err = run(["tune", "--data", str(tmp_path), "--out", str(out)], capsys)
    assert code == 2
    install = "pip install 'imageclf[tune]'"
    assert err.strip() == f"imageclf: error: imageclf tune needs the optional tune extra: {install}"
    assert not out.exists()


def test_the_readme_space_example_is_valid():
    """The JSON space in README's tuning section is what a user copies: it must work."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Tuning hyperparameters", 1)[1]
    example = re.search(r"```json\n(.*?)```", section, re.S).group(1)
    space = validate(json.loads(example), resolve("fast"), 9)
    assert {"lr", "epochs", "widths"} <= set(space.searched)


# ---------------------------------------------------------------- hostile JSON files
DEEP = "[" * 100_000 + "]" * 100_000


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (DEEP, "nested too deeply"),
        ('{"lr": {"low": NaN, "high": 1}}', "NaN, which is not a JSON number"),
        ('{"lr": {"low": 1e-4, "high": Infinity}}', "Infinity, which is not a JSON number"),
        ("{", "is not valid JSON"),
    ],
    ids=["100k-levels", "nan", "infinity", "syntax"],
)
def test_hostile_space_file_is_one_line(tmp_path, capsys, content, needle):
    path = tmp_path / "space.json"
    path.write_text(content)
    code, _, err = run(["tune", "--space", str(path), "--data", str(tmp_path)], capsys)
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1


def test_space_file_size_is_capped(tmp_path, capsys):
    path = tmp_path / "space.json"
    path.write_text(" " * (2 * 1024 * 1024) + "{}")
    code, _, err = run(["tune", "--space", str(path), "--data", str(tmp_path)], capsys)
    assert code == 2 and "at most 1 MB" in err


@pytest.mark.parametrize(
    "content",
    [DEEP, "not json", "[]", '{"recipe": "fast"}', '{"trials": NaN}'],
    ids=["100k-levels", "syntax", "list", "keys-missing", "nan"],
)
def test_damaged_tune_settings_are_one_line_on_resume(tmp_path, capsys, content):
    (tmp_path / "tune.json").write_text(content)
    code, _, err = run(["tune", "--resume", str(tmp_path)], capsys)
    assert code == 2 and str(tmp_path) in err and len(err.strip().splitlines()) == 1
