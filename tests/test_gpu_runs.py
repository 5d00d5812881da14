"""benchmarks/gpu_runs.py is meant to run once, on a GPU lent for a few minutes: its
commands must not be the thing that fails there. The same plumbing, on a CPU, tiny."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from helpers import require_pretrained_extra

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_runs.py"


@pytest.mark.slow
def test_gpu_runs_plumbing_on_a_cpu(shared_archive, tmp_path):
    require_pretrained_extra()
    out = tmp_path / "out"
    cmd = [sys.executable, str(SCRIPT), "--data", str(shared_archive), "--out", str(out),
           "--runs", str(tmp_path / "runs"), "--device", "cpu", "--subset", "100", "--epochs",
           "1", "--recipe-epochs", "1", "--image-sizes", "32,40", "--recipes", "fast",
           "--budget-s", "900", "--probe-images", "128"]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads((out / "gpu_runs.json").read_text())
    probe32, probe40, tune32, tune40, fast = result["rows"]
    for probe, side in ((probe32, 32), (probe40, 40)):
        assert probe["step"] == "probe" and probe["image_size"] == side, probe
        assert probe["solo_images_per_s"] > 0 and probe["side_by_side_images_per_s"] > 0
    for finetune, side in ((tune32, 32), (tune40, 40)):  # side by side, one model each
        assert finetune["step"] == "finetune" and finetune["finished"], finetune
        assert finetune["image_size"] == side and finetune["side_by_side"] == 2
        assert finetune["epochs"] == 1  # as asked: no probe then
        assert finetune["command"].startswith("imageclf train --pretrained efficientnet-lite0")
        assert f"--image-size {side}" in finetune["command"]
        assert 0.1 < finetune["test_acc"] <= 1 and (out / finetune["model_file"]).is_file()
        assert json.loads((out / f"finetune-{side}px-history.json").read_text())
    assert fast["step"] == "fast" and fast["finished"] and fast["epochs"] == 1, fast
    assert 0 <= fast["test_acc"] <= 1, fast  # one epoch of 100 pictures: any accuracy
    # What comes back from the device machine: at most 8 files, none in a subfolder.
    assert len(list(out.iterdir())) <= 8 and all(p.is_file() for p in out.iterdir())
    assert "$ " in (out / "gpu_runs.log").read_text()
