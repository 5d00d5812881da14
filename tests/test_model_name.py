"""``train --name``: a model's name in its bundle, shown by info, evaluate and predict;
without --name it says which data and recipe made the model."""

from __future__ import annotations

import json

import pytest
from helpers import run_cli, write_image_folder

from imageclf import TrainConfig
from imageclf.errors import UserInputError
from imageclf.models.bundle import load_bundle
from imageclf.models.naming import check_model_name, default_model_name, safe_component


@pytest.mark.parametrize(
    "data, recipe, expected",
    [
        (None, "fast", "cifar10-fast"),
        ("/data/Ants_Bees", "finetune", "ants-bees-finetune"),
        ("/data/Ants_Bees/", "finetune", "ants-bees-finetune"),
        ("photos/hymenoptera.tar.gz", "fast", "hymenoptera-fast"),
        ("~/Downloads/cifar-10-python.tar.gz", "seed-a", "cifar10-seed-a"),
        ("/x/cifar-10-batches-py", "fast", "cifar10-fast"),
        ("/x/Été 2024 (vacances).zip", "My Recipe!", "été-2024-vacances-my-recipe"),
        ("/x/$$$", "fast", "data-fast"),
    ],
)
def test_default_name_from_data_and_recipe(data, recipe, expected):
    assert default_model_name(data, recipe) == expected


@pytest.mark.parametrize("bad", ["", "   ", "a/b", "..", ".hidden", "a\\b", "x" * 65, "a\nb"])
def test_names_that_cannot_be_a_file_name_are_refused(bad):
    with pytest.raises(UserInputError, match="--name"):
        check_model_name(bad)
    with pytest.raises(UserInputError, match="--name"):
        TrainConfig(name=bad)


def test_good_names_are_kept():
    assert check_model_name(" ants vs bees v2 ") == "ants vs bees v2"
    assert TrainConfig(name="chats-été").name == "chats-été"
    assert safe_component("../../etc") == "_._.._etc" and safe_component("") == "_"


def test_a_bad_name_is_one_line_before_any_data_loads(tmp_path, capsys):
    code, _, err = run_cli(["train", "--data", str(tmp_path / "none"), "--name", "a/b"], capsys)
    assert code == 2 and err.startswith("imageclf: error: --name") and len(err.splitlines()) == 1


@pytest.mark.slow
def test_the_name_travels_from_train_to_info_evaluate_and_predict(tmp_path, capsys):
    data = write_image_folder(tmp_path / "Ants_Bees", per_class=10)
    named, unnamed = tmp_path / "named", tmp_path / "unnamed"
    base = ["-q", "train", "--recipe", "seed-a", "--data", str(data), "--epochs", "1"]
    assert run_cli([*base, "--out", str(named), "--name", "my model"], capsys)[0] == 0
    assert run_cli([*base, "--out", str(unnamed)], capsys)[0] == 0
    bundle = named / "model.safetensors"
    assert load_bundle(bundle).metadata.name == "my model"
    assert load_bundle(unnamed / "model.safetensors").metadata.name == "ants-bees-seed-a"
    code, out, _ = run_cli(["info", str(bundle)], capsys)
    assert code == 0 and "name         my model" in out.splitlines()
    picture = str(data / "test" / "cat" / "0000.png")
    code, out, _ = run_cli(["-q", "predict", str(bundle), picture, "--format", "json"], capsys)
    assert code == 0 and json.loads(out)[0]["model"] == "my model"
    argv = ["-q", "evaluate", str(bundle), "--data", str(data), "--out", str(tmp_path / "eval")]
    code, out, _ = run_cli([*argv, "--no-tta", "--no-gradcam", "--train-sample", "10"], capsys)
    assert code == 0 and f"model: my model ({bundle})" in out.splitlines()
    page = (tmp_path / "eval" / "report.html").read_text()
    assert "<title>imageclf evaluation — my model</title>" in page


def test_evaluate_default_folder_stays_under_runs_whatever_the_bundle_calls_itself():
    """A bundle is untrusted input: its name ("../../etc") must not pick the report folder."""
    from types import SimpleNamespace

    from imageclf.evaluation.evaluator import default_out_dir

    for name in ("../../etc/x", "/abs/path", ".hidden", "a\\b"):
        folder = default_out_dir(SimpleNamespace(predictors=[SimpleNamespace(name=name)]))
        assert folder.parent.as_posix() == "runs" and ".." not in folder.parts
        assert folder.name.startswith("eval-") and "/" not in folder.name
