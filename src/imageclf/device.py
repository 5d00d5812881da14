"""Where the work runs: the device, the mixed precision that is actually faster on it,
and, under ``torchrun``, this process's place among its peers (DDP)."""

from __future__ import annotations

import contextlib
import os
import platform
from dataclasses import dataclass

import torch

from .errors import UserInputError

DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = ("auto", "fp32", "bf16", "fp16")


def check_device_name(name: str) -> None:
    """Spelling only (no CUDA probe), so a config can be checked before anything loads."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise UserInputError(f"unknown device {name!r}; choose auto, cpu or cuda")


def resolve_device(name: str = "auto") -> torch.device:
    check_device_name(name)
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserInputError("--device cuda was asked for, but PyTorch sees no CUDA GPU here")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """bf16 pays on CPUs with native bf16 dot products (AVX512-BF16, AMX); elsewhere
    PyTorch emulates it and a training step was measured ~20x slower than fp32."""
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


def resolve_precision(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32."""
    if precision not in PRECISIONS:
        raise UserInputError(f"unknown precision {precision!r}; choose {', '.join(PRECISIONS)}")
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if precision == "fp16":
        if device.type != "cuda":
            raise UserInputError("--precision fp16 needs a CUDA device; use bf16 or fp32 on CPU")
        return torch.float16
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if cpu_has_fast_bf16() else None


def autocast(device: torch.device, dtype: torch.dtype | None):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def precision_name(dtype: torch.dtype | None) -> str:
    return str(dtype).replace("torch.", "") if dtype else "fp32"


def machine() -> dict:
    """What a number was measured on: every benchmark and every trained bundle records it,
    since the same work runs ~2x slower on a CPU without native bf16."""
    cpu = platform.processor() or "unknown"
    try:
        with open("/proc/cpuinfo") as handle:
            for line in handle:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "fast_bf16": cpu_has_fast_bf16(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- distributed (torchrun)
@dataclass
class DistContext:
    """This process's rank among ``world`` processes; a plain run is rank 0 of 1."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @classmethod
    def from_env(cls, device_type: str) -> DistContext:
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group("nccl" if device_type == "cuda" else "gloo")
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def sum(self, values: list[float]) -> list[float]:
        """Element-wise sum over every process (reduced as float32); one process: as given."""
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        totals = torch.tensor(values)
        dist.all_reduce(totals)
        return [t.item() for t in totals]


@dataclass
class Runtime:
    """Everything about *where* training runs, settled once before any data loads."""

    device: torch.device
    amp_dtype: torch.dtype | None
    dist: DistContext

    @property
    def precision(self) -> str:
        return precision_name(self.amp_dtype)


def setup_runtime(device: str, precision: str, threads: int | None) -> Runtime:
    """Device, DDP process group, CPU threads and autocast dtype for a training run."""
    dev = resolve_device(device)
    ctx = DistContext.from_env(dev.type)
    if dev.type == "cuda" and ctx.world > 1:
        dev = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(dev)
    if threads:
        torch.set_num_threads(threads)
    elif ctx.world > 1 and dev.type == "cpu":
        # N processes on one machine would each grab every core: share them out instead.
        local = int(os.environ.get("LOCAL_WORLD_SIZE", ctx.world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local))
    return Runtime(dev, resolve_precision(dev, precision), ctx)
