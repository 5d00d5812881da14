"""torchrun + DDP on CPU (gloo): two processes, one writer, same numbers."""

import json
import os
import shutil
import subprocess
import sys

import pytest
from helpers import write_image_folder


@pytest.mark.slow
def test_torchrun_two_processes_matches_single_process(tmp_path):
    torchrun = shutil.which("torchrun") or os.path.join(os.path.dirname(sys.executable), "torchrun")
    data = write_image_folder(tmp_path / "ds", per_class=24)
    # seed-a has no BatchNorm or dropout, so DDP's averaged gradient equals the
    # single-process one up to float summation order.
    args = [
        "-q",
        "train",
        "--recipe",
        "seed-a",
        "--data",
        str(data),
        "--epochs",
        "2",
        "--batch-size",
        "16",
        "--threads",
        "1",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(
        [sys.executable, "-m", "imageclf", *args, "--out", str(tmp_path / "single")],
        check=True,
        env=env,
        timeout=300,
    )
    subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node=2",
            "-m",
            "imageclf",
            *args,
            "--out",
            str(tmp_path / "ddp"),
        ],
        check=True,
        env=env,
        timeout=300,
    )
    single = json.loads((tmp_path / "single" / "history.json").read_text())
    ddp = json.loads((tmp_path / "ddp" / "history.json").read_text())
    assert len(ddp) == 2
    for a, b in zip(single, ddp, strict=True):
        assert abs(a["val_loss"] - b["val_loss"]) < 1e-3
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-3
    config = json.loads((tmp_path / "ddp" / "config.json").read_text())
    assert config["world_size"] == 2
    # Only rank 0 wrote: one run folder, no stray files from rank 1.
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir()) == sorted(
        p.name for p in (tmp_path / "single").iterdir()
    )
