"""torchrun + DDP on CPU (gloo): two processes, one writer, same numbers."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import write_noise_folder
from safetensors.torch import load_file


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    # Random pixels and labels: the losses stay near ln(3), so a rank that trained on its
    # half-batch alone (no gradient all-reduce) ends far from the single process (measured:
    # weights ~100% apart relative to their norm, val_loss 0.07 off), while a synchronised
    # one matches to float summation order (~1e-6).
    data = write_noise_folder(tmp_path / "ds", per_class=32)
    # seed-a has no BatchNorm or dropout, so DDP's averaged gradient equals the
    # single-process one up to summation order; fp32, since bf16 autocast rounds the two
    # differently enough to drift apart.
    args = ["-q", "train", "--recipe", "seed-a", "--data", str(data), "--epochs", "2",
            "--batch-size", "16", "--threads", "1", "--precision", "fp32"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "imageclf", *args, "--out", str(tmp_path / "single")],
        check=True,
        env=env,
        timeout=300,
    )
    subprocess.run(
        [torchrun, "--standalone", "--nproc_per_node=2", "-m", "imageclf", *args,
         "--out", str(tmp_path / "ddp")],
        check=True,
        env=env,
        timeout=300,
    )  # fmt: skip
    single = json.loads((tmp_path / "single" / "history.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(ddp) == 2
    assert min(h["val_loss"] for h in single) > 0.5  # not solved: the weights still differ
    for a, b in zip(single, ddp, strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-4
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-4
    weights = load_file(tmp_path / "single" / "model.safetensors")
    other = load_file(tmp_path / "ddp" / "model.safetensors")
    assert weights.keys() == other.keys()
    for key, w in weights.items():
        assert ((w - other[key]).norm() / w.norm()).item() < 1e-4, key
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    # Only rank 0 wrote: one run folder, no stray files from rank 1.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )
