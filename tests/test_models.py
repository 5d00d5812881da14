import pytest
import torch

from imageclf.errors import UserInputError
from imageclf.models import TrainingHooks, build, names, training_hooks

PRODUCT_ARCHITECTURES = [n for n in names() if not n.startswith("test-")]  # tests register more


@pytest.mark.parametrize("name", PRODUCT_ARCHITECTURES)
@pytest.mark.parametrize("classes,size", [(10, 32), (3, 32), (7, 48)])
def test_every_architecture_any_class_count(name, classes, size):
    model = build(name, num_classes=classes, input_size=size).to(memory_format=torch.channels_last)
    x = torch.randn(2, 3, size, size).contiguous(memory_format=torch.channels_last)
    training_hooks(model).init_whitening(torch.randn(16, 3, size, size))
    out = model(x)
    assert out.shape == (2, classes) and torch.isfinite(out).all()
    out.sum().backward()


def test_seed_a_matches_the_seed_description():
    model = build("seed-a")
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(32, (3, 3)), (64, (4, 4))]
    assert [lin.out_features for lin in linears] == [34, 10]


def test_seed_d_has_l2_penalty_on_dense():
    model = build("seed-d")
    penalty = model.l2_penalty()
    dense = model.classifier[0].weight
    torch.testing.assert_close(penalty, 0.001 * (dense**2).sum())


def test_whitening_decorrelates_patches():
    torch.manual_seed(0)
    model = build("fast")
    base = torch.randn(64, 3, 16, 16)
    images = base + 0.8 * base.roll(1, dims=1)  # correlated channels
    model.init_whitening(images)
    with torch.no_grad():
        out = model.whiten(images) - model.whiten.bias[None, :, None, None]
    half = out[:, : out.shape[1] // 2].transpose(0, 1).reshape(out.shape[1] // 2, -1)
    cov = torch.cov(half)
    torch.testing.assert_close(cov.diagonal(), torch.ones(len(cov)), atol=0.15, rtol=0.15)


def test_training_hooks_are_declared_once():
    """The loop asks every model the same three questions; defaults answer 'nothing'."""
    fast, seed_d = build("fast"), build("seed-d")
    assert isinstance(fast, TrainingHooks) and training_hooks(fast) is fast
    assert training_hooks(fast).whitening_bias() is fast.whiten.bias
    assert training_hooks(fast).l2_penalty() is None
    assert training_hooks(seed_d).whitening_bias() is None
    assert training_hooks(seed_d).l2_penalty() is not None
    plain = torch.nn.Linear(3, 2)  # any module without hooks gets the no-op defaults
    hooks = training_hooks(plain)
    assert hooks is not plain and hooks.whitening_bias() is None and hooks.l2_penalty() is None
    hooks.init_whitening(torch.randn(2, 3, 4, 4))


def test_unknown_architecture():
    with pytest.raises(UserInputError, match="unknown architecture"):
        build("resnet9000")
