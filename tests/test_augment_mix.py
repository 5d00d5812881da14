"""TrivialAugment, MixUp, CutMix, random erasing, the cosine and one-cycle schedules and
the weight average (--ema): each op on small batches, and training with them on."""

import itertools
import json
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from helpers import write_image_folder
from torch import nn

from imageclf.data.augment_mix import as_targets, mix_batch, random_erasing
from imageclf.data.trivial_augment import _PHOTO, OPS, _theta, _warp, trivial_augment
from imageclf.errors import UserInputError
from imageclf.training.config import TrainConfig
from imageclf.training.ema import WeightAverage, ema_decay
from imageclf.training.loop import resume, train
from imageclf.training.optim import one_cycle, schedule_multiplier
from imageclf.training.resolve import resolve


def _gen(seed=0):
    return torch.Generator().manual_seed(seed)


def _pictures(n=16, side=8, seed=0):
    return torch.rand(n, 3, side, side, generator=_gen(seed))


# ---------------------------------------------------------------- TrivialAugment
def test_trivial_augment_keeps_shape_range_and_replays():
    x = _pictures(64)
    a = trivial_augment(x, _gen(1))
    assert a.shape == x.shape and a.dtype == x.dtype
    assert a.min() >= 0 and a.max() <= 1
    torch.testing.assert_close(a, trivial_augment(x, _gen(1)), rtol=0, atol=0)
    assert not torch.equal(a, trivial_augment(x, _gen(2)))
    # One op per picture, identity among the 14: most pictures change, a few do not.
    changed = (a - x).abs().flatten(1).amax(1) > 1e-6
    assert 40 <= int(changed.sum()) < 64


def test_trivial_augment_ops_do_what_they_say():
    x = _pictures(4)
    half = torch.full((4,), 0.5)
    torch.testing.assert_close(_PHOTO["brightness"](x, -torch.ones(4)), x * 0.01 + 0 * x)
    solar = _PHOTO["solarize"](x, torch.ones(4))  # threshold 0: everything inverted
    torch.testing.assert_close(solar, 1 - x)
    bits2 = _PHOTO["posterize"](x, torch.ones(4))  # 2 bits: 4 levels
    assert len(torch.unique(torch.round(bits2 * 255))) <= 4
    auto = _PHOTO["autocontrast"](x * 0.5 + 0.2, half)
    torch.testing.assert_close(auto.amin((2, 3)), torch.zeros(4, 3))
    torch.testing.assert_close(auto.amax((2, 3)), torch.ones(4, 3))
    gray = _PHOTO["color"](x, -torch.ones(4) / 0.99)  # factor 0: grayscale
    torch.testing.assert_close(gray[:, 0], gray[:, 1])
    # Equalising a ramp squeezed into a narrow band spreads it over the whole range.
    ramp = torch.linspace(0.4, 0.5, 64).view(1, 1, 8, 8).expand(1, 3, 8, 8).contiguous()
    eq = _PHOTO["equalize"](ramp, half[:1])
    assert eq.min() == 0 and eq.max() == 1
    # Geometric ops at magnitude 0 are the identity.
    for kind in range(5):
        theta = _theta(torch.tensor([kind]), torch.zeros(1))
        torch.testing.assert_close(_warp(x[:1], theta), x[:1], atol=1e-5, rtol=0)
    assert len(OPS) == 14


# ---------------------------------------------------------------- MixUp and CutMix
def _labelled(n=8, side=8):
    """Picture i is the constant i, class i: a mixed pixel's value says its sources."""
    x = torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1).expand(n, 3, side, side)
    return x.contiguous(), as_targets(torch.arange(n), n)


def test_mix_off_is_the_identity_and_targets_are_soft_rows():
    x, t = _labelled()
    same_x, same_t = mix_batch(x, t, 0.0, 0.0, _gen())
    assert same_x is x and same_t is t
    torch.testing.assert_close(as_targets(torch.tensor([2, 0]), 3), torch.eye(3)[[2, 0]])
    multi_hot = torch.tensor([[1.0, 0.0, 1.0]])
    assert torch.equal(as_targets(multi_hot, 3), multi_hot)


@pytest.mark.parametrize("mixup, cutmix", [(0.4, 0.0), (0.0, 1.0), (1.0, 1.0)])
def test_mixing_keeps_label_mass_and_replays(mixup, cutmix):
    x, t = _labelled(32)
    mx, mt = mix_batch(x, t, mixup, cutmix, _gen(5))
    assert mx.shape == x.shape and mt.shape == t.shape and mt.dtype == torch.float32
    torch.testing.assert_close(mt.sum(1), torch.ones(32))
    again = mix_batch(x, t, mixup, cutmix, _gen(5))
    assert torch.equal(mx, again[0]) and torch.equal(mt, again[1])
    assert not torch.equal(mt, t)


def test_mixup_blends_pictures_in_the_labels_proportion():
    x, t = _labelled()
    mx, mt = mix_batch(x, t, 0.4, 0.0, _gen(3))
    for i in range(8):
        # pixel value = lam * i + (1 - lam) * j, where the row's weights are lam on i, rest on j
        expected = (mt[i] * torch.arange(8.0)).sum()
        torch.testing.assert_close(mx[i], torch.full_like(mx[i], float(expected)))


def test_cutmix_pastes_a_box_whose_area_is_the_label_share():
    x, t = _labelled(16, side=16)
    mx, mt = mix_batch(x, t, 0.0, 1.0, _gen(4))
    for i in range(16):
        values = mx[i, 0]
        assert set(values.unique().tolist()) <= {float(i), *mt[i].nonzero().flatten().tolist()}
        share_own = float((values == i).float().mean())
        assert share_own == pytest.approx(float(mt[i, i]), abs=1e-6)


def test_soft_targets_keep_label_smoothing_and_class_weights():
    """One-hot rows give hard labels' loss (smoothing and weights included), and a mixed
    row's loss is the mix of its two labels' losses."""
    logits = torch.randn(6, 4, generator=_gen(0))
    y = torch.tensor([0, 1, 2, 3, 1, 0])
    weight = torch.tensor([0.5, 2.0, 1.0, 3.0])
    kw = dict(weight=weight, label_smoothing=0.2, reduction="none")
    hard = F.cross_entropy(logits, y, **kw)
    torch.testing.assert_close(F.cross_entropy(logits, as_targets(y, 4), **kw), hard)
    perm = torch.tensor([1, 2, 3, 4, 5, 0])
    lam = torch.tensor([0.3, 0.5, 0.9, 1.0, 0.0, 0.7])[:, None]
    mixed = lam * as_targets(y, 4) + (1 - lam) * as_targets(y[perm], 4)
    expected = lam[:, 0] * hard + (1 - lam[:, 0]) * F.cross_entropy(logits, y[perm], **kw)
    torch.testing.assert_close(F.cross_entropy(logits, mixed, **kw), expected)


# ---------------------------------------------------------------- random erasing
def test_random_erasing_boxes_a_share_of_the_pictures():
    x = torch.full((400, 3, 16, 16), 7.0)
    assert random_erasing(x, 0.0, _gen()) is x
    out = random_erasing(x, 0.5, _gen(1))
    assert out.shape == x.shape
    erased = (out != 7.0).flatten(1).float().mean(1)
    assert 150 < int((erased > 0).sum()) < 250  # about half the pictures
    assert float(erased.max()) <= 1 / 3 + 0.1  # a box of at most a third (rounding)
    assert torch.equal(out, random_erasing(x, 0.5, _gen(1)))
    assert int((random_erasing(x, 1.0, _gen(2)) != 7).flatten(1).any(1).sum()) >= 395


# ---------------------------------------------------------------- schedules
def test_cosine_and_one_cycle_shapes():
    cfg = TrainConfig(schedule="cosine", warmup=0.2)
    cos = [schedule_multiplier(cfg, s, 100) for s in range(100)]
    assert cos[0] == pytest.approx(0.2) and cos[20] == pytest.approx(1.0)
    assert all(a >= b for a, b in itertools.pairwise(cos[20:]))
    assert cos[60] == pytest.approx(0.5) and cos[-1] < 0.001
    one = [schedule_multiplier(TrainConfig(schedule="onecycle", warmup=0.25), s, 100)
           for s in range(101)]  # fmt: skip
    assert one[0] == pytest.approx(1 / 25) and one[25] == pytest.approx(1.0)
    assert all(a <= b for a, b in itertools.pairwise(one[:26]))
    assert all(a >= b for a, b in itertools.pairwise(one[25:]))
    assert one[100] == pytest.approx(1 / 25 / 1e4)
    assert one_cycle(50, 100, 0.5) == 1.0


# ---------------------------------------------------------------- the weight average
class _Tiny(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(2, 2)
        self.bn = nn.BatchNorm1d(2)


def test_ema_update_math_buffers_and_swap():
    model = _Tiny()
    ema = WeightAverage(model, decay=0.9)
    assert ema_decay(0.9, 0) == pytest.approx(0.1) and ema_decay(0.9, 1000) == 0.9
    ema.update()  # the first update takes the weights as they are
    start = model.lin.weight.detach().clone()
    with torch.no_grad():
        model.lin.weight.add_(1.0)
        model.bn.running_mean.add_(2.0)
        model.bn.num_batches_tracked += 5
    ema.update()  # decay min(0.9, 2/11)
    d = 2 / 11
    state = ema.averaged_state()
    torch.testing.assert_close(state["lin.weight"], d * start + (1 - d) * (start + 1))
    torch.testing.assert_close(state["bn.running_mean"], torch.full((2,), (1 - d) * 2.0))
    assert int(state["bn.num_batches_tracked"]) == 5  # integers copied, not averaged
    own = model.lin.weight.detach().clone()
    with ema.applied():
        torch.testing.assert_close(model.lin.weight, state["lin.weight"])
    assert torch.equal(model.lin.weight, own)
    again = WeightAverage(_Tiny(), 0.9)
    again.model.load_state_dict(model.state_dict())
    again.load_state_dict(ema.state_dict())
    assert again.updates == 2
    torch.testing.assert_close(again.averaged_state()["lin.weight"], state["lin.weight"])


# ---------------------------------------------------------------- config, flags, recipes
@pytest.mark.parametrize(
    "overrides, needle",
    [
        ({"mixup": -0.1}, "mixup must be"),
        ({"cutmix": 1e9}, "cutmix must be"),
        ({"erasing": 1.5}, "erasing must be"),
        ({"ema": 1.0}, "ema must be"),
        ({"trivial_augment": "yes"}, "trivial_augment must be true or false"),
        ({"schedule": "cosin"}, "unknown schedule 'cosin'"),
    ],
)
def test_new_options_are_checked(overrides, needle):
    with pytest.raises(UserInputError, match=needle):
        resolve("fast", **overrides)


def test_flags_reach_the_config_and_bad_ones_are_one_line(tmp_path):
    from click.testing import CliRunner

    from imageclf.cli.entry import cli

    bad = CliRunner().invoke(cli, ["train", "--mixup", "-1", "--data", str(tmp_path)])
    assert bad.exit_code == 2 and "--mixup" in bad.output
    recipe = tmp_path / "r.json"
    config = {"mixup": 0.2, "cutmix": 1.0, "erasing": 0.25, "ema": 0.99,
              "trivial_augment": True, "schedule": "onecycle"}  # fmt: skip
    doc = {"format": "imageclf-recipe/1", "name": "strong", "base": "fast", "config": config}
    recipe.write_text(json.dumps(doc))
    cfg = resolve(str(recipe))
    assert {k: getattr(cfg, k) for k in config} == config
    defaults = TrainConfig()
    assert (defaults.mixup, defaults.cutmix, defaults.erasing, defaults.ema) == (0, 0, 0, 0)
    assert not defaults.trivial_augment


# ---------------------------------------------------------------- training with them on
@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("mix") / "ds", per_class=24)


_ALL_ON = dict(trivial_augment=True, mixup=0.4, cutmix=1.0, erasing=0.5, ema=0.9,
               schedule="cosine")  # fmt: skip


def _cfg(data, out, **kw):
    base = dict(data=str(data), out=str(out), epochs=4, batch_size=8, seed=1, **_ALL_ON)
    return resolve("seed-b", **{**base, **kw})


class _Stop(Exception):
    pass


@pytest.mark.slow
def test_resume_with_every_new_option_is_exact(synthetic, tmp_path):
    """Stopped after epoch 2 and resumed: the same history, test score and weights as a
    run that was never stopped (augmentation draws, mixing and the average replayed)."""
    whole = train(_cfg(synthetic, tmp_path / "whole"), progress=False)

    def stop_after_two(record):
        if record["epoch"] == 2:
            raise _Stop

    with pytest.raises(_Stop):
        train(_cfg(synthetic, tmp_path / "cut"), progress=False, on_epoch_end=stop_after_two)
    saved = torch.load(tmp_path / "cut" / "last.pt", weights_only=True)
    assert saved["ema"]["updates"] > 0 and saved["ema"]["average"]
    resumed = resume(tmp_path / "cut", progress=False)
    keys = ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr"]
    assert [[h[k] for k in keys] for h in resumed.history] == [
        [h[k] for k in keys] for h in whole.history
    ]
    assert resumed.metrics["test"] == whole.metrics["test"]


def test_the_bundle_holds_the_average_and_validation_scores_it(synthetic, tmp_path):
    from imageclf.models.bundle import load_bundle

    run = train(_cfg(synthetic, tmp_path / "ema", restore_best=False, epochs=2), progress=False)
    last = torch.load(run.run_dir / "last.pt", weights_only=True)
    names = list(last["model"])
    average = dict(zip(names, last["ema"]["average"], strict=True))
    for name, value in load_bundle(run.bundle_path).state_dict.items():
        torch.testing.assert_close(value.float(), average[name].float())
    assert not all(torch.equal(last["model"][k], average[k]) for k in names)
    # Without --ema the bundle is the last weights (what the average replaced).
    plain = train(_cfg(synthetic, tmp_path / "plain", restore_best=False, epochs=2, ema=0.0),
                  progress=False)  # fmt: skip
    assert torch.load(plain.run_dir / "last.pt", weights_only=True)["ema"] == {}


def test_train_cli_takes_the_new_flags(synthetic, tmp_path):
    out = tmp_path / "cli"
    command = [sys.executable, "-m", "imageclf", "-q", "train", "--data", str(synthetic),
               "--recipe", "seed-b", "--epochs", "1", "--batch-size", "8", "--out", str(out),
               "--trivial-augment", "--mixup", "0.2", "--cutmix", "1", "--erasing", "0.25",
               "--ema", "0.99", "--schedule", "onecycle"]  # fmt: skip
    assert subprocess.run(command, timeout=300).returncode == 0
    config = json.loads((out / "config.json").read_text())["config"]
    assert config["trivial_augment"] and config["mixup"] == 0.2 and config["cutmix"] == 1.0
    assert config["erasing"] == 0.25 and config["ema"] == 0.99 and config["schedule"] == "onecycle"
