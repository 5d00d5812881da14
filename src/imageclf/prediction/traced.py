"""A network's inference pass as a frozen TorchScript graph, for the CPU.

Lite0's eager forward calls about 150 modules from Python. For one picture on a CPU,
that interpreter work is a quarter of the pass (the bundled model at 128 px on one
thread: 6.2 ms eager, 4.7 ms frozen), and it holds the GIL, so the gate's pass beside
the model's (``side_by_side``) waits on it too. A frozen trace runs the same kernels
from C++ without the GIL (docs/benchmarks.md, "The gate beside the model").

The trace is made on the second pass, not at load: a one-off prediction (``imageclf
predict photo.jpg``) never pays its ~0.5 s; a server (whose warm-up runs passes) or a
loop does, once. It is used only where it is the same function: fp32 on the CPU, at the
side it was traced at (the "same" padding of a stride-2 layer is fixed at trace time).
Anything else, and any torch without ``torch.jit``, runs the eager module.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from . import side_by_side

log = logging.getLogger(__name__)
# One trace at a time: ``warnings.catch_warnings`` swaps process-wide state, so two
# networks traced at once (the model and the gate, side by side) would let a warning by.
_TRACING = side_by_side.native_lock()

TRACE_ON_PASS = 2  # the pass that makes the trace (and every later one uses it)


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
        self.train(False)

    def _set_graph(self, graph: torch.jit.ScriptModule | None) -> None:
        # Not a registered submodule: parameters(), hooks and memory counts stay the
        # eager module's, the one function they describe.
        object.__setattr__(self, "graph", graph)

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
                graph = torch.jit.trace(self.module, example, check_trace=False)  # tests check
                self._set_graph(torch.jit.freeze(graph))
        except Exception as exc:  # an unsupported layer or a torch without jit
            log.info("eager inference: no frozen trace (%s)", exc)
            self.failed = True
            return False
        return True


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
