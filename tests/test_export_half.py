"""``imageclf export --format fp16``: the bundle with half-precision weights (no extra
needed), verified against the original before it is kept."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_tiny_bundle

from imageclf.cli import main
from imageclf.errors import UserInputError
from imageclf.models.bundle import load_bundle, save_bundle
from imageclf.prediction.export import (
    HALF_MAX_PROB_DIFF,
    ExportError,
    export_half,
    verification_images,
)
from imageclf.prediction.predictor import Predictor


def run(argv, capsys):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    out, err = capsys.readouterr()
    return exc.value.code, out, err


@pytest.fixture
def bundle(tmp_path):
    return make_tiny_bundle(
        tmp_path / "tiny.safetensors", architecture="fast", calibration={"temperature": 1.7}
    )


def test_half_export_halves_the_weights_and_keeps_everything_else(bundle, tmp_path):
    result = export_half(bundle, tmp_path / "half.safetensors")
    original, half = load_bundle(bundle), load_bundle(result.path)
    assert half.metadata == {**original.metadata, "created": half.metadata["created"]}
    assert half.state_dict.keys() == original.state_dict.keys()
    assert any(not t.is_floating_point() for t in original.state_dict.values())
    for key, tensor in original.state_dict.items():
        stored = half.state_dict[key]
        if tensor.is_floating_point():
            assert stored.dtype == torch.float16
            torch.testing.assert_close(stored.float(), tensor, rtol=1e-3, atol=1e-4)
        else:  # BatchNorm's counters stay integers
            assert stored.dtype == tensor.dtype and torch.equal(stored, tensor)
    floats = sum(t.numel() * 4 for t in original.state_dict.values() if t.is_floating_point())
    assert bundle.stat().st_size - result.size_bytes > 0.45 * floats  # half the weights' bytes


def test_the_half_bundle_loads_into_fp32_and_predicts_like_the_original(bundle, tmp_path):
    result = export_half(bundle, tmp_path / "half.safetensors")
    assert result.images == 1000 and result.opset is None
    assert result.limits == "limits 1% changed, 0.01"
    assert result.top1_agree >= 990 and 0 < result.max_prob_diff <= HALF_MAX_PROB_DIFF
    original, half = Predictor.load(bundle), Predictor.load(result.path)
    assert all(p.dtype == torch.float32 for p in half.model.parameters())
    assert half.temperature == original.temperature == 1.7
    images = verification_images(32, 50, seed=7)
    want, got = original.predict_proba(images), half.predict_proba(images)
    np.testing.assert_allclose(got, want, atol=HALF_MAX_PROB_DIFF)
    assert np.abs(got - want).max() > 0  # really rounded, not a copy


def test_weights_that_do_not_fit_in_half_precision_are_refused(bundle, tmp_path):
    """fp16 tops out at 65504: a bundle with larger weights (finite in fp32: its own probe
    pass at load is fine) would hold infinity in half precision, so the export fails
    loudly and leaves no file."""
    loaded = load_bundle(bundle)
    last = [k for k, v in loaded.state_dict.items() if v.is_floating_point() and v.dim() == 2]
    huge = {k: v * 1e8 if k == last[-1] else v for k, v in loaded.state_dict.items()}
    save_bundle(tmp_path / "huge.safetensors", huge, dict(loaded.metadata))
    with pytest.raises(ExportError, match=r"exceed float16.s range \(65504\), e.g. "):
        export_half(tmp_path / "huge.safetensors", tmp_path / "out.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["huge.safetensors", "tiny.safetensors"]


def test_cli_half_export_prints_its_check_and_writes_beside_the_bundle(bundle, tmp_path, capsys):
    code, out, err = run(["export", str(bundle), "--format", "fp16"], capsys)
    assert code == 0, err
    assert "top-1 agrees on" in out and "/1000" in out and "max probability difference" in out
    assert "float16 weights" in out and "(limits 1% changed, 0.01)" in out
    assert (tmp_path / "tiny.fp16.safetensors").is_file()
    code, out, _ = run(["info", str(tmp_path / "tiny.fp16.safetensors")], capsys)
    assert code == 0 and "stored as float16/int64)" in out


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--out", "model.onnx"], "must end in .safetensors"),
        (["--out", "/no/such/folder/m.safetensors"], "output folder does not exist"),
        (["--opset", "18"], "--opset applies to --format onnx only"),
    ],
)
def test_cli_half_export_bad_options_exit_2(bundle, capsys, argv, needle):
    code, _, err = run(["export", str(bundle), "--format", "fp16", *argv], capsys)
    assert code == 2 and needle in err and "Traceback" not in err


def test_half_export_never_overwrites_its_source_or_takes_onnx(bundle, tmp_path):
    with pytest.raises(UserInputError, match="overwrite the model itself"):
        export_half(bundle, bundle)
    with pytest.raises(UserInputError, match="not an ONNX file"):
        export_half(tmp_path / "model.onnx")
    assert load_bundle(bundle)  # untouched
