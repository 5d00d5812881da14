"""Training compute in machine-independent terms, and how well a run used the machine.

Wall time depends on the CPU (AVX2-only machines run the same work about twice as
slowly as AVX-512 + bf16 ones), so every run also records the FLOPs it spent
(forward + backward, counted once per architecture and input size by
``torch.utils.flop_counter``) and the fraction of the machine's own matrix-multiply
peak it reached. The peak comes from a short GEMM probe in the precision used.
"""

from __future__ import annotations

import functools
import time
from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from ..device import autocast

PROBE_SECONDS = 2.0
PROBE_SIZE = 1024  # big enough to reach the BLAS peak, small enough for a quick probe


def training_flops_per_image(model: nn.Module, input_size: int, batch: int = 2) -> int:
    """Forward + backward FLOPs of one training image (a matmul of m*n*k counts 2mnk).

    Counted on a copy in train mode, so BatchNorm statistics of ``model`` stay untouched.
    """
    import copy

    probe = copy.deepcopy(model).float().train()
    x = torch.zeros(batch, 3, input_size, input_size)
    counter = FlopCounterMode(
        display=False, custom_mapping={torch.ops.aten.convolution_backward: _conv_backward_flops}
    )
    with counter:
        probe(x).float().sum().backward()
    return int(counter.get_total_flops() // batch)


def _conv_backward_flops(
    grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
    _output_padding, _groups, output_mask, out_shape=None, **_kwargs,
) -> int:  # fmt: skip
    """Each of a convolution's two backward products (input and weight gradients) costs
    what its forward did. torch's own formula forgets ``groups`` in the weight gradient,
    which overcounts a depthwise convolution (EfficientNet's) by its channel count."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


@functools.lru_cache(maxsize=8)  # once per process and precision: runs in one process share it
def gemm_peak_flops(
    dtype: torch.dtype | None = None, seconds: float = PROBE_SECONDS, size: int = PROBE_SIZE
) -> float:
    """FLOP/s of square matrix products on this machine's CPU in ``dtype`` (None: fp32).

    The best of several timed rounds, so a busy neighbour lowers it less than a mean would.
    """
    device = torch.device("cpu")
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    flops_per_product = 2 * size**3
    with torch.inference_mode(), autocast(device, dtype):
        torch.mm(a, b)  # warm-up: thread pool and kernel selection
        best, deadline = 0.0, time.perf_counter() + seconds
        while time.perf_counter() < deadline:
            start = time.perf_counter()
            for _ in range(4):
                torch.mm(a, b)
            best = max(best, 4 * flops_per_product / (time.perf_counter() - start))
    return best


@dataclass
class ComputeReport:
    """What a run spent and how well it used the machine; stored in config.json and metrics.json."""

    flops_per_image: int  # at the model's input size
    images_seen: int
    training_flops: float
    loop_seconds: float  # inside training epochs only (no data loading, no final scoring)
    achieved_flops_per_s: float
    gemm_peak_flops_per_s: float
    precision: str
    cpu_capability: str

    @property
    def peak_fraction(self) -> float:
        return self.achieved_flops_per_s / self.gemm_peak_flops_per_s

    def to_dict(self) -> dict:
        return {**asdict(self), "peak_fraction": self.peak_fraction}

    def summary(self) -> str:
        # The mean: epochs at a reduced size (progressive resizing) cost less per image.
        per_image = self.training_flops / max(self.images_seen, 1)
        return (
            f"compute {self.training_flops / 1e15:.3f} PFLOP "
            f"({per_image / 1e6:.0f} MFLOP/image x {self.images_seen:,} images), "
            f"{self.achieved_flops_per_s / 1e12:.3f} TFLOP/s = "
            f"{100 * self.peak_fraction:.0f}% of this machine's {self.precision} GEMM peak "
            f"({self.gemm_peak_flops_per_s / 1e12:.3f} TFLOP/s, {self.cpu_capability})"
        )


def compute_report(
    flops_per_image: int,
    images_seen: int,
    loop_seconds: float,
    dtype: torch.dtype | None,
    device: torch.device,
    training_flops: float | None = None,
) -> ComputeReport:
    """Combine a run's counts with a GEMM probe (on CUDA the probe is skipped: peak unknown).

    ``training_flops`` defaults to every image at ``flops_per_image``."""
    if training_flops is None:
        training_flops = float(flops_per_image) * images_seen
    achieved = training_flops / max(loop_seconds, 1e-9)
    if device.type == "cpu":
        peak = gemm_peak_flops(dtype)
        capability = torch.backends.cpu.get_cpu_capability()
    else:
        peak, capability = float("nan"), torch.cuda.get_device_name(device)
    precision = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[dtype]
    return ComputeReport(
        flops_per_image=int(flops_per_image),
        images_seen=int(images_seen),
        training_flops=training_flops,
        loop_seconds=float(loop_seconds),
        achieved_flops_per_s=achieved,
        gemm_peak_flops_per_s=peak,
        precision=precision,
        cpu_capability=capability,
    )
