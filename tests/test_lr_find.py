"""The learning-rate range test: a curve and a suggestion in range, no trace left in the
model, the plot written, the CLI working and bad options one error line."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli, write_image_folder

from imageclf.device import setup_runtime
from imageclf.training.lr_find import lr_find, suggest, sweep
from imageclf.training.parts import Parts
from imageclf.training.resolve import resolve
from imageclf.training.start import start_for
from imageclf.training.train_data import TrainData

SMALL = {"widths": [8, 16, 16]}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("lrf"), per_class=16, partitioned=False)


def _cfg(folder, **kw):
    return resolve("fast", data=str(folder), arch_kwargs=SMALL, batch_size=16, **kw)


def test_sweep_leaves_no_trace(folder, monkeypatch):
    from imageclf.training import lr_find as module

    cfg = _cfg(folder)
    rt = setup_runtime(cfg.device, cfg.precision, cfg.threads)
    data = TrainData.load(cfg, progress=False)
    parts = Parts.build(cfg, data, rt, start_for(cfg))
    before = {k: v.clone() for k, v in parts.model.state_dict().items()}
    grads = [p.requires_grad for p in parts.model.parameters()]
    rng = torch.get_rng_state()
    during = {}  # the weights just before they are put back: the sweep did train them
    restore = module._Saved.restore

    def spy(self, parts_):
        during.update({k: v.clone() for k, v in parts_.model.state_dict().items()})
        restore(self, parts_)

    monkeypatch.setattr(module._Saved, "restore", spy)
    found = sweep(parts, data, cfg, rt, start_lr=1e-5, end_lr=1.0, steps=12)
    assert len(found.lrs) >= 6 and found.lrs[0] == pytest.approx(1e-5)
    assert any(not torch.equal(before[k], during[k]) for k in before)
    after = parts.model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # BN statistics included
    assert [p.requires_grad for p in parts.model.parameters()] == grads
    assert not parts.optimizer.state  # no momentum left behind
    assert torch.equal(torch.get_rng_state(), rng)


def test_lr_find_suggests_a_rate_inside_the_sweep(folder):
    found = lr_find(_cfg(folder), start_lr=1e-6, end_lr=10.0, steps=30, progress=False)
    assert found.suggestion is not None
    assert 1e-6 <= found.suggestion <= 10.0
    assert found.minimum is not None and found.suggestion < found.minimum  # before it
    assert len(found.lrs) == len(found.losses) == len(found.smoothed)


def test_suggest_rules_on_a_known_curve():
    lrs = [10 ** (e / 4) for e in range(-24, 1)]  # 1e-6 .. 1
    loss = [2.0] * 8 + [2.0 - 0.2 * k for k in range(1, 9)] + [0.6 + 0.5 * k for k in range(9)]
    suggestion, steepest, minimum = suggest(lrs, loss)
    assert minimum == lrs[15]  # 0.4, the lowest
    assert suggestion == steepest and lrs[8] <= steepest < lrs[15]  # on the straight descent
    early = [2.0, 0.5, 0.6, 0.9, 1.2, 1.5]  # the minimum too early for a slope before it
    assert suggest(lrs[:6], early) == (lrs[0], None, lrs[1])  # a tenth, kept in the sweep
    assert suggest(lrs[:5], [1.0, 1.1, 1.2, 1.3, 1.4]) == (None, None, None)  # never fell


def test_cli_writes_plot_and_json(folder, tmp_path, capsys):
    plot, out = tmp_path / "lr.png", tmp_path / "lr.json"
    code, stdout, err = run_cli(
        ["-q", "lr-find", "--data", str(folder), "--steps", "20", "--start-lr", "1e-5",
         "--batch-size", "16", "--set", json.dumps(SMALL).join(["arch_kwargs=", ""]),
         "--plot", str(plot), "--json", str(out)], capsys,
    )  # fmt: skip
    assert code == 0, err
    assert "suggested --lr" in stdout and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    doc = json.loads(out.read_text())
    assert doc["rule"].startswith("steepest") and len(doc["lrs"]) >= 5


@pytest.mark.parametrize(
    "args, words",
    [
        (["--start-lr", "1", "--end-lr", "0.1"], "below --end-lr"),
        (["--recipe", "nope"], "unknown recipe"),
        (["--set", "lrr=1"], "did you mean 'lr'"),
        (["--data", "/no/such/folder"], "not found"),
    ],
)
def test_cli_bad_options_are_one_line(folder, tmp_path, capsys, args, words):
    argv = ["-q", "lr-find", "--plot", str(tmp_path / "p.png")]
    code, _, err = run_cli(argv + (args if "--data" in args else ["--data", str(folder), *args]),
                           capsys)  # fmt: skip
    assert code == 2 and err.count("\n") == 1 and words in err, err


def test_from_a_bundle_the_sweep_starts_from_the_fitted_head(folder, tiny_bundle, monkeypatch):
    from imageclf.training import finetune

    fitted = []
    fit_head = finetune.fit_head
    monkeypatch.setattr(finetune, "fit_head", lambda *a, **k: fitted.append(1) or fit_head(*a, **k))
    cfg = resolve("finetune", data=str(folder), init=str(tiny_bundle), batch_size=16)
    found = lr_find(cfg, start_lr=1e-5, end_lr=1.0, steps=8, progress=False)
    assert fitted == [1] and len(found.lrs) >= 5


def test_freeze_backbone_has_no_rate_to_find(folder, tiny_bundle, capsys, tmp_path):
    argv = ["-q", "lr-find", "--data", str(folder), "--init", str(tiny_bundle)]
    code, _, err = run_cli([*argv, "--freeze-backbone", "--plot", str(tmp_path / "p.png")], capsys)
    assert code == 2 and err.count("\n") == 1 and "no learning rate to find" in err
