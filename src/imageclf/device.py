"""Where the work runs: the device, the mixed precision that is actually faster on it,
and, under ``torchrun``, this process's place among its peers (DDP)."""

from __future__ import annotations

import contextlib
import logging
import math
import os
import platform
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch

from .allocator import kept
from .errors import ImageclfError, UserInputError

log = logging.getLogger("imageclf.device")

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


def resolve_precision(
    device: torch.device, precision: str = "auto", depthwise_training: bool = False
) -> torch.dtype | None:
    """The autocast dtype, or None for plain fp32. ``depthwise_training``: training a net of
    depthwise convolutions (EfficientNet), which CPU bf16 autocast slows down (Lite0, 96
    px: 81 vs 120 images/s on an AMX Xeon; 64 px: 112 vs 158 on an AVX512-BF16 EPYC; see
    docs/benchmarks.md), so ``auto`` trains it in fp32 there. Inference keeps bf16."""
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
    return torch.bfloat16 if cpu_has_fast_bf16() and not depthwise_training else None


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
        "malloc_keeps_freed": kept(),
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "python": platform.python_version(),
    }


# ---------------------------------------------------------------- distributed (torchrun)
TIMEOUT_ENV = "IMAGECLF_DIST_TIMEOUT"
DEFAULT_TIMEOUT_S = 600.0


def dist_timeout() -> timedelta:
    """How long a process waits for its peers in one collective (``$IMAGECLF_DIST_TIMEOUT``
    seconds, default 600). A peer that dies outright resets its connections and is noticed
    at once; a machine that vanishes silently (power, network) only by this timeout. The
    longest honest wait is rank 0 finishing alone (test scoring, TTA, the bundle) and one
    node loading data slower than the others: keep it above both."""
    raw = os.environ.get(TIMEOUT_ENV, "").strip()
    if not raw:
        return timedelta(seconds=DEFAULT_TIMEOUT_S)
    try:
        seconds = float(raw)
    except ValueError:
        seconds = math.nan
    if not (math.isfinite(seconds) and 1 <= seconds <= 86_400):
        raise UserInputError(f"{TIMEOUT_ENV} takes seconds between 1 and 86400, got {raw!r}")
    return timedelta(seconds=seconds)


def _peer_failure(exc: BaseException) -> str | None:
    """The short reason when ``exc`` is a collective failing because a peer is gone (gloo
    raises plain RuntimeErrors naming itself; NCCL and the store raise DistError)."""
    import torch.distributed as dist

    text = str(exc)
    if not isinstance(exc, dist.DistError) and not (
        isinstance(exc, RuntimeError) and "gloo" in text.lower()
    ):
        return None
    line = re.sub(r"^\[[^\]]*\]\s*", "", text.strip().splitlines()[0] if text.strip() else "")
    return line.split(". ")[0].strip()[:200] or type(exc).__name__


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
    def from_env(cls, device_type: str | None = None) -> DistContext:
        """Join the process group torchrun describes in the environment (once per process).

        CPU tensors always travel by gloo (the epoch's loss sums, a checkpoint sent to the
        other nodes), CUDA tensors by NCCL on GPUs. ``device_type`` None: CUDA if present.
        """
        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world <= 1:
            return cls()
        import torch.distributed as dist

        if device_type is None:
            device_type = "cuda" if torch.cuda.is_available() else "cpu"
        if not dist.is_initialized():
            backend = "cpu:gloo,cuda:nccl" if device_type == "cuda" else "gloo"
            timeout = dist_timeout()
            try:
                dist.init_process_group(backend, timeout=timeout)
            except dist.DistError as exc:
                raise ImageclfError(
                    f"could not join the other training processes within "
                    f"{timeout.total_seconds():.0f} s ({TIMEOUT_ENV}): {_peer_failure(exc)}"
                ) from None
            log.info(
                "rank %d of %d on %s; rank 0 alone writes the run folder",
                dist.get_rank(), dist.get_world_size(), socket.gethostname(),
            )  # fmt: skip
        return cls(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))

    @contextlib.contextmanager
    def peers_watched(self, resume_from: os.PathLike | str | None = None):
        """A collective failing because another process died or stopped answering becomes
        one clear ``ImageclfError`` (exit 1) instead of a gloo traceback or a hang."""
        try:
            yield
        except Exception as exc:
            reason = _peer_failure(exc) if self.world > 1 else None
            if reason is None:
                raise
            hint = ""
            if resume_from is not None:
                folder = resume_from if self.is_main else "RUN_DIR (rank 0's run folder)"
                hint = f" To continue from the last epoch: every node again with --resume {folder}"
            raise ImageclfError(
                f"rank {self.rank} of {self.world} stopped: lost contact with the other "
                f"training processes ({reason}); a node died or did not answer within "
                f"{dist_timeout().total_seconds():.0f} s ({TIMEOUT_ENV}).{hint}"
            ) from None

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

    def check_same(self, digest: Callable[[], bytes], what: str) -> None:
        """Every rank must hold the same ``what`` (each node reads its own copy of the data):
        ranks indexing different images would train on nonsense without an error."""
        if self.world == 1:
            return
        import torch.distributed as dist

        mine = torch.frombuffer(bytearray(digest()), dtype=torch.uint8)
        first = mine.clone()
        dist.broadcast(first, src=0)
        differ = torch.tensor([int(not torch.equal(mine, first))])
        dist.all_reduce(differ)
        if differ.item():
            raise UserInputError(
                f"{what} differs between the nodes ({int(differ.item())} of {self.world} "
                "processes read other files than rank 0): give every node the same copy"
            )

    def share(self, read: Callable[[], bytes]) -> bytes:
        """``read()`` on rank 0, its bytes sent to every rank: a file that only rank 0's
        disk holds (the checkpoint of a run to resume). An error in ``read`` is raised on
        rank 0 (after telling the others, which would otherwise wait for the bytes); the
        others raise one naming rank 0."""
        if self.world == 1:
            return read()
        import torch.distributed as dist

        data, failure = b"", None
        if self.is_main:
            try:
                data = read()
            except Exception as exc:
                failure = exc
        size = torch.tensor([-1 if failure else len(data)], dtype=torch.int64)
        dist.broadcast(size, src=0)
        if failure is not None:
            raise failure
        if size.item() < 0:
            raise ImageclfError(f"rank {self.rank}: rank 0 could not read the run (see its error)")
        if self.is_main:
            buffer = torch.frombuffer(bytearray(data), dtype=torch.uint8)
        else:
            buffer = torch.empty(int(size.item()), dtype=torch.uint8)
        if len(buffer):
            dist.broadcast(buffer, src=0)
        return data if self.is_main else buffer.numpy().tobytes()


@dataclass
class Runtime:
    """Everything about *where* training runs, settled once before any data loads."""

    device: torch.device
    amp_dtype: torch.dtype | None
    dist: DistContext

    @property
    def precision(self) -> str:
        return precision_name(self.amp_dtype)


def setup_runtime(
    device: str, precision: str, threads: int | None, depthwise: bool = False
) -> Runtime:
    """Device, DDP process group, CPU threads and autocast dtype for a training run
    (``depthwise``: of a net with depthwise convolutions, see ``resolve_precision``)."""
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
    return Runtime(dev, resolve_precision(dev, precision, depthwise), ctx)
