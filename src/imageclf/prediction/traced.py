"""A network's inference pass as a frozen TorchScript graph, for the CPU.

Lite0's eager forward calls about 150 modules from Python. For one picture on a CPU,
that interpreter work is a quarter of the pass (the bundled model at 128 px on one
thread: 6.2 ms eager, 4.7 ms frozen), and it holds the GIL. A frozen trace runs the
same kernels from C++ without the GIL (docs/benchmarks.md, "The gate beside the model").

The trace is made on the second pass, not at load: a one-off prediction (``imageclf
predict photo.jpg``) never pays its ~0.5 s; a server (whose warm-up runs passes) or a
loop does, once. It is used only where it is the same function: fp32 on the CPU, at the
side it was traced at (the "same" padding of a stride-2 layer is fixed at trace time).
Anything else, and any torch without ``torch.jit``, runs the eager module.

A pass on one picture (a request, ``predict photo.jpg``) runs a second trace, compiled by
oneDNN Graph (``torch.jit.enable_onednn_fusion``): each convolution with its bias, ReLU6
and residual add as one oneDNN kernel in its own blocked layout. On one AVX2 thread the
ImageNet gate's pass at 160 px takes 6.9 ms instead of 9.8, the bundled model's at 128 px
4.4 instead of 6.9 (docs/benchmarks.md, "oneDNN Graph"). Batches keep the plain trace:
there the compiled kernels gain little, and each new batch size would compile again
(0.1-1 s). The fuser is a process-wide switch read when a graph is optimised (on its
first passes), so both traces are warmed inside ``_TRACING``: the plain one with the
switch off (an optimised graph is never re-optimised with it on), the fused one with it
on. A fused graph that does not answer as the plain one does is not used.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

log = logging.getLogger(__name__)


def _native_lock():
    """A lock between OS threads: the interpreter's own, even where gevent patched
    ``threading`` (a server traces on its model thread and in request greenlets)."""
    from gevent import monkey  # a core dependency (serve's workers); importing patches nothing

    return monkey.get_original("_thread", "allocate_lock")()


# One trace at a time: ``warnings.catch_warnings`` and the oneDNN Graph switch are
# process-wide state, so two networks traced at once would let a warning by, or fuse
# the wrong graph.
_TRACING = _native_lock()

TRACE_ON_PASS = 2  # the pass that makes the trace (and every later one uses it)
# Passes that optimise a new graph: the profiling executor profiles the first and
# optimises on the second; oneDNN Graph compiles its kernels on the next.
WARM_PASSES = 3
# How far the fused graph's logits may be from the plain trace's (both fp32; seen: 5e-6).
FUSED_TOLERANCE = 1e-3
ONE_PICTURE_FUSED = True  # False: one picture runs the plain trace too (benchmarks compare)


class Traced(nn.Module):
    """``module`` (in eval mode), run as a frozen trace where that is the same function."""

    def __init__(self, module: nn.Module, side: int) -> None:
        super().__init__()
        self.module = module.eval()
        self.side = side
        self.passes = 0
        self.failed = False
        self.hold = False  # True: eager only (``eager``)
        self._set_graph(None)
        self._set_graph(None, "single")
        self.train(False)

    def _set_graph(self, graph: torch.jit.ScriptModule | None, name: str = "graph") -> None:
        # Not a registered submodule: parameters(), hooks and memory counts stay the
        # eager module's, the one function they describe. ``graph``: any batch;
        # ``single``: one picture, oneDNN Graph's (None where it could not be made).
        object.__setattr__(self, name, graph)

    def train(self, mode: bool = True) -> Traced:
        """Inference only: the module stays in eval mode whatever is asked."""
        self.training = False
        return self

    def usable_for(self, x: torch.Tensor) -> bool:
        return (
            not (self.failed or self.hold)
            and x.device.type == "cpu"
            and x.dtype == torch.float32
            and tuple(x.shape[-2:]) == (self.side, self.side)
            and not torch.is_autocast_enabled("cpu")
            and not torch.is_grad_enabled()
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.usable_for(x):
            return self.module(x)
        if self.graph is None:
            self.passes += 1
            if self.passes < TRACE_ON_PASS or not self._trace(x):
                return self.module(x)
        if len(x) == 1 and self.single is not None:
            return self.single(x)
        return self.graph(x)

    def _trace(self, like: torch.Tensor) -> bool:
        """Make the frozen graph from one picture shaped like ``like``; False if torch
        cannot (then the eager module serves from now on)."""
        try:
            with _TRACING, warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
                # Deprecation notices, and the tracer's note that the padding is fixed.
                warnings.simplefilter("ignore")
                example = torch.zeros((1, *like.shape[1:]))
                example = example.contiguous(memory_format=torch.channels_last)
                with onednn_fusion(False):
                    graph = self._frozen(example)
                self._set_graph(graph)
                self._set_graph(self._fused(example, graph), "single")
        except Exception as exc:  # an unsupported layer or a torch without jit
            log.info("eager inference: no frozen trace (%s)", exc)
            self.failed = True
            return False
        return True

    def _frozen(self, example: torch.Tensor) -> torch.jit.ScriptModule:
        """The module traced at ``example``, frozen, and optimised by ``WARM_PASSES``
        passes under whatever fuser switch the caller set."""
        graph = torch.jit.freeze(torch.jit.trace(self.module, example, check_trace=False))
        with torch.inference_mode():
            for _ in range(WARM_PASSES):
                graph(example)
        return graph

    def _fused(
        self, example: torch.Tensor, plain: torch.jit.ScriptModule
    ) -> torch.jit.ScriptModule | None:
        """oneDNN Graph's trace for one picture, checked against ``plain`` on a random
        one; None where torch has no oneDNN Graph or it answers otherwise."""
        if not ONE_PICTURE_FUSED:
            return None
        try:
            with onednn_fusion(True):
                graph = self._frozen(example)
            probe = torch.randn(example.shape, generator=torch.Generator().manual_seed(0))
            probe = probe.contiguous(memory_format=torch.channels_last)
            with torch.inference_mode():
                apart = (graph(probe) - plain(probe)).abs().max().item()
        except Exception as exc:  # a torch built without oneDNN Graph, a layer it refuses
            log.info("one picture runs the plain trace: no oneDNN Graph (%s)", exc)
            return None
        if not apart <= FUSED_TOLERANCE:
            log.warning("oneDNN Graph's trace is %.2g from the plain one: not used", apart)
            return None
        return graph


@contextlib.contextmanager
def onednn_fusion(on: bool) -> Iterator[None]:
    """torch's process-wide oneDNN Graph switch set for the block, then put back; left
    alone where it already is (so "off" asks nothing of a torch that has none)."""
    before = torch.jit.onednn_fusion_enabled()
    if before != on:
        torch.jit.enable_onednn_fusion(on)
    try:
        yield
    finally:
        if before != on:
            torch.jit.enable_onednn_fusion(before)


@contextlib.contextmanager
def eager(module: nn.Module) -> Iterator[None]:
    """Passes through ``module`` run its eager layers for the block (forward hooks on
    them fire: ``web.models`` measures layer sizes so)."""
    held = isinstance(module, Traced)
    if held:
        module.hold = True
    try:
        yield
    finally:
        if held:
            module.hold = False
