"""The optimisers' arithmetic, checked against what they claim, without training a net."""

import pytest
import torch
from torch import nn

from imageclf.training.optim import MuonSGD, make_optimizer, orthogonalize
from imageclf.training.resolve import resolve


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, bias=False),
        nn.BatchNorm2d(8),
        nn.Flatten(),
        nn.Linear(8 * 4 * 4, 10, bias=False),
    )


def _gradients(net: nn.Module, seed: int = 1) -> None:
    """The same made-up gradient for every copy of the net: each parameter's update then
    depends on its own gradient and state only."""
    generator = torch.Generator().manual_seed(seed)
    for p in net.parameters():
        p.grad = torch.randn(p.shape, generator=generator)


@pytest.mark.parametrize("shape", [(8, 27), (27, 8), (64, 64)])
def test_orthogonalize_equalises_singular_values(shape):
    torch.manual_seed(0)
    # Singular values spread over three orders of magnitude...
    u, _ = torch.linalg.qr(torch.randn(shape[0], shape[0]))
    v, _ = torch.linalg.qr(torch.randn(shape[1], shape[1]))
    k = min(shape)
    spread = torch.logspace(0, -3, k)
    g = u[:, :k] @ torch.diag(spread) @ v[:, :k].T
    out = orthogonalize(g)
    assert out.shape == g.shape
    s = torch.linalg.svdvals(out)
    # ...come out within the iteration's band around 1 (not exactly 1: 3 steps only), and
    # the singular vectors are kept: out is u S' v^T with the same u and v.
    assert s.max() < 1.5 and s[: k // 2].min() > 0.5
    rotated = u[:, :k].T @ out @ v[:, :k]
    assert torch.allclose(rotated, torch.diag(torch.diagonal(rotated)), atol=1e-3)


def test_muon_recipe_steps_filters_by_muon_and_the_rest_as_sgd():
    cfg = resolve("fast", optimizer="muon", weight_decay=0.01, lr=0.05)
    net, reference = _net(), _net()
    optimizer = make_optimizer(net, cfg)
    assert isinstance(optimizer, MuonSGD)
    muon_groups = [g for g in optimizer.param_groups if g.get("muon")]
    assert [p.ndim for g in muon_groups for p in g["params"]] == [4]
    assert muon_groups[0]["lr"] == cfg.muon_lr  # the recipe's batch, 256: as given
    # Per 256 images: a batch of 1024 takes a quarter of the steps, each 4x as long.
    big = make_optimizer(_net(), resolve("fast", optimizer="muon", batch_size=1024))
    assert [g["lr"] for g in big.param_groups if g.get("muon")] == [pytest.approx(4 * cfg.muon_lr)]

    # The head and BatchNorm biases follow torch's nesterov SGD exactly.
    sgd_cfg = resolve("fast", optimizer="sgd", weight_decay=0.01, lr=0.05)
    plain = make_optimizer(reference, sgd_cfg)
    for seed in range(3):
        for model, opt in ((net, optimizer), (reference, plain)):
            _gradients(model, seed)
            opt.step()
    assert torch.allclose(net[3].weight, reference[3].weight, atol=1e-6)
    assert torch.allclose(net[1].bias, reference[1].bias, atol=1e-6)
    # The filters did not: Muon moved them, holding each step's size, not the gradient's.
    assert not torch.allclose(net[0].weight, reference[0].weight, atol=1e-3)


def test_muon_step_is_orthogonal_and_keeps_the_filter_norm():
    net = _net()
    conv = net[0]
    with torch.no_grad():
        conv.weight.mul_(7.0)  # any norm: Muon rescales it to sqrt(output channels)
    optimizer = MuonSGD(
        [{"params": [conv.weight], "lr": 0.1, "muon": True}],
        lr=0.1,
        momentum=0.9,
        muon_momentum=0.0,
    )
    _gradients(net)
    grad = conv.weight.grad.clone()
    before = conv.weight.detach().clone()
    optimizer.step()
    rescaled = before * (8**0.5 / before.norm())
    step = (rescaled - conv.weight.detach()).reshape(8, -1) / 0.1
    # With no momentum the step is the orthogonalised gradient (nesterov adds the buffer,
    # which equals the gradient on the first step: twice it, normalised away).
    expected = orthogonalize(2 * grad.reshape(8, -1))
    assert torch.allclose(step, expected, atol=1e-5)
    s = torch.linalg.svdvals(step)
    assert s.max() < 1.5 and s.min() > 0.3
    # Stepping again renormalises first: the norm never drifts with the updates.
    _gradients(net, seed=2)
    optimizer.step()
    assert abs(conv.weight.norm().item() - 8**0.5) < 0.1 * 1.5 * 8**0.5


def test_muon_state_survives_a_checkpoint():
    cfg = resolve("fast", optimizer="muon")
    net = _net()
    optimizer = make_optimizer(net, cfg)
    _gradients(net)
    optimizer.step()
    restored = make_optimizer(_net(), cfg)
    restored.load_state_dict(optimizer.state_dict())
    assert [g.get("muon", False) for g in restored.param_groups] == [False, False, True]
    buffers = [s["momentum_buffer"] for s in restored.state.values()]
    assert len(buffers) == 4 and all(b.abs().sum() > 0 for b in buffers)


def test_orthogonalize_in_bf16_matches_fp32_within_its_band():
    """Training in bf16 runs the iteration in bf16 (half the time): same direction, the
    same band of singular values."""
    torch.manual_seed(0)
    g = torch.randn(48, 432)
    low = orthogonalize(g, dtype=torch.bfloat16)
    assert low.dtype == torch.bfloat16
    s = torch.linalg.svdvals(low.float())
    assert s.max() < 1.6 and s.min() > 0.4
    agreement = torch.nn.functional.cosine_similarity(
        low.float().flatten(), orthogonalize(g).flatten(), dim=0
    )
    assert agreement > 0.99
