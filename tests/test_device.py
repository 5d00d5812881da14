"""Device and precision choice: ``--precision auto`` picks bf16 only where it is native
(and AMP on CUDA); the capability probes are mocked so this runs on any machine."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import write_image_folder

from imageclf import device as device_mod
from imageclf.device import cpu_has_fast_bf16, resolve_precision
from imageclf.errors import UserInputError
from imageclf.training.loop import train
from imageclf.training.resolve import resolve

CPU, CUDA = torch.device("cpu"), torch.device("cuda")


@pytest.mark.parametrize("native, expected", [(True, torch.bfloat16), (False, None)])
def test_auto_on_cpu_uses_bf16_only_where_it_is_native(monkeypatch, native, expected):
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: native)
    assert resolve_precision(CPU, "auto") is expected


@pytest.mark.parametrize("bf16, expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_on_cuda_always_uses_amp(monkeypatch, bf16, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: bf16)
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: not bf16)  # must not matter
    assert resolve_precision(CUDA, "auto") is expected


@pytest.mark.parametrize("native", [True, False])
def test_auto_trains_depthwise_nets_in_fp32_on_cpu(monkeypatch, native):
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: native)
    assert resolve_precision(CPU, "auto", depthwise_training=True) is None
    assert resolve_precision(CPU, "bf16", depthwise_training=True) is torch.bfloat16  # asked
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    assert resolve_precision(CUDA, "auto", depthwise_training=True) is torch.bfloat16


def test_explicit_precisions(monkeypatch):
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: False)
    assert resolve_precision(CPU, "fp32") is None and resolve_precision(CUDA, "fp32") is None
    assert resolve_precision(CPU, "bf16") is torch.bfloat16  # asked for: honoured, if slow
    assert resolve_precision(CUDA, "fp16") is torch.float16
    with pytest.raises(UserInputError, match="fp16 needs a CUDA device"):
        resolve_precision(CPU, "fp16")
    with pytest.raises(UserInputError, match="unknown precision 'fp8'"):
        resolve_precision(CPU, "fp8")


def _probe_fails():
    raise RuntimeError("this build has no oneDNN")


@pytest.mark.parametrize(
    "probe, expected",
    [(lambda: True, True), (lambda: False, False), (_probe_fails, False)],
    ids=["native", "emulated", "probe-fails"],
)
def test_cpu_bf16_probe(monkeypatch, probe, expected):
    monkeypatch.setattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", probe)
    assert cpu_has_fast_bf16() is expected


@pytest.mark.parametrize("native, recorded", [(True, "bfloat16"), (False, "fp32")])
def test_training_runs_at_the_chosen_precision(tmp_path, monkeypatch, native, recorded):
    monkeypatch.setattr(device_mod, "cpu_has_fast_bf16", lambda: native)
    data = write_image_folder(tmp_path / "ds", per_class=4)
    run = tmp_path / "run"
    options = dict(epochs=1, batch_size=8, device="cpu", precision="auto")
    cfg = resolve("seed-a", data=str(data), out=str(run), **options)
    train(cfg, progress=False)
    assert json.loads((run / "config.json").read_text())["precision"] == recorded
