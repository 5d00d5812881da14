import json
import struct

import numpy as np
import pytest
import torch
from conftest import make_tiny_bundle, png_bytes
from safetensors.torch import save_file

from imageclf import Predictor
from imageclf.bundle import build_model, load_bundle
from imageclf.errors import BundleError


def test_round_trip_keeps_weights_and_metadata(tmp_path):
    path = make_tiny_bundle(tmp_path / "m.safetensors", "seed-b", classes=["a", "b", "c"])
    bundle = load_bundle(path)
    assert bundle.classes == ["a", "b", "c"]
    assert bundle.metadata["versions"]["torch"] == torch.__version__
    model = build_model(bundle)
    x = torch.randn(2, 3, 32, 32)
    torch.testing.assert_close(model(x), build_model(load_bundle(path))(x))


def _tensor_region(path):
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    return data, 8 + header_len


def test_flipped_weight_byte_is_detected(tmp_path):
    path = make_tiny_bundle(tmp_path / "m.safetensors")
    data, start = _tensor_region(path)
    tampered = bytearray(data)
    tampered[start + 100] ^= 0xFF
    path.write_bytes(bytes(tampered))
    with pytest.raises(BundleError, match=r"modified|corrupt"):
        load_bundle(path)


def test_edited_metadata_is_detected(tmp_path):
    path = make_tiny_bundle(tmp_path / "m.safetensors")
    data = path.read_bytes()
    edited = data.replace(b"class0", b"classX", 1)
    assert edited != data
    path.write_bytes(edited)
    with pytest.raises(BundleError, match=r"modified|corrupt"):
        load_bundle(path)


@pytest.mark.parametrize("keep", [0.0, 0.003, 0.5, 0.99])
def test_truncated_file(tmp_path, keep):
    path = make_tiny_bundle(tmp_path / "m.safetensors")
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(BundleError):
        load_bundle(path)


def test_foreign_safetensors_and_garbage(tmp_path):
    save_file({"w": torch.zeros(3)}, tmp_path / "other.safetensors")
    with pytest.raises(BundleError, match="not an imageclf"):
        load_bundle(tmp_path / "other.safetensors")
    (tmp_path / "pickle.pt").write_bytes(b"\x80\x04garbage")
    with pytest.raises(BundleError):
        load_bundle(tmp_path / "pickle.pt")
    with pytest.raises(BundleError, match="not found"):
        load_bundle(tmp_path / "nope.safetensors")


def test_predictor_api(tiny_bundle, tmp_path):
    p = Predictor.load(tiny_bundle)
    assert p.classes == [f"class{i}" for i in range(10)]
    img_path = tmp_path / "x.png"
    img_path.write_bytes(png_bytes((10, 200, 10), size=(64, 40)))
    from PIL import Image

    results = p.predict([img_path, png_bytes(), Image.open(img_path)], top_k=3)
    assert len(results) == 3
    for top in results:
        assert len(top) == 3 and top[0][0] in p.classes
        probs = [prob for _, prob in top]
        assert probs == sorted(probs, reverse=True)
    assert results[0] == results[2]  # path and PIL image of the same file agree
    single = p.predict(png_bytes(), top_k=20)
    assert len(single) == 1 and len(single[0]) == 10
    assert abs(sum(prob for _, prob in single[0]) - 1) < 1e-5
    full = p.predict_proba(p.preprocess([png_bytes()]))
    assert full.shape == (1, 10) and np.isclose(full.sum(), 1, atol=1e-5)


def test_metadata_is_json(tiny_bundle):
    json.dumps(load_bundle(tiny_bundle).metadata)
