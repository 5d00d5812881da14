"""``prediction.traced``: the frozen trace is the eager function, made on the second pass,
used only where it is the same function, and never in the way of hooks or failures."""

from __future__ import annotations

import torch
from torch import nn

from imageclf.models import build
from imageclf.prediction import traced
from imageclf.prediction.inference import fold_batchnorm
from imageclf.prediction.traced import Traced, eager


def lite0(side: int = 64) -> nn.Module:
    """Lite0 with logits of order 1: as built, each block's last BatchNorm starts at zero
    and the logits are ~1e-8, so no comparison of them could fail."""
    torch.manual_seed(0)
    net = build("efficientnet-lite0", 10, side)
    for module in net.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)):
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
    return fold_batchnorm(net).eval()


def pictures(n: int, side: int = 64) -> torch.Tensor:
    torch.manual_seed(n)
    return torch.randn(n, 3, side, side).contiguous(memory_format=torch.channels_last)


def three_passes(n: int) -> tuple[Traced, list[torch.Tensor], torch.Tensor]:
    """A wrapped Lite0 after three passes of ``n`` pictures (the trace is made on the
    second), their outputs, and the eager module's answer."""
    net = lite0()
    wrapped = Traced(net, 64)
    with torch.inference_mode():
        outs = [wrapped(pictures(n)) for _ in range(3)]
        expected = net(pictures(n))
    return wrapped, outs, expected


def test_the_trace_is_made_on_the_second_pass_and_gives_the_eager_answer():
    net = lite0()
    wrapped = Traced(net, 64)
    with torch.inference_mode():
        first = wrapped(pictures(1))
        assert wrapped.graph is None  # a one-off prediction never pays for the trace
        second = wrapped(pictures(1))
        assert wrapped.graph is not None
        for n in (1, 5):  # traced at one picture, right for any batch
            torch.testing.assert_close(wrapped(pictures(n)), net(pictures(n)), atol=1e-5, rtol=0)
    torch.testing.assert_close(first, second)


def test_other_sides_autocast_and_gradients_run_the_eager_module(monkeypatch):
    net = lite0()
    wrapped = Traced(net, 64)
    with torch.inference_mode():
        wrapped(pictures(1))
        wrapped(pictures(1))
    graph = wrapped.graph
    calls = []
    monkeypatch.setattr(wrapped, "graph", lambda x: calls.append(x) or graph(x))
    with torch.inference_mode():
        wrapped(pictures(2))
        assert len(calls) == 1
        wrapped(pictures(2, side=96))  # the trace's padding is fixed for 64 px
        with torch.autocast("cpu", dtype=torch.bfloat16):
            wrapped(pictures(2))
    out = wrapped(pictures(2).requires_grad_())
    assert out.requires_grad and len(calls) == 1


def test_hooks_fire_inside_eager_and_the_module_stays_in_eval_mode():
    wrapped = Traced(lite0(), 64)
    wrapped.train()
    assert not wrapped.training and not wrapped.module.training
    seen = []
    handle = wrapped.module.classifier.register_forward_hook(lambda *a: seen.append(1))
    with torch.inference_mode():
        for _ in range(2):
            wrapped(pictures(1))
        assert wrapped.graph is not None
        before = len(seen)
        wrapped(pictures(1))
        assert len(seen) == before  # the trace runs past hooks
        with eager(wrapped):
            wrapped(pictures(1))
    handle.remove()
    assert len(seen) == before + 1
    # The graph is no submodule: parameters are the eager module's, counted once.
    assert sum(1 for _ in wrapped.parameters()) == sum(1 for _ in wrapped.module.parameters())


def test_a_torch_that_cannot_trace_keeps_the_eager_module(monkeypatch):
    def refuse(*args, **kwargs):
        raise RuntimeError("no jit here")

    monkeypatch.setattr(traced.torch.jit, "trace", refuse)
    wrapped, outs, expected = three_passes(2)
    assert wrapped.failed and wrapped.graph is None
    for out in outs:
        torch.testing.assert_close(out, expected)


def test_one_picture_runs_onednn_graphs_trace_and_a_batch_the_plain_one(monkeypatch):
    net = lite0()
    wrapped = Traced(net, 64)
    with torch.inference_mode():
        wrapped(pictures(1))
        wrapped(pictures(1))
    assert wrapped.single is not None and wrapped.single is not wrapped.graph
    assert not torch.jit.onednn_fusion_enabled()  # the process-wide switch is put back
    used = []
    for name in ("graph", "single"):
        graph = getattr(wrapped, name)
        monkeypatch.setattr(wrapped, name, lambda x, g=graph, n=name: used.append(n) or g(x))
    with torch.inference_mode():
        for n in (1, 3, 1):
            torch.testing.assert_close(wrapped(pictures(n)), net(pictures(n)), atol=1e-5, rtol=0)
    assert used == ["single", "graph", "single"]


def test_a_fused_graph_that_answers_otherwise_or_cannot_be_made_is_not_used(monkeypatch):
    warned = []  # the log itself: another test's logging setup may keep it from caplog
    monkeypatch.setattr(traced.log, "warning", lambda *args: warned.append(args[0] % args[1:]))
    monkeypatch.setattr(traced, "FUSED_TOLERANCE", -1.0)  # no answer is close enough
    wrapped = Traced(lite0(), 64)
    with torch.inference_mode():
        wrapped(pictures(1))
        wrapped(pictures(1))
    assert wrapped.graph is not None and wrapped.single is None
    assert len(warned) == 1 and "not used" in warned[0]

    def refuse(on):
        raise RuntimeError("built without oneDNN Graph")

    monkeypatch.setattr(traced.torch.jit, "enable_onednn_fusion", refuse)
    wrapped, outs, expected = three_passes(1)
    assert wrapped.graph is not None and wrapped.single is None and not wrapped.failed
    for out in outs:
        torch.testing.assert_close(out, expected, atol=1e-5, rtol=0)
