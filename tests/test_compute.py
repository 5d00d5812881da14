"""Training-FLOP counting and the GEMM probe behind every run's compute report."""

from __future__ import annotations

import torch
from torch import nn

from imageclf.models import build
from imageclf.training.compute import compute_report, gemm_peak_flops, training_flops_per_image


def test_flops_of_a_linear_layer_are_forward_plus_two_backward_matmuls():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 4 * 4, 10, bias=False))
    # forward 2*48*10 per image; backward: grad wrt weight only (input needs no grad) = 2*48*10
    assert training_flops_per_image(model, 4) == 2 * (2 * 48 * 10)


def test_fast_net_flops_match_the_published_figure_and_leave_model_untouched():
    model = build("fast", num_classes=10, input_size=32, widths=[32, 64, 128])
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flops = training_flops_per_image(model, 32)
    assert 117e6 < flops < 120e6  # 118 MFLOP per training image (issue #10's table)
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k


def test_gemm_probe_and_report():
    peak = gemm_peak_flops(None, seconds=0.2, size=256)
    assert peak > 1e8
    report = compute_report(1_000_000, 5_000, 2.0, None, torch.device("cpu"))
    assert report.training_flops == 5e9
    assert report.achieved_flops_per_s == 2.5e9
    d = report.to_dict()
    assert d["peak_fraction"] == report.achieved_flops_per_s / report.gemm_peak_flops_per_s
    assert "PFLOP" in report.summary() and report.precision == "fp32"


def test_depthwise_convolution_backward_costs_twice_its_forward():
    """torch's flop counter forgets groups in the weight gradient; ours must not."""
    pointwise = torch.nn.Conv2d(3, 64, 1, bias=False)
    depthwise = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
    model = torch.nn.Sequential(pointwise, depthwise)
    first = 2 * 3 * 64 * 8 * 8  # 2 FLOPs per multiply-add on an 8x8 map
    second = 2 * 64 * 9 * 8 * 8  # one 3x3 filter per channel
    # The input needs no gradient, so the first layer's backward is its weight gradient only.
    assert training_flops_per_image(model, 8) == 2 * first + 3 * second
